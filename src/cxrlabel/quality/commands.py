"""Admin, annotator and expert commands on the quality state: contests, gold corrections,
removing and reinstating annotators, messages, and experts' final labels.

Each command checks the actor's role, locks what it will change (``store.lock_job``), writes
its input to the audit log and runs it through the engine (``store.run_event``); a refusal
raises ``QualityError`` and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cxrlabel.jobspec import JobSpec
from cxrlabel.storage.models import (
    AnnotatorState,
    AnnotatorStatus,
    Contest,
    ExpertReview,
    GoldItem,
    Image,
    ImageStatus,
    Job,
    Judgment,
    Role,
    User,
)

from .events import (
    AnnotatorReinstated,
    AnnotatorRemoved,
    ContestOpened,
    ContestUpheld,
    ExpertLabeled,
    GoldChanged,
)
from .store import (
    ADMIN_REINSTATED,
    ADMIN_REMOVED,
    CONTEST_CHANGED,
    CONTEST_OPENED,
    CONTEST_UPHELD,
    EXPERT_LABELED,
    GOLD_CHANGED,
    GOLD_EDITED,
    MESSAGE_SENT,
    QualityError,
    ReviewConflict,
    add_audit,
    lock_job,
    run_event,
)


def _annotator_row(session: Session, job: Job, user_id: int) -> AnnotatorState:
    row = session.scalar(
        select(AnnotatorState).where(
            AnnotatorState.job_id == job.id, AnnotatorState.user_id == user_id
        )
    )
    if row is None:
        raise QualityError("unknown_annotator", f"user {user_id} has not joined this job", 404)
    return row


def _require_role(user: User, *roles: str) -> None:
    if user.role not in roles:
        raise QualityError("forbidden", f"this needs the {' or '.join(roles)} role", 403)


# --- contests and gold corrections ---------------------------------------------------------------


def not_contestable() -> QualityError:
    """The one refusal for a contest on anything but one's own *missed* test question: an
    unknown id, someone else's answer, a work answer and a correct gold answer all get it, so
    contests cannot be used to find out which answer on a page was a test question."""
    return QualityError(
        "not_contestable", "There is no missed test question of yours with this id.", 404
    )


def contest_gold(
    session: Session,
    job: Job,
    spec: JobSpec,
    user: User,
    judgment_id: int,
    reason: str,
    now: datetime,
) -> Contest:
    """An annotator disputes the accepted answer of a test question they missed."""
    reason = (reason or "").strip()
    if not reason:
        raise QualityError("reason_required", "say why you think the accepted answer is wrong")
    lock_job(session, job, [user.id])
    judgment = session.get(Judgment, judgment_id)
    if (
        judgment is None
        or judgment.job_id != job.id
        or judgment.user_id != user.id
        or not judgment.is_gold
        or not judgment.gold_missed
    ):
        raise not_contestable()
    gold = session.scalar(select(GoldItem).where(GoldItem.image_id == judgment.image_id))
    if gold is None:
        raise not_contestable()
    if session.scalar(select(Contest.id).where(Contest.judgment_id == judgment_id)):
        raise QualityError("already_contested", "you already contested this answer", 409)
    contest = Contest(
        gold_id=gold.id,
        judgment_id=judgment_id,
        user_id=user.id,
        reason=reason[:4000],
        status="open",
        created_at=now,
    )
    session.add(contest)
    session.flush()
    add_audit(
        session,
        job,
        user.id,
        CONTEST_OPENED,
        f"contest:{contest.id}",
        {
            "contest_id": contest.id,
            "judgment_id": judgment_id,
            "user_id": user.id,
            "gold_id": gold.id,
            "reason": contest.reason,
        },
        now,
    )
    run_event(session, job, spec, ContestOpened(contest.id, judgment_id, user.id), now, user.id)
    return contest


def _check_answers(spec: JobSpec, answers: Iterable[str] | None) -> list[str]:
    cleaned = sorted({a.strip() for a in (answers or []) if a and a.strip()})
    unknown = [a for a in cleaned if a not in spec.label_values]
    if not cleaned:
        raise QualityError("answers_required", "give at least one accepted answer")
    if unknown:
        raise QualityError(
            "unknown_answer", f"unknown answer(s) {unknown}; choose from {spec.label_values}"
        )
    return cleaned


def resolve_contest(
    session: Session,
    job: Job,
    spec: JobSpec,
    admin: User,
    contest_id: int,
    action: str,
    reply: str,
    new_accepted_answers: Iterable[str] | None,
    now: datetime,
) -> Contest:
    """Uphold the gold answer (with a reply the annotator sees) or change its accepted answers,
    which regrades everyone who answered it (forgiving misses that are now correct)."""
    _require_role(admin, Role.ADMIN)
    reply = (reply or "").strip()
    if action not in ("uphold", "change"):
        raise QualityError("bad_action", "action must be 'uphold' or 'change'")
    contest = session.get(Contest, contest_id)
    gold = session.get(GoldItem, contest.gold_id) if contest else None
    if contest is None or gold is None or gold.job_id != job.id:
        raise QualityError("unknown_contest", f"no contest {contest_id} in this job", 404)
    lock_job(session, job, _gold_answerers(session, gold))
    session.refresh(contest)  # another admin may have resolved it while we waited
    if contest.status != "open":
        raise QualityError(
            "contest_closed", f"contest {contest_id} is already {contest.status}", 409
        )
    if action == "uphold":
        if not reply:
            raise QualityError("reply_required", "explain to the annotator why the answer stands")
        contest.status, contest.reply, contest.resolved_at = "upheld", reply, now
        add_audit(
            session,
            job,
            admin.id,
            CONTEST_UPHELD,
            f"contest:{contest.id}",
            {
                "contest_id": contest.id,
                "gold_id": gold.id,
                "reply": reply,
                "judgment_id": contest.judgment_id,
                "user_id": contest.user_id,
            },
            now,
        )
        run_event(
            session,
            job,
            spec,
            ContestUpheld(contest.id, contest.judgment_id, contest.user_id),
            now,
            admin.id,
        )
        session.flush()
        return contest
    answers = _check_answers(spec, new_accepted_answers)
    if answers == sorted(gold.accepted_answers):
        raise QualityError("unchanged", "the accepted answers are already exactly these")
    _change_gold(session, job, spec, admin, gold, answers, now, contest_id=contest.id)
    # Every open contest this correction answers is settled with the same reply.
    for other in session.scalars(
        select(Contest).where(Contest.gold_id == gold.id, Contest.status == "open")
    ):
        given = session.get(Judgment, other.judgment_id)
        if other.id == contest.id or (given is not None and given.answer in answers):
            other.status, other.resolved_at = "changed", now
            other.reply = reply or f"Thank you: the accepted answers are now {', '.join(answers)}."
            add_audit(
                session,
                job,
                admin.id,
                CONTEST_CHANGED,
                f"contest:{other.id}",
                {"contest_id": other.id, "gold_id": gold.id, "reply": other.reply},
                now,
            )
    session.flush()
    return contest


def _gold_answerers(session: Session, gold: GoldItem) -> list[int]:
    return list(
        session.scalars(
            select(Judgment.user_id).where(
                Judgment.image_id == gold.image_id, Judgment.is_gold.is_(True)
            )
        ).all()
    )


def _change_gold(
    session: Session,
    job: Job,
    spec: JobSpec,
    admin: User,
    gold: GoldItem,
    answers: list[str],
    now: datetime,
    contest_id: int | None = None,
) -> None:
    old = list(gold.accepted_answers)
    gold.accepted_answers = answers
    add_audit(
        session,
        job,
        admin.id,
        GOLD_CHANGED,
        f"gold:{gold.id}",
        {
            "image_id": gold.image_id,
            "gold_id": gold.id,
            "old": old,
            "new": answers,
            "contest_id": contest_id,
        },
        now,
    )
    run_event(
        session, job, spec, GoldChanged(gold.image_id, tuple(answers), admin.id), now, admin.id
    )


def update_gold(
    session: Session,
    job: Job,
    spec: JobSpec,
    admin: User,
    gold_id: int,
    *,
    now: datetime,
    accepted_answers: Iterable[str] | None = None,
    reason: str | None = None,
    difficulty: str | None = None,
    active: bool | None = None,
) -> GoldItem:
    """Edit a gold item; a change of accepted answers regrades like a contest does."""
    _require_role(admin, Role.ADMIN)
    gold = session.get(GoldItem, gold_id)
    if gold is None or gold.job_id != job.id:
        raise QualityError("unknown_gold", f"no gold item {gold_id} in this job", 404)
    lock_job(session, job, _gold_answerers(session, gold))
    if difficulty is not None and difficulty not in ("easy", "medium", "hard"):
        raise QualityError("bad_difficulty", "difficulty must be easy, medium or hard")
    edits = {
        k: v
        for k, v in (("reason", reason), ("difficulty", difficulty), ("active", active))
        if v is not None
    }
    for name, value in edits.items():
        setattr(gold, name, value)
    if edits:
        add_audit(
            session,
            job,
            admin.id,
            GOLD_EDITED,
            f"gold:{gold.id}",
            {"gold_id": gold.id, **edits},
            now,
        )
    if accepted_answers is not None:
        answers = _check_answers(spec, accepted_answers)
        if answers != sorted(gold.accepted_answers):
            _change_gold(session, job, spec, admin, gold, answers, now)
    session.flush()
    return gold


# --- admin actions on annotators -----------------------------------------------------------------


def remove_annotator(
    session: Session, job: Job, spec: JobSpec, admin: User, user_id: int, reason: str, now: datetime
) -> AnnotatorState:
    _require_role(admin, Role.ADMIN)
    reason = (reason or "").strip()
    if not reason:
        raise QualityError("reason_required", "give a reason for removing this annotator")
    lock_job(session, job, [user_id])
    row = _annotator_row(session, job, user_id)
    if row.status not in (AnnotatorStatus.ACTIVE, AnnotatorStatus.QUIZ):
        raise QualityError("not_active", f"this annotator is already {row.status}", 409)
    add_audit(
        session,
        job,
        admin.id,
        ADMIN_REMOVED,
        f"user:{user_id}",
        {"user_id": user_id, "reason": reason},
        now,
    )
    run_event(session, job, spec, AnnotatorRemoved(user_id, reason, admin.id), now, admin.id)
    return row


def reinstate_annotator(
    session: Session, job: Job, spec: JobSpec, admin: User, user_id: int, reason: str, now: datetime
) -> AnnotatorState:
    _require_role(admin, Role.ADMIN)
    reason = (reason or "").strip() or "reinstated by an administrator"
    lock_job(session, job, [user_id])
    row = _annotator_row(session, job, user_id)
    if row.status == AnnotatorStatus.DISQUALIFIED:
        raise QualityError("disqualified", "failing the quiz is final for this job", 409)
    if row.status != AnnotatorStatus.REMOVED:
        raise QualityError("not_removed", f"this annotator is {row.status}, not removed", 409)
    add_audit(
        session,
        job,
        admin.id,
        ADMIN_REINSTATED,
        f"user:{user_id}",
        {"user_id": user_id, "reason": reason},
        now,
    )
    run_event(session, job, spec, AnnotatorReinstated(user_id, reason, admin.id), now, admin.id)
    return row


def send_message(
    session: Session, job: Job, admin: User, user_id: int, text: str, now: datetime
) -> AnnotatorState:
    """A message shown to the annotator on their next page (the annotate app clears it)."""
    _require_role(admin, Role.ADMIN)
    text = (text or "").strip()
    if not text:
        raise QualityError("message_required", "the message is empty")
    row = _annotator_row(session, job, user_id)
    row.message = text[:2000]
    add_audit(
        session,
        job,
        admin.id,
        MESSAGE_SENT,
        f"user:{user_id}",
        {"user_id": user_id, "message": row.message},
        now,
    )
    session.flush()
    return row


# --- experts -------------------------------------------------------------------------------------


def record_expert_label(
    session: Session,
    job: Job,
    spec: JobSpec,
    expert: User,
    image_id: int,
    label: str,
    reason: str | None,
    now: datetime,
    promote_to_gold: bool = False,
    gold_reason: str | None = None,
    gold_difficulty: str = "hard",
    gold_source: str = "expert",
) -> ExpertReview:
    """An expert's final label; optionally the image becomes a new gold item (``hard`` when
    promoted from the review queue: a contested case; ``easy`` when the crowd agreed on it,
    ``confirm_crowd_gold``, whose items say ``source="crowd"``: proposed by the crowd's
    agreement, confirmed by the expert)."""
    _require_role(expert, Role.EXPERT, Role.ADMIN)
    if label not in spec.label_values:
        raise QualityError("unknown_answer", f"label must be one of {spec.label_values}")
    gold_reason = (gold_reason or "").strip()
    if promote_to_gold and not gold_reason:
        raise QualityError(
            "reason_required", "a new gold item needs a reason annotators will be shown"
        )
    lock_job(session, job)
    image = session.get(Image, image_id)
    if image is None or image.job_id != job.id:
        raise QualityError("unknown_image", f"image {image_id} is not part of this job", 404)
    session.refresh(image)  # another expert may have committed while we waited for the lock
    existing = session.scalar(select(ExpertReview).where(ExpertReview.image_id == image_id))
    if existing is not None or image.status == ImageStatus.EXPERT:
        raise ReviewConflict("another expert already recorded a final label for this image")
    if image.status == ImageStatus.GOLD:
        raise QualityError("is_gold", "this image is a gold item, not a work item")
    review = ExpertReview(
        image_id=image_id,
        expert_id=expert.id,
        label=label,
        reason=(reason or "").strip() or None,
        promoted_to_gold=promote_to_gold,
        created_at=now,
    )
    try:
        with session.begin_nested():
            session.add(review)
            session.flush()
    except IntegrityError:
        raise ReviewConflict(
            "another expert already recorded a final label for this image"
        ) from None
    if promote_to_gold:
        session.add(
            GoldItem(
                job_id=job.id,
                image_id=image_id,
                accepted_answers=[label],
                reason=gold_reason,
                difficulty=gold_difficulty,
                source=gold_source,
                active=True,
                created_at=now,
            )
        )
    add_audit(
        session,
        job,
        expert.id,
        EXPERT_LABELED,
        f"image:{image_id}",
        {
            "image_id": image_id,
            "label": label,
            "reason": review.reason,
            "promote_to_gold": promote_to_gold,
            "gold_reason": gold_reason or None,
            "gold_difficulty": gold_difficulty if promote_to_gold else None,
            "gold_source": gold_source if promote_to_gold else None,
        },
        now,
    )
    run_event(
        session,
        job,
        spec,
        ExpertLabeled(image_id, label, expert.id, promote_to_gold, gold_difficulty),
        now,
        expert.id,
    )
    return review


def confirm_crowd_gold(
    session: Session,
    job: Job,
    spec: JobSpec,
    expert: User,
    rows: list[tuple[int, str, str]],
    now: datetime,
) -> tuple[list[int], list[int]]:
    """An expert's answers to gold proposed from the crowd's agreement
    (``design/crowdgold.py``), as (image id, answer, reason). Where the expert gives the
    crowd's label, the image becomes an ``easy`` gold item with the expert's reason; where
    not, the expert's label corrects the image and it is no gold (the crowd was confidently
    wrong: no clear case). Returns (made gold, corrected) image ids."""
    promoted: list[int] = []
    corrected: list[int] = []
    for image_id, answer, reason in rows:
        image = session.get(Image, image_id)
        agrees = image is not None and image.label == answer
        record_expert_label(
            session,
            job,
            spec,
            expert,
            image_id,
            answer,
            reason,
            now,
            promote_to_gold=agrees,
            gold_reason=reason if agrees else None,
            gold_difficulty="easy",
            gold_source="crowd",
        )
        (promoted if agrees else corrected).append(image_id)
    return promoted, corrected
