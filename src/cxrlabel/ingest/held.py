"""Images held for admin review (burned-in text in DICOM pixels): list and release.

Ingest stores a DICOM whose header flags burned-in annotations with status ``held``
(``ImageStatus.HELD``): assignment and gold sampling only take ``needs_judgments`` images, so a
held image is never served and never becomes a test question. After looking at it (the text
may identify the patient), an admin releases it to the work queue.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from cxrlabel.storage.models import AuditEvent, Image, ImageStatus, Job, utcnow


class HeldError(Exception):
    pass


def held_images(session: Session, job: Job) -> list[Image]:
    return list(
        session.scalars(
            select(Image)
            .where(Image.job_id == job.id, Image.status == ImageStatus.HELD)
            .order_by(Image.id)
        )
    )


def release_held(
    session: Session,
    job: Job,
    refs: list[str],
    *,
    release_all: bool = False,
    actor_id: int | None = None,
) -> list[Image]:
    """Release held images (by public id or source path, or all) to the work queue."""
    held = held_images(session, job)
    if release_all:
        chosen = held
    else:
        wanted = set(refs)
        chosen = [im for im in held if im.public_id in wanted or im.source_path in wanted]
        found = {im.public_id for im in chosen} | {im.source_path for im in chosen}
        unknown = sorted(wanted - found)
        if unknown:
            raise HeldError(f"not held in job {job.name}: {', '.join(unknown[:5])}")
    for image in chosen:
        image.status = ImageStatus.NEEDS_JUDGMENTS
    if chosen:
        session.add(
            AuditEvent(
                at=utcnow(),
                job_id=job.id,
                actor_id=actor_id,
                action="images.released",
                subject=f"{len(chosen)} image(s)",
                payload={"images": [im.public_id for im in chosen]},
            )
        )
    return chosen
