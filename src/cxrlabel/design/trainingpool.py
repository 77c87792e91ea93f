"""The training pool (issue 17): clear cases shown before the quiz with their answers.

Kept apart from the gold bank: a training case's answer is shown to every newcomer, so a
training image must never be a test question (throwaway accounts would learn the gold:
issue 18). A training image gets status ``training``: it is no longer work (never served as
work, never aggregated) and neither ``gold sample`` nor ``gold import`` can take it; an image
that is gold (or was ever judged) cannot become a training case.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cxrlabel.design.goldseed import pick_reference_images
from cxrlabel.jobspec import JobSpec
from cxrlabel.storage.models import AuditEvent, Image, ImageStatus, Job, TrainingItem, utcnow

TRAINING_REASON = (
    "Reference label from the source dataset: {text}. {hint} "
    "[Generic reason from `training sample`: replace it with an expert's explanation.]"
)


class TrainingPoolError(ValueError):
    """A training case that cannot be added (gold, judged, held...): one line for the user."""


def sample_training(
    session: Session,
    job: Job,
    spec: JobSpec,
    n: int,
    seed: int = 0,
    now: datetime | None = None,
    *,
    clearest_fraction: float = 1.0,
    clarity: Mapping[int, float] | None = None,
) -> dict[str, int]:
    """Add ``n`` training cases drawn like gold (reference label, balanced, one per patient,
    clearest first when asked) from never-judged work images; per label, how many."""
    now = now or utcnow()
    chosen = pick_reference_images(
        session, job, spec, n, seed, clearest_fraction=clearest_fraction, clarity=clarity
    )
    texts = {c.value: c for c in spec.question.labels}
    for image in chosen:
        label = str(image.reference_label)
        reason = TRAINING_REASON.format(text=texts[label].text, hint=texts[label].hint)
        add_training_item(session, job, spec, image, label, reason.replace("  ", " "), now)
    session.add(
        AuditEvent(
            at=now,
            job_id=job.id,
            action="training.sample",
            subject=str(n),
            payload={"images": [im.public_id for im in chosen], "seed": seed},
        )
    )
    session.flush()
    return dict(Counter(str(im.reference_label) for im in chosen))


def add_training_item(
    session: Session,
    job: Job,
    spec: JobSpec,
    image: Image,
    answer: str,
    reason: str,
    now: datetime,
) -> TrainingItem:
    """Make a never-judged work image a training case (refuses gold and judged images)."""
    if answer not in spec.label_values:
        raise TrainingPoolError(f"answer {answer!r} is not a label of job {spec.name}")
    if image.status != ImageStatus.NEEDS_JUDGMENTS or image.trusted_judgments > 0:
        raise TrainingPoolError(
            f"image {image.public_id} is {image.status}: only unjudged work images can become "
            "training cases (a test question must never be shown with its answer)"
        )
    item = TrainingItem(
        job_id=job.id, image_id=image.id, answer=answer, reason=reason, created_at=now
    )
    image.status = ImageStatus.TRAINING
    session.add(item)
    return item


def ensure_training(
    session: Session,
    job: Job,
    spec: JobSpec,
    seed: int,
    now: datetime,
    *,
    clearest_fraction: float = 1.0,
    clarity: Mapping[int, float] | None = None,
) -> int:
    """With ``[training] enabled``: top the pool up to ``training.items`` cases (what every
    newcomer answers); returns the pool's size."""
    have = (
        session.scalar(
            select(func.count())
            .select_from(TrainingItem)
            .where(TrainingItem.job_id == job.id, TrainingItem.active.is_(True))
        )
        or 0
    )
    if spec.training.enabled and have < spec.training.items:
        sample_training(
            session,
            job,
            spec,
            spec.training.items - have,
            seed,
            now,
            clearest_fraction=clearest_fraction,
            clarity=clarity,
        )
        have = (
            session.scalar(
                select(func.count())
                .select_from(TrainingItem)
                .where(TrainingItem.job_id == job.id, TrainingItem.active.is_(True))
            )
            or 0
        )
    return int(have)
