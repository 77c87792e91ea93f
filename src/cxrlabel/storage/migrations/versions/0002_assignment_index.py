"""Index for the assignment engine's candidate scan (issue 11, annotation-loop performance).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_images_open_order",
        "images",
        ["job_id", "status", "trusted_judgments", "judgment_target", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_images_open_order", table_name="images")
