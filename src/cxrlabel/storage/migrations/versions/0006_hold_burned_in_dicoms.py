"""Hold burned-in-text DICOMs for admin review (issue 18).

Images whose DICOM header says the pixels carry burned-in annotations (text that may identify
the patient) get the new status ``held``: never served to annotators, never sampled as gold,
until an admin releases them (``cxrlabel held release``). Ingest now stores them as held;
this revision holds those ingested before, and deactivates gold items on such images (a held
image must not be shown as a test question either). No schema change: ``images.status`` is a
plain string column.

Revision ID: 0006_hold_burned_in_dicoms
Revises: 0005_user_sessions_revocable
"""

from __future__ import annotations

from alembic import op

revision = "0006_hold_burned_in_dicoms"
down_revision = "0005_user_sessions_revocable"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "UPDATE gold_items SET active = false WHERE image_id IN "
        "(SELECT id FROM images WHERE burned_in_annotation = true)"
    )
    op.execute(
        "UPDATE images SET status = 'held' WHERE burned_in_annotation = true "
        "AND status IN ('needs_judgments', 'gold')"
    )


def downgrade() -> None:
    op.execute("UPDATE images SET status = 'needs_judgments' WHERE status = 'held'")
