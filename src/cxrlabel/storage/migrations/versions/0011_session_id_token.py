"""Sign-out ends the identity provider's session too: ``user_sessions.id_token`` keeps the
ID token of an OpenID Connect sign-in for the provider's end-session endpoint.

Revision ID: 0011_session_id_token
Revises: 0010_training_pool
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_session_id_token"
down_revision = "0010_training_pool"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("user_sessions") as batch:
        batch.add_column(sa.Column("id_token", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("user_sessions") as batch:
        batch.drop_column("id_token")
