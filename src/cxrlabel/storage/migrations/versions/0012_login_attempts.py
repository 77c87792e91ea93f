"""Sign-in throttle shared by every worker process: ``login_attempts`` (it was in memory, per
process, so ``serve --workers N`` gave an attacker N times the budget).

Revision ID: 0012_login_attempts
Revises: 0011_session_id_token
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_login_attempts"
down_revision = "0011_session_id_token"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "login_attempts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("key_sha256", sa.String(64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pending", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_login_attempts_key_sha256", "login_attempts", ["key_sha256"])
    op.create_index("ix_login_attempts_at", "login_attempts", ["at"])


def downgrade() -> None:
    op.drop_table("login_attempts")
