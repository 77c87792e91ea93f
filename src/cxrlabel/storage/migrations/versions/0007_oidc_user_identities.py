"""OpenID Connect identities (issue 18): which provider account (issuer, subject) signs in as
which user.

Revision ID: 0007_oidc_user_identities
Revises: 0006_hold_burned_in_dicoms
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_oidc_user_identities"
down_revision = "0006_hold_burned_in_dicoms"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "user_identities",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("issuer", sa.String(255), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("issuer", "subject", name="uq_identity_issuer_subject"),
    )
    op.create_index("ix_user_identities_user_id", "user_identities", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_user_identities_user_id", table_name="user_identities")
    op.drop_table("user_identities")
