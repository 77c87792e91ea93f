"""Grading a submitted page: gold, trust, every rule, and the page's images re-aggregated.

``annotate.submission.submit_page`` calls ``on_page_submitted`` in the same transaction, right
after inserting the page's judgments; the decisions go through ``store.run_event`` like every
other quality input, so replaying the audit log (``audit.replay``) runs the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cxrlabel.jobspec import JobSpec
from cxrlabel.storage.models import (
    AnnotatorStatus,
    GoldItem,
    Image,
    Job,
    Page,
    User,
    as_utc,
)

from .events import PageSubmitted
from .records import MissedGold, PageOutcome
from .state import JudgmentRec
from .store import (
    PAGE_SUBMITTED,
    DbState,
    GradedJudgment,
    QualityError,
    add_audit,
    judgment_in,
    lock_job,
    run_event,
)


def on_page_submitted(
    session: Session,
    job: Job,
    spec: JobSpec,
    user: User,
    page: Page,
    judgments: Sequence[GradedJudgment],
    now: datetime,
    *,
    job_locked: bool = False,
) -> PageOutcome:
    """Grade gold, update trust, apply every rule and re-aggregate the page's images.

    Called by ``annotate.submission.submit_page`` in the same transaction, after it inserted
    the page's ``Judgment`` rows (having locked the annotator and job rows already:
    ``job_locked``).
    """
    if not job_locked:
        lock_job(session, job)
    session.flush()  # the judgments need their ids
    ordered = sorted(judgments, key=lambda j: j.id)
    if any(j.trust_at_time is not None for j in ordered):
        raise QualityError("already_graded", "this page was already graded", 409)
    seconds = (as_utc(now) - as_utc(page.served_at)).total_seconds()
    state = DbState(session, job, spec, ordered)
    # The gold bank's size matters only to someone still taking the quiz (when is the quiz
    # complete): counted for them only; the engine reads it for them only.
    in_quiz = state.annotator(user.id).status == AnnotatorStatus.QUIZ
    event = PageSubmitted(
        user_id=user.id,
        page_id=page.id,
        kind=page.kind,
        seconds=seconds,
        judgments=tuple(judgment_in(j) for j in ordered),
        active_gold=_active_gold_count(session, job) if in_quiz else None,
    )
    add_audit(session, job, user.id, PAGE_SUBMITTED, f"page:{page.id}", _page_payload(event), now)
    # The engine re-aggregates the page's work images: fetch their judgments in one query.
    engine, result = run_event(
        session,
        job,
        spec,
        event,
        now,
        user.id,
        state=state,
        preload_images=[j.image_id for j in ordered if not j.is_gold],
        preload_gold=[j.image_id for j in ordered if j.is_gold],
    )
    annotator = engine.state.annotator(user.id)
    return PageOutcome(
        quiz_passed=result.quiz_passed,
        quiz_accuracy=result.quiz_accuracy,
        annotator_status=annotator.status,
        trust=annotator.trust,
        warnings=list(result.warnings),
        missed_gold=_missed_details(session, result.missed),
        gold_seen=sum(1 for j in ordered if j.is_gold),
        message=annotator.message,
    )


def _page_payload(event: PageSubmitted) -> dict[str, Any]:
    return {
        "user_id": event.user_id,
        "page_id": event.page_id,
        "kind": event.kind,
        "seconds": event.seconds,
        "active_gold": event.active_gold,
        "judgment_ids": [j.id for j in event.judgments],
    }


def _missed_details(session: Session, missed: list[JudgmentRec]) -> list[MissedGold]:
    if not missed:
        return []
    ids = [m.image_id for m in missed]
    public = dict(session.execute(select(Image.id, Image.public_id).where(Image.id.in_(ids))).all())
    gold = {
        g.image_id: g for g in session.scalars(select(GoldItem).where(GoldItem.image_id.in_(ids)))
    }
    return [
        MissedGold(
            judgment_id=m.id,
            image_public_id=public[m.image_id],
            given_answer=m.answer,
            accepted_answers=list(gold[m.image_id].accepted_answers),
            reason=gold[m.image_id].reason or "",
        )
        for m in missed
    ]


def _active_gold_count(session: Session, job: Job) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(GoldItem)
            .where(GoldItem.job_id == job.id, GoldItem.active.is_(True))
        )
        or 0
    )
