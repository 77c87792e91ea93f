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

After inserting the judgments (flushed, same transaction) the quality engine grades the page
(``cxrlabel.quality.service.on_page_submitted``).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, selectinload

from cxrlabel.annotate._time import as_utc
from cxrlabel.annotate.assignment import DEFAULT_STATUS_MESSAGES, open_reservations
from cxrlabel.annotate.schemas import AnswerIn, MissedGold, SubmissionError, SubmitResult
from cxrlabel.jobspec import JobSpec
from cxrlabel.quality import service as quality_service
from cxrlabel.quality.service import PageOutcome
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
)

MAX_CLIENT_ID_LENGTH = 64


def submit_page(
    session: Session, job: Job, spec: JobSpec, user: User, page_public_id: str,
    client_submission_id: str, answers: list[AnswerIn], now: datetime,
) -> SubmitResult:
    """Store one page of answers exactly once and return the (stored) outcome."""
    if not client_submission_id or len(client_submission_id) > MAX_CLIENT_ID_LENGTH:
        raise SubmissionError(
            "bad_submission_id", "The submission id is missing or too long (max 64).", 422
        )
    page = session.scalar(
        select(Page).where(Page.public_id == page_public_id, Page.job_id == job.id,
                           Page.user_id == user.id)
        .with_for_update()  # PostgreSQL: parallel submits of one page queue here
        # Validation and grading read every item's image: two queries, not one per item.
        .options(selectinload(Page.items).selectinload(PageItem.image))
    )
    if page is None:
        raise SubmissionError("page_not_found", "No such page for you in this job.", 404)
    previous = session.scalar(
        select(Submission).where(Submission.user_id == user.id,
                                 Submission.client_submission_id == client_submission_id)
    )
    if previous is not None:
        if previous.page_id != page.id:
            raise SubmissionError(
                "submission_id_reused",
                "This submission id was already used for another page.", 409,
            )
        return SubmitResult.model_validate({**previous.response, "replayed": True})
    if page.submitted_at is not None:
        raise SubmissionError(
            "already_submitted",
            "This page was already submitted (perhaps from another tab). Your earlier answers "
            "are kept.", 409,
        )
    state = session.scalar(
        select(AnnotatorState).where(AnnotatorState.job_id == job.id,
                                     AnnotatorState.user_id == user.id)
        .with_for_update()
    )
    if state is None or state.status not in (AnnotatorStatus.QUIZ, AnnotatorStatus.ACTIVE):
        raise SubmissionError("not_active", _inactive_message(state), 403)
    by_image = _validate_answers(spec, page, answers)
    # Same lock order as the quality engine (job row, then images): no deadlock between them.
    # FOR NO KEY UPDATE: still one submitter at a time, but it does not block the foreign-key
    # check (KEY SHARE) of an assigner inserting a page of this job while holding image row
    # locks this submit will wait for: with FOR UPDATE that was a deadlock on PostgreSQL
    # (benchmarks/loop_postgres.sh, 32 annotators).
    session.execute(select(Job.id).where(Job.id == job.id).with_for_update(key_share=True))
    if as_utc(page.expires_at) <= now:
        _check_expired_page_still_needed(session, job, spec, page, now)

    submission = Submission(user_id=user.id, page_id=page.id,
                            client_submission_id=client_submission_id, response={},
                            created_at=now)
    session.add(submission)
    session.flush()
    judgments = _insert_judgments(session, job, user, page, submission, by_image, state, now)
    page.submitted_at = now

    outcome = _grade(session, job, spec, user, page, judgments, now)
    session.refresh(state)
    result = _result(session, page, judgments, outcome, state)
    submission.response = result.model_dump(mode="json")
    _after_submit(session, job, spec, user, page, state, now)
    session.flush()
    return result


def stored_result(session: Session, user: User, page: Page) -> SubmitResult | None:
    """The stored response of a submitted page (for the feedback page), or None."""
    row = session.scalar(
        select(Submission).where(Submission.page_id == page.id, Submission.user_id == user.id)
    )
    return SubmitResult.model_validate(row.response) if row is not None else None


# --- validation ----------------------------------------------------------------------------------

def _validate_answers(spec: JobSpec, page: Page, answers: list[AnswerIn]) -> dict[int, AnswerIn]:
    """Exactly one valid answer per page item, keyed by image id; else 422, nothing stored."""
    items = {item.image.public_id: item.image_id for item in page.items}
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
                f"Unknown certainty {a.certainty!r}; use one of {spec.certainty_values}.", 422,
            )
        if a.quality_flag is not None and a.quality_flag not in spec.quality_flag_values:
            raise SubmissionError(
                "bad_quality_flag", f"Unknown image-quality flag {a.quality_flag!r}.", 422
            )
    return {items[a.image_public_id]: a for a in answers}


def _check_expired_page_still_needed(
    session: Session, job: Job, spec: JobSpec, page: Page, now: datetime
) -> None:
    """Accept a late page only if no work image on it would go over its target."""
    work_ids = sorted(item.image_id for item in page.items if not item.is_gold)
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
    open_counts = dict(session.execute(
        select(reserved.c.image_id, reserved.c.n).where(reserved.c.image_id.in_(work_ids))
    ).all())
    for image_id, status, trusted, target in rows:
        wanted = min(target, spec.judgments.max)
        taken = trusted + open_counts.get(image_id, 0)
        if status != ImageStatus.NEEDS_JUDGMENTS or taken >= wanted:
            raise SubmissionError(
                "page_expired",
                "This page expired and some of its images have since been answered by others, "
                "so these answers could not be saved. Please continue with a new page.", 409,
            )


# --- storing -------------------------------------------------------------------------------------

def _insert_judgments(
    session: Session, job: Job, user: User, page: Page, submission: Submission,
    by_image: dict[int, AnswerIn], state: AnnotatorState, now: datetime,
) -> list[Judgment]:
    elapsed = max((now - as_utc(page.served_at)).total_seconds(), 0.0)
    per_item = elapsed / max(len(page.items), 1)
    judgments = []
    for item in page.items:
        answer = by_image[item.image_id]
        judgments.append(Judgment(
            job_id=job.id, image_id=item.image_id, user_id=user.id, page_id=page.id,
            submission_id=submission.id, answer=answer.answer, certainty=answer.certainty,
            quality_flag=answer.quality_flag, is_gold=item.is_gold,
            is_quiz=page.kind == PageKind.QUIZ,
            served_at=page.served_at, submitted_at=now, seconds=per_item,
        ))
    session.add_all(judgments)
    session.flush()
    return judgments


def _after_submit(
    session: Session, job: Job, spec: JobSpec, user: User, page: Page, state: AnnotatorState,
    now: datetime,
) -> None:
    """Free or restart the annotator's other open pages (the prefetched next page)."""
    others = (
        update(Page)
        .where(Page.job_id == job.id, Page.user_id == user.id, Page.submitted_at.is_(None),
               Page.expires_at > now, Page.id != page.id)
        .execution_options(synchronize_session=False)
    )
    if state.status in (AnnotatorStatus.QUIZ, AnnotatorStatus.ACTIVE):
        # The prefetched page is shown now: its time (speed checks) and reservation start here.
        later = now + timedelta(minutes=spec.pages.reservation_minutes)
        session.execute(others.values(served_at=now, expires_at=later))
    else:  # removed or disqualified: release their reservations at once
        session.execute(others.values(expires_at=now))


# --- grading -------------------------------------------------------------------------------------

def _grade(
    session: Session, job: Job, spec: JobSpec, user: User, page: Page,
    judgments: list[Judgment], now: datetime,
) -> PageOutcome:
    """The quality engine decides everything that follows from a page of answers."""
    return quality_service.on_page_submitted(session, job, spec, user, page, judgments, now)


# --- response ------------------------------------------------------------------------------------

def _result(
    session: Session, page: Page, judgments: list[Judgment], outcome: Any,
    state: AnnotatorState,
) -> SubmitResult:
    """The response stored for replays; ``outcome`` is quality's ``PageOutcome``."""
    missed = [
        MissedGold(judgment_id=m.judgment_id, image_public_id=m.image_public_id,
                   given_answer=m.given_answer, accepted_answers=list(m.accepted_answers),
                   reason=m.reason)
        for m in outcome.missed_gold
    ]
    return SubmitResult(
        page_id=page.public_id,
        kind=page.kind,
        saved=len(judgments),
        gold_seen=sum(1 for j in judgments if j.is_gold),
        missed_gold=missed,
        quiz_passed=outcome.quiz_passed,
        quiz_accuracy=outcome.quiz_accuracy,
        annotator_status=state.status,
        message=outcome.message or state.message or DEFAULT_STATUS_MESSAGES.get(state.status),
    )


def _inactive_message(state: AnnotatorState | None) -> str:
    if state is None:
        return "You have not joined this job."
    return state.message or DEFAULT_STATUS_MESSAGES.get(state.status, "You cannot submit here.")
