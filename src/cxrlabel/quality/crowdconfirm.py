"""An expert's answers to gold proposed from the crowd's agreement, recorded by one path for
both ways in: ``cxrlabel quality confirm-gold FILE`` (a CSV) and the expert's web page
``/gold-proposals/JOB`` (one image at a time).

Every answer is checked before any is recorded (``design.crowdgold.check_confirmations``: a
label, a reason, a finalised work image, not an instruction example, not listed twice); then
``commands.confirm_crowd_gold`` records each through the engine's logged expert-label event:
an answer that agrees with the crowd makes the image ``easy`` gold with the expert's reason,
one that does not corrects the image's label (no gold). ``quality replay`` reproduces both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from cxrlabel.design.crowdgold import Answered, check_confirmations
from cxrlabel.jobspec import JobSpec
from cxrlabel.storage.models import ExpertReview, Job, User

from . import commands


@dataclass(frozen=True)
class Confirmed:
    promoted: list[int]  # image ids made gold
    corrected: list[int]  # image ids whose crowd label the expert corrected


def confirm_answers(
    session: Session,
    job: Job,
    spec: JobSpec,
    expert: User,
    answered: list[Answered],
    source: str,
    now: datetime,
) -> Confirmed:
    """Check every answer (``GoldImportError`` lists every problem, nothing recorded), then
    record them all (``QualityError``/``ReviewConflict`` from the engine: the caller's
    transaction is rolled back, so again nothing is recorded)."""
    confirmations = check_confirmations(session, job, spec, answered, source)
    promoted, corrected = commands.confirm_crowd_gold(
        session,
        job,
        spec,
        expert,
        [(c.image.id, c.answer, c.reason) for c in confirmations],
        now,
    )
    return Confirmed(promoted, corrected)


def earlier_answer(session: Session, image_id: int) -> ExpertReview | None:
    """The expert label already recorded for an image, if any: a second answer (a double
    click, the back button, a second expert) is told about it instead of being refused
    with a bare "no longer a finalised work image"."""
    return session.scalar(select(ExpertReview).where(ExpertReview.image_id == image_id))
