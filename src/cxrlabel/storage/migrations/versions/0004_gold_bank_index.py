"""The active gold bank of a job, in id order, from one covering index (issue 11).

Every page draws its hidden test questions by position among the annotator's unseen active
gold (``annotate/assignment.py: _unseen_gold``): a count and an ``ORDER BY image_id LIMIT 1
OFFSET p`` per question. Over ``(job_id, active, image_id)`` both are index-only scans; with
only ``ix_gold_items_job_id`` each read every gold row of the job (0.36 and 0.48 ms for a bank
of 1,500 on SQLite, against 0.07 and 0.13 ms).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_gold_items_job_active_image", "gold_items", ["job_id", "active", "image_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_gold_items_job_active_image", table_name="gold_items")
