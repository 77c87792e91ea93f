"""Reasons of test questions: a placeholder is never shown, and an expert's reason makes a
sampled test question active (``cxrlabel gold sample`` leaves them inactive)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from cxrlabel.storage.models import AuditEvent, GoldItem, Image, Job, utcnow

# What a sampled test question says when an annotator misses it. Honest but not teaching: fine
# for the demo and the simulator (``active=True``); ``cxrlabel gold sample`` adds the
# placeholder mark and leaves the items inactive until an expert's reason replaces it.
REFERENCE_REASON = "Reference label from the source dataset: {text}. {hint}"
PLACEHOLDER_MARK = "[Generic reason from `gold sample`"
GENERIC_REASON = (
    REFERENCE_REASON
    + " "
    + PLACEHOLDER_MARK
    + ": replace it with an expert's explanation of this image.]"
)


def is_placeholder_reason(reason: str | None) -> bool:
    """A reason nobody wrote: never shown to annotators, never makes a gold item active."""
    return reason is None or not reason.strip() or PLACEHOLDER_MARK in reason


def set_gold_reason(
    session: Session,
    job: Job,
    public_id: str,
    reason: str,
    by_user_id: int | None,
    now: datetime | None = None,
) -> GoldItem:
    """An expert's reason for one test question (the admin gold page). A real reason makes a
    sampled item active; a placeholder or empty one is refused. Audited."""
    reason = (reason or "").strip()
    if is_placeholder_reason(reason):
        raise ValueError("write the reason annotators will read when they miss this image")
    gold = session.scalar(
        select(GoldItem)
        .join(Image, Image.id == GoldItem.image_id)
        .where(GoldItem.job_id == job.id, Image.public_id == public_id)
    )
    if gold is None:
        raise LookupError("no test question with this image in this job")
    was_active = gold.active
    gold.reason, gold.active = reason[:4000], True
    session.add(
        AuditEvent(
            at=now or utcnow(),
            job_id=job.id,
            actor_id=by_user_id,
            action="gold.reason_set",
            subject=public_id,
            payload={"activated": not was_active},
        )
    )
    session.flush()
    return gold
