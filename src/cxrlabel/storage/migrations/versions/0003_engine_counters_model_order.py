"""Quality engine hot path and model-assisted assignment (issues 11 and 9).

* ``annotator_states.answer_counts``: the answer counts the quality rules need, kept by the
  engine (NULL until first computed, so existing rows need no backfill);
* ``ix_images_model_order``: the assignment candidate scan ordered by the model's uncertainty
  (``[assignment] order = "model_uncertainty"``).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

MODEL_UNCERTAINTY_SQL = "coalesce(abs(model_score - 0.5), 1.0)"  # as in storage/models.py


def upgrade() -> None:
    with op.batch_alter_table("annotator_states") as batch:
        batch.add_column(sa.Column("answer_counts", sa.JSON(), nullable=True))
    op.create_index(
        "ix_images_model_order",
        "images",
        [
            "job_id",
            "status",
            "trusted_judgments",
            "judgment_target",
            sa.text(MODEL_UNCERTAINTY_SQL),
            "id",
        ],
    )


def downgrade() -> None:
    op.drop_index("ix_images_model_order", table_name="images")
    with op.batch_alter_table("annotator_states") as batch:
        batch.drop_column("answer_counts")
