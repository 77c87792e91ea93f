"""Server-side, revocable sign-in sessions (issue 18).

``user_sessions``: one row per signed-in browser; the cookie holds a random token and only its
SHA-256 is stored. Sign-out deletes the row, a password change or disabling the account deletes
all the user's rows, and idle/absolute timeouts are checked against ``last_seen_at`` and
``created_at``. Cookies signed before this revision carry no token and stop working (their
users sign in again).

Revision ID: 0005_user_sessions_revocable
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_user_sessions_revocable"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "user_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_sha256"),
    )
    op.create_index("ix_user_sessions_user_id", "user_sessions", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_user_sessions_user_id", table_name="user_sessions")
    op.drop_table("user_sessions")
