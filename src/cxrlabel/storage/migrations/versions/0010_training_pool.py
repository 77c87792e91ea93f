"""Training pool before the quiz (issue 17): training cases kept apart from the gold bank, and
the answers given on training pages (counted for nothing).

Revision ID: 0010_training_pool
Revises: 0009_signups_gold_reveals
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_training_pool"
down_revision = "0009_signups_gold_reveals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "training_items",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column(
            "image_id", sa.Integer(), sa.ForeignKey("images.id"), nullable=False, unique=True
        ),
        sa.Column("answer", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_training_items_job_id", "training_items", ["job_id"])
    op.create_table(
        "training_answers",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("page_id", sa.Integer(), sa.ForeignKey("pages.id"), nullable=False),
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("images.id"), nullable=False),
        sa.Column("answer", sa.String(32), nullable=False),
        sa.Column("certainty", sa.String(16), nullable=False),
        sa.Column("correct", sa.Boolean(), nullable=False),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("user_id", "image_id", name="uq_training_answer_user_image"),
    )
    op.create_index("ix_training_answers_job_user", "training_answers", ["job_id", "user_id"])


def downgrade() -> None:
    op.drop_index("ix_training_answers_job_user", table_name="training_answers")
    op.drop_table("training_answers")
    op.drop_index("ix_training_items_job_id", table_name="training_items")
    op.drop_table("training_items")
