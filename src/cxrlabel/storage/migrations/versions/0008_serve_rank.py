"""Shuffled serving order: ``images.serve_rank`` and the candidate index over it (issue 16).

Work used to be served in id (= ingest = folder) order. A Kaggle-layout folder lists NORMAL
first, so the first hundreds of pages were all healthy images and the early dashboards,
agreement with the reference and the prevalence rule ran on one class. ``serve_rank`` is a
per-job hash of the file's sha256 (``storage.models.serve_rank``): random with respect to
class, the same on every replay. ``ix_images_open_order`` gains it before ``id`` so the
claim's candidate scan stays one ordered index range, O(1) in the job size.

Existing rows are filled here in batches (one UPDATE per image: a hash, not SQL).

Revision ID: 0008_serve_rank
Revises: 0007_oidc_user_identities
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0008_serve_rank"
down_revision = "0007_oidc_user_identities"
branch_labels = None
depends_on = None

_BATCH = 5000


def serve_rank(job_id: int, sha256: str) -> int:
    """Frozen copy of ``storage.models.serve_rank`` (a migration must not change with it)."""
    digest = hashlib.sha256(f"cxrlabel-serve-order:{job_id}:{sha256}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("serve_rank", sa.Integer(), nullable=False, server_default="0"))
    bind = op.get_bind()
    images = sa.table(
        "images",
        sa.column("id", sa.Integer),
        sa.column("job_id", sa.Integer),
        sa.column("sha256", sa.String),
        sa.column("serve_rank", sa.Integer),
    )
    last = 0
    while True:
        rows = bind.execute(
            sa.select(images.c.id, images.c.job_id, images.c.sha256)
            .where(images.c.id > last)
            .order_by(images.c.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            break
        bind.execute(
            images.update()
            .where(images.c.id == sa.bindparam("b_id"))
            .values(serve_rank=sa.bindparam("b_rank")),
            [{"b_id": i, "b_rank": serve_rank(j, sha)} for i, j, sha in rows],
        )
        last = rows[-1][0]
    op.drop_index("ix_images_open_order", table_name="images")
    op.create_index(
        "ix_images_open_order",
        "images",
        ["job_id", "status", "trusted_judgments", "judgment_target", "serve_rank", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_images_open_order", table_name="images")
    op.create_index(
        "ix_images_open_order",
        "images",
        ["job_id", "status", "trusted_judgments", "judgment_target", "id"],
    )
    with op.batch_alter_table("images") as batch:
        batch.drop_column("serve_rank")
