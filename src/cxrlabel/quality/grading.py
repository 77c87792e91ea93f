"""Grading a submitted page: gold, trust, every rule, and the page's images re-aggregated.

``annotate.submission.submit_page`` calls ``on_page_submitted`` in the same transaction, right
after inserting the page's judgments; the decisions go through ``store.run_event`` like every
other quality input, so replaying the audit log (``audit.replay``) runs the same code.

On PostgreSQL pages of one job are graded in parallel: ``lock_page_rows`` takes, before the
judgments are inserted, the row locks the engine needs for a page (``store``'s docstring says
why that makes the audit log's order a valid replay order).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from cxrlabel.jobspec import JobSpec
from cxrlabel.storage.locks import (
    JOB_QUALITY,
    advisory_lock,
    can_escalate,
    is_postgres,
    job_lock_alone,
)
from cxrlabel.storage.models import (
    AnnotatorState,
    AnnotatorStatus,
    AuditEvent,
    GoldItem,
    Image,
    Job,
    Judgment,
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
    judgment_in,
    run_event,
)


def lock_page_rows(session: Session, job: Job, user_id: int, work_image_ids: Iterable[int]) -> None:
    """PostgreSQL: lock what grading a page reads and writes, in the one lock order, before the
    page's judgments are inserted (SQLite: nothing, its writers run one at a time).

    1. the job's quality lock, shared: pages are graded side by side, admin commands (which
       take it exclusively, ``store.lock_job``) wait for them and they for an admin command;
    2. the page's work images, ``FOR NO KEY UPDATE`` in id order: whoever adds a judgment to an
       image locks it first, so the judgments on them stay as read, and on one image they get
       ids in the order they were graded (peer agreement pairs a label with earlier ones);
    3. the annotator states of the submitter and of everyone who judged those images (their
       trust weighs the labels, their peer-agreement counts grow), ``FOR UPDATE`` in user-id
       order.

    Rows the engine needs beyond these (a removal re-evaluates every image of the removed
    annotator) would be locked out of this order, which deadlocked pages graded side by side:
    when the transaction runs inside ``retry_transient`` (``can_escalate``: the web app's and
    the simulator's submits), the grading state refuses them (``storage.locks.LockEscalation``)
    and ``retry_transient`` runs the transaction again, taking the job lock exclusively
    (``job_lock_alone``), like an admin command. A bare transaction locks them out of order.
    """
    if not is_postgres(session):
        return
    advisory_lock(session, JOB_QUALITY, job.id, shared=not job_lock_alone())
    ids = sorted(set(work_image_ids))
    judges = select(Judgment.user_id).where(Judgment.image_id.in_(ids or [-1]))
    if ids:
        session.execute(
            select(Image.id)
            .where(Image.id.in_(ids))
            .order_by(Image.id)
            .with_for_update(key_share=True)
        )
    session.execute(
        select(AnnotatorState.id)
        .where(
            AnnotatorState.job_id == job.id,
            or_(AnnotatorState.user_id == user_id, AnnotatorState.user_id.in_(judges)),
        )
        .order_by(AnnotatorState.user_id)
        .with_for_update()
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
    the page's ``Judgment`` rows (having taken ``lock_page_rows`` first: ``job_locked``).
    """
    if not job_locked:
        lock_page_rows(session, job, user.id, [j.image_id for j in judgments if not j.is_gold])
    session.flush()  # the judgments need their ids
    ordered = sorted(judgments, key=lambda j: j.id)
    if any(j.trust_at_time is not None for j in ordered):
        raise QualityError("already_graded", "this page was already graded", 409)
    seconds = (as_utc(now) - as_utc(page.served_at)).total_seconds()
    state = DbState(session, job, spec, ordered, lock=True, side_by_side=can_escalate())
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
    # Logged after the engine ran (``audit_input``): its id is taken with every lock held.
    logged = AuditEvent(
        at=now,
        job_id=job.id,
        actor_id=user.id,
        action=PAGE_SUBMITTED,
        subject=f"page:{page.id}",
        payload=_page_payload(event),
    )
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
        audit_input=logged,
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
