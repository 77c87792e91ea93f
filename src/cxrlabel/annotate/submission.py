"""Idempotent page submission (no web code).

Policy (docs/annotator-app.md):

- Each submit carries a client submission id. The first submit stores the judgments and the
  response in ``submissions``; any replay of the same id (retry, double click, reload) stores
  nothing and returns the stored response with ``replayed = True``.
- A page submitted once cannot be submitted again under another id: 409 ``already_submitted``.
- Every item of the page needs exactly one valid answer; otherwise 422 and nothing is stored.
- An expired page (``pages.reservation_minutes`` passed) is still accepted when every work image
  on it is still needed and a judgment would not take it over its target; otherwise 409
  ``page_expired`` and nothing is stored (the annotator simply gets a new page).
- Removed or disqualified annotators cannot submit (403 ``not_active``).

A training page (annotate/training.py) stores training answers instead of judgments and is
never graded: it counts for nothing. After inserting the judgments (flushed, same
transaction) the quality engine grades the page
(``cxrlabel.quality.grading.on_page_submitted``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from cxrlabel.annotate.assignment import DEFAULT_STATUS_MESSAGES
from cxrlabel.annotate.claim import open_reservations
from cxrlabel.annotate.schemas import AnswerIn, SubmissionError, SubmitResult
from cxrlabel.annotate.training import store_training_answers
from cxrlabel.design.exposure import after_feedback
from cxrlabel.jobspec import JobSpec
from cxrlabel.quality import grading as quality_service
from cxrlabel.quality.records import PageOutcome, SubmittedJudgment
from cxrlabel.storage.models import (
    AnnotatorState,
    AnnotatorStatus,
    Image,
    ImageStatus,
    Job,
    Judgment,
    Page,
    PageItem,
    PageKind,
    Submission,
    User,
    as_utc,
)

MAX_CLIENT_ID_LENGTH = 64


def submit_page(
    session: Session,
    job: Job,
    spec: JobSpec,
    user: User,
    page_public_id: str,
    client_submission_id: str,
    answers: list[AnswerIn],
    now: datetime,
) -> SubmitResult:
    """Store one page of answers exactly once and return the (stored) outcome."""
    if not client_submission_id or len(client_submission_id) > MAX_CLIENT_ID_LENGTH:
        raise SubmissionError(
            "bad_submission_id", "The submission id is missing or too long (max 64).", 422
        )
    page = session.scalar(
        select(Page)
        .where(Page.public_id == page_public_id, Page.job_id == job.id, Page.user_id == user.id)
        .with_for_update()  # PostgreSQL: parallel submits of one page queue here
    )
    if page is None:
        raise SubmissionError("page_not_found", "No such page for you in this job.", 404)
    items = _page_items(session, page)
    previous = session.scalar(
        select(Submission).where(
            Submission.user_id == user.id, Submission.client_submission_id == client_submission_id
        )
    )
    if previous is not None:
        if previous.page_id != page.id:
            raise SubmissionError(
                "submission_id_reused",
                "This submission id was already used for another page.",
                409,
            )
        return SubmitResult.model_validate({**previous.response, "replayed": True})
    if page.submitted_at is not None:
        raise SubmissionError(
            "already_submitted",
            "This page was already submitted (perhaps from another tab). Your earlier answers "
            "are kept.",
            409,
        )
    if page.kind != PageKind.TRAINING:
        # PostgreSQL: what grading reads and writes, locked before the state row below and the
        # judgments' inserts, in the order every grader and admin command uses (no job-wide
        # lock: pages on other images by other annotators are graded side by side).
        quality_service.lock_page_rows(
            session, job, user.id, [item.image_id for item in items if not item.is_gold]
        )
    state = session.scalar(
        select(AnnotatorState)
        .where(AnnotatorState.job_id == job.id, AnnotatorState.user_id == user.id)
        .with_for_update()
        .execution_options(populate_existing=True)  # the values as of the lock
    )
    if state is None or state.status not in (AnnotatorStatus.QUIZ, AnnotatorStatus.ACTIVE):
        raise SubmissionError("not_active", _inactive_message(state), 403)
    by_image = _validate_answers(spec, items, answers)
    if page.kind == PageKind.TRAINING:  # practice: stored apart, never graded (training.py)
        return _submit_training(
            session, job, user, page, items, client_submission_id, by_image, state, now
        )
    if as_utc(page.expires_at) <= now:
        _check_expired_page_still_needed(session, job, spec, items, now)

    # Core statements, not ORM objects, for the rows of a submit (the unit of work and the
    # instances cost more than the SQL: docs/benchmarks.md, issue 11).
    conn = session.connection()
    submission_id = conn.execute(
        _INSERT_SUBMISSION,
        {
            "user_id": user.id,
            "page_id": page.id,
            "client_submission_id": client_submission_id,
            "response": {},
            "created_at": now,
        },
    ).scalar_one()
    judgments = _insert_judgments(session, job, user, page, items, submission_id, by_image, now)
    conn.execute(_MARK_SUBMITTED, {"page": page.id, "now": now})
    set_committed_value(page, "submitted_at", now)  # the session's copy, as stored

    outcome = _grade(session, job, spec, user, page, judgments, now)
    after_feedback(
        session,
        job,
        spec,
        user.id,
        page.kind,
        outcome.quiz_passed,
        _missed_image_ids(judgments, outcome),
        now,
    )
    # ``state`` needs no refresh: the quality engine gives the session's copy what it wrote.
    result = _result(session, page, judgments, outcome, state)
    conn.execute(
        _STORE_RESPONSE, {"submission": submission_id, "response": result.model_dump(mode="json")}
    )
    _after_submit(session, job, spec, user, page, state, now)
    return result


_S, _P = Submission.__table__, Page.__table__
_INSERT_SUBMISSION = insert(_S).returning(_S.c.id)
_STORE_RESPONSE = (
    update(_S)
    .where(_S.c.id == bindparam("submission"))
    .values(response=bindparam("response", type_=_S.c.response.type))
)
_MARK_SUBMITTED = (
    update(_P)
    .where(_P.c.id == bindparam("page"))
    .values(submitted_at=bindparam("now", type_=_P.c.submitted_at.type))
)


def _submit_training(
    session: Session,
    job: Job,
    user: User,
    page: Page,
    items: list[_Item],
    client_submission_id: str,
    by_image: dict[int, AnswerIn],
    state: AnnotatorState,
    now: datetime,
) -> SubmitResult:
    """A training page: its answers and feedback are stored, the quality engine is not called
    (no judgment, no trust, no label, no audit event: replay never sees it). Late submits are
    always accepted: a training page reserves no work."""
    conn = session.connection()
    submission_id = conn.execute(
        _INSERT_SUBMISSION,
        {
            "user_id": user.id,
            "page_id": page.id,
            "client_submission_id": client_submission_id,
            "response": {},
            "created_at": now,
        },
    ).scalar_one()
    feedback = store_training_answers(
        session, job, user, page, [item.image_id for item in items], by_image, now
    )
    conn.execute(_MARK_SUBMITTED, {"page": page.id, "now": now})
    set_committed_value(page, "submitted_at", now)
    result = SubmitResult(
        page_id=page.public_id,
        kind=page.kind,
        saved=len(feedback),
        gold_seen=0,
        annotator_status=state.status,
        training=feedback,
    )
    conn.execute(
        _STORE_RESPONSE, {"submission": submission_id, "response": result.model_dump(mode="json")}
    )
    return result


def stored_result(session: Session, user: User, page: Page) -> SubmitResult | None:
    """The stored response of a submitted page (for the feedback page), or None."""
    row = session.scalar(
        select(Submission).where(Submission.page_id == page.id, Submission.user_id == user.id)
    )
    return SubmitResult.model_validate(row.response) if row is not None else None


# --- validation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    image_id: int
    public_id: str
    is_gold: bool


def _page_items(session: Session, page: Page) -> list[_Item]:
    """The page's items in order, with their images' public ids: one query (no ORM objects for
    the items or the images, whose rows are wide and which nothing here changes)."""
    rows = session.execute(
        select(PageItem.image_id, Image.public_id, PageItem.is_gold)
        .join(Image, Image.id == PageItem.image_id)
        .where(PageItem.page_id == page.id)
        .order_by(PageItem.position)
    ).all()
    return [_Item(image_id, public_id, bool(is_gold)) for image_id, public_id, is_gold in rows]


def _validate_answers(
    spec: JobSpec, page_items: list[_Item], answers: list[AnswerIn]
) -> dict[int, AnswerIn]:
    """Exactly one valid answer per page item, keyed by image id; else 422, nothing stored."""
    items = {item.public_id: item.image_id for item in page_items}
    counts = Counter(a.image_public_id for a in answers)
    repeated = [pid for pid, n in counts.items() if n > 1]
    if repeated:
        raise SubmissionError("duplicate_answer", "An image was answered twice.", 422)
    unknown = [a.image_public_id for a in answers if a.image_public_id not in items]
    if unknown:
        raise SubmissionError("unknown_image", "An answer names an image not on this page.", 422)
    missing = len(items) - len(answers)
    if missing:
        raise SubmissionError(
            "incomplete_page", f"Please answer every image: {missing} still unanswered.", 422
        )
    for a in answers:
        if a.answer not in spec.label_values:
            raise SubmissionError(
                "bad_answer", f"Unknown answer {a.answer!r}; use one of {spec.label_values}.", 422
            )
        if a.certainty not in spec.certainty_values:
            raise SubmissionError(
                "bad_certainty",
                f"Unknown certainty {a.certainty!r}; use one of {spec.certainty_values}.",
                422,
            )
        if a.quality_flag is not None and a.quality_flag not in spec.quality_flag_values:
            raise SubmissionError(
                "bad_quality_flag", f"Unknown image-quality flag {a.quality_flag!r}.", 422
            )
    return {items[a.image_public_id]: a for a in answers}


def _check_expired_page_still_needed(
    session: Session, job: Job, spec: JobSpec, items: list[_Item], now: datetime
) -> None:
    """Accept a late page only if no work image on it would go over its target."""
    work_ids = sorted(item.image_id for item in items if not item.is_gold)
    if not work_ids:
        return  # quiz pages and all-gold pages reserve nothing; always accepted
    reserved = open_reservations(job, now)
    rows = session.execute(
        select(Image.id, Image.status, Image.trusted_judgments, Image.judgment_target)
        .where(Image.id.in_(work_ids))
        .order_by(Image.id)
        .with_for_update(of=Image, key_share=True)  # PostgreSQL: lock in id order, no
        # assigner can race us (NO KEY UPDATE, like the assigner's locks: FK checks pass)
    ).all()
    open_counts: dict[int, int] = dict(
        session.execute(
            select(reserved.c.image_id, reserved.c.n).where(reserved.c.image_id.in_(work_ids))
        ).all()
    )
    for image_id, status, trusted, target in rows:
        wanted = min(target, spec.judgments.max)
        taken = trusted + open_counts.get(image_id, 0)
        if status != ImageStatus.NEEDS_JUDGMENTS or taken >= wanted:
            raise SubmissionError(
                "page_expired",
                "This page expired and some of its images have since been answered by others, "
                "so these answers could not be saved. Please continue with a new page.",
                409,
            )


# --- storing -------------------------------------------------------------------------------------


def _insert_judgments(
    session: Session,
    job: Job,
    user: User,
    page: Page,
    items: list[_Item],
    submission_id: int,
    by_image: dict[int, AnswerIn],
    now: datetime,
) -> list[SubmittedJudgment]:
    """One multi-row INSERT (the ORM would insert row by row on SQLite to read each id back)."""
    elapsed = max((now - as_utc(page.served_at)).total_seconds(), 0.0)
    per_item = elapsed / max(len(items), 1)
    is_quiz = page.kind == PageKind.QUIZ
    values: list[dict[str, Any]] = []
    for item in items:
        answer = by_image[item.image_id]
        values.append(
            {
                "job_id": job.id,
                "image_id": item.image_id,
                "user_id": user.id,
                "page_id": page.id,
                "submission_id": submission_id,
                "answer": answer.answer,
                "certainty": answer.certainty,
                "quality_flag": answer.quality_flag,
                "is_gold": item.is_gold,
                "is_quiz": is_quiz,
                "gold_missed": None,
                "trust_at_time": None,
                "tainted": False,
                "taint_reason": None,
                "served_at": page.served_at,
                "submitted_at": now,
                "seconds": per_item,
            }
        )
    table = Judgment.__table__
    ids: dict[int, int] = dict(
        session.execute(insert(table).returning(table.c.image_id, table.c.id), values).all()
    )
    # (user, image) is unique: the image id names the new row
    return [
        SubmittedJudgment(
            ids[row["image_id"]],
            row["image_id"],
            row["answer"],
            row["certainty"],
            row["quality_flag"],
            row["is_gold"],
            is_quiz,
        )
        for row in values
    ]


_OTHER_OPEN_PAGES = update(_P).where(
    _P.c.job_id == bindparam("job"),
    _P.c.user_id == bindparam("user"),
    _P.c.submitted_at.is_(None),
    _P.c.expires_at > bindparam("now"),
    _P.c.id != bindparam("page"),
)
_RESTART_OTHERS = _OTHER_OPEN_PAGES.values(
    served_at=bindparam("served"), expires_at=bindparam("expires")
)
_RELEASE_OTHERS = _OTHER_OPEN_PAGES.values(expires_at=bindparam("expires"))


def _after_submit(
    session: Session,
    job: Job,
    spec: JobSpec,
    user: User,
    page: Page,
    state: AnnotatorState,
    now: datetime,
) -> None:
    """Free or restart the annotator's other open pages (the prefetched next page).

    A prebuilt Core UPDATE on every submit (the ORM-enabled one cost ~1 ms of Python); no ORM
    copy of those pages is loaded in this session."""
    params = {"job": job.id, "user": user.id, "now": now, "page": page.id}
    if state.status in (AnnotatorStatus.QUIZ, AnnotatorStatus.ACTIVE):
        # The prefetched page is shown now: its time (speed checks) and reservation start here.
        later = now + timedelta(minutes=spec.pages.reservation_minutes)
        session.connection().execute(_RESTART_OTHERS, {**params, "served": now, "expires": later})
    else:  # removed or disqualified: release their reservations at once
        session.connection().execute(_RELEASE_OTHERS, {**params, "expires": now})


# --- grading -------------------------------------------------------------------------------------


def _grade(
    session: Session,
    job: Job,
    spec: JobSpec,
    user: User,
    page: Page,
    judgments: list[SubmittedJudgment],
    now: datetime,
) -> PageOutcome:
    """The quality engine decides everything that follows from a page of answers."""
    return quality_service.on_page_submitted(
        session, job, spec, user, page, judgments, now, job_locked=True
    )  # locked in submit_page


# --- response ------------------------------------------------------------------------------------


def _result(
    session: Session,
    page: Page,
    judgments: list[SubmittedJudgment],
    outcome: PageOutcome,
    state: AnnotatorState,
) -> SubmitResult:
    """The response stored for replays (missed gold only ever after the submit)."""
    return SubmitResult(
        page_id=page.public_id,
        kind=page.kind,
        saved=len(judgments),
        gold_seen=sum(1 for j in judgments if j.is_gold),
        missed_gold=list(outcome.missed_gold),
        quiz_passed=outcome.quiz_passed,
        quiz_accuracy=outcome.quiz_accuracy,
        annotator_status=state.status,
        message=outcome.message or state.message or DEFAULT_STATUS_MESSAGES.get(state.status),
    )


def _missed_image_ids(judgments: list[SubmittedJudgment], outcome: PageOutcome) -> list[int]:
    """The test questions of this page the annotator missed (as just graded)."""
    missed = {m.judgment_id for m in outcome.missed_gold}
    return [j.image_id for j in judgments if j.id in missed]


def _inactive_message(state: AnnotatorState | None) -> str:
    if state is None:
        return "You have not joined this job."
    return state.message or DEFAULT_STATUS_MESSAGES.get(state.status, "You cannot submit here.")
