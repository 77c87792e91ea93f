"""Sign-ups by invite with their duplicate-account signals, and gold reveals (issue 18).

``signups``: one row per account created from an invite: the invite, the client network's
prefix and the hash of a device cookie. Sign-up rate limits (per invite link and per network,
per hour) count these rows; the admin's duplicate-account list groups by them
(``annotate/signups.py``).

``gold_reveals``: one row per (test question, annotator) whose accepted answer the feedback
showed; the gold bank's exposure and its retirement rule count them (``design/exposure.py``).

Revision ID: 0009_signups_gold_reveals
Revises: 0008_serve_rank
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_signups_gold_reveals"
down_revision = "0008_serve_rank"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "signups",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False, unique=True),
        sa.Column("invite_id", sa.Integer(), sa.ForeignKey("invites.id"), nullable=True),
        sa.Column("network", sa.String(64), nullable=False),
        sa.Column("device", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_signups_invite_time", "signups", ["invite_id", "created_at"])
    op.create_index("ix_signups_network_time", "signups", ["network", "created_at"])
    op.create_index("ix_signups_device", "signups", ["device"])
    op.create_table(
        "gold_reveals",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("images.id"), nullable=False),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("image_id", "user_id", name="uq_gold_reveal"),
    )
    op.create_index("ix_gold_reveals_job_id", "gold_reveals", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_gold_reveals_job_id", table_name="gold_reveals")
    op.drop_table("gold_reveals")
    op.drop_index("ix_signups_device", table_name="signups")
    op.drop_index("ix_signups_network_time", table_name="signups")
    op.drop_index("ix_signups_invite_time", table_name="signups")
    op.drop_table("signups")
