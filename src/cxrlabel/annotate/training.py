"""Training before the quiz (issue 17): practice pages of clear cases, feedback after each page.

- A newcomer (status ``quiz``) whose job has ``[training] enabled`` gets training pages of
  ``training.per_page`` cases from the job's training pool until they have answered
  ``training.items`` of them (or seen the whole pool); then the quiz. Training comes only
  before the first quiz page: a quiz retake does not start it again.
- The pool (``training_items``) is not the gold bank: its answers are shown after every page,
  so a training image is never a test question (``design/trainingpool.py`` keeps them apart).
- Answers on a training page are stored as ``TrainingAnswer`` rows, not judgments: the quality
  engine, trust, aggregation and ``quality replay`` never see them.
"""

from __future__ import annotations

import random
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cxrlabel.annotate.schemas import AnswerIn, TrainingFeedback
from cxrlabel.jobspec import JobSpec
from cxrlabel.storage.models import (
    Image,
    Job,
    Page,
    PageItem,
    PageKind,
    TrainingAnswer,
    TrainingItem,
    User,
)


def training_images_due(
    session: Session, job: Job, spec: JobSpec, user: User, rng: random.Random
) -> list[int]:
    """The training images of this annotator's next training page; [] when training is off,
    done, or the pool has nothing left they have not seen (then the quiz starts)."""
    if not spec.training.enabled or _quiz_started(session, job, user):
        return []
    answered = (
        session.scalar(
            select(func.count())
            .select_from(TrainingAnswer)
            .where(TrainingAnswer.job_id == job.id, TrainingAnswer.user_id == user.id)
        )
        or 0
    )
    wanted = min(spec.training.per_page, spec.training.items - answered)
    if wanted <= 0:
        return []
    seen = (
        select(PageItem.image_id)
        .join(Page, Page.id == PageItem.page_id)
        .where(Page.job_id == job.id, Page.user_id == user.id)
    )
    unseen = list(
        session.scalars(
            select(TrainingItem.image_id)
            .where(
                TrainingItem.job_id == job.id,
                TrainingItem.active.is_(True),
                TrainingItem.image_id.not_in(seen),
            )
            .order_by(TrainingItem.image_id)
        )
    )
    return rng.sample(unseen, min(wanted, len(unseen)))


def _quiz_started(session: Session, job: Job, user: User) -> bool:
    return (
        session.scalar(
            select(Page.id)
            .where(Page.job_id == job.id, Page.user_id == user.id, Page.kind == PageKind.QUIZ)
            .limit(1)
        )
        is not None
    )


def store_training_answers(
    session: Session,
    job: Job,
    user: User,
    page: Page,
    image_ids: list[int],
    by_image: dict[int, AnswerIn],
    now: datetime,
) -> list[TrainingFeedback]:
    """Keep the answers (for progress only) and return the feedback: per case, the answer
    given, the right one and the expert's reason."""
    rows = session.execute(
        select(TrainingItem.image_id, TrainingItem.answer, TrainingItem.reason, Image.public_id)
        .join(Image, Image.id == TrainingItem.image_id)
        .where(TrainingItem.image_id.in_(image_ids))
    ).all()
    items = {row.image_id: row for row in rows}
    feedback = []
    for image_id in image_ids:
        item, given = items[image_id], by_image[image_id]
        correct = given.answer == item.answer
        session.add(
            TrainingAnswer(
                job_id=job.id,
                user_id=user.id,
                page_id=page.id,
                image_id=image_id,
                answer=given.answer,
                certainty=given.certainty,
                correct=correct,
                submitted_at=now,
            )
        )
        feedback.append(
            TrainingFeedback(
                image_public_id=item.public_id,
                answer=given.answer,
                correct_answer=item.answer,
                correct=correct,
                reason=item.reason,
            )
        )
    session.flush()
    return feedback
