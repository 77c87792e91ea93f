"""Which images an annotator sees next: the page assignment engine (no web code).

Rules (docs/annotator-app.md explains them for people):

- An annotator never gets the same image twice (any image ever put on one of their pages is
  excluded) and only ever sees their own pages, so never another annotator's answers.
- A new annotator gets a quiz page (``gold.quiz_length`` test questions) until the quality
  engine marks them active; then work pages of ``pages.items_per_page`` items of which
  ``gold.per_page`` are hidden test questions at random positions.
- Work goes to images that are *open* (``status == needs_judgments`` and trusted judgments plus
  open reservations below ``judgment_target`` and below ``judgments.max``), preferring the ones
  closest to being finalised (fewest missing judgments), then the oldest.
- A page reserves its work images until it is submitted or ``pages.reservation_minutes`` pass.
- Asking again while holding an open page returns that page (the oldest open one).
- ``judgments.max_per_annotator`` caps the work judgments (done + reserved) per annotator.
- Each test question is shown at most once per annotator. When an annotator has fewer unseen
  test questions than ``gold.per_page``, they get no more work pages: the gold bank bounds the
  work one person can do (as on Appen), because a page without hidden gold is unmeasured work.

Concurrency: on PostgreSQL the annotator's state row is locked (``FOR UPDATE``) so one person's
parallel requests queue, and candidate images are locked with ``FOR UPDATE SKIP LOCKED`` and
re-counted under the lock, so two annotators can never fill the last slot of an image twice. On
SQLite every transaction starts with ``BEGIN IMMEDIATE`` (storage/db.py): one writer at a time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, select, true, union_all
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from cxrlabel.jobspec import JobSpec
from cxrlabel.storage.models import (
    AnnotatorState,
    AnnotatorStatus,
    GoldItem,
    Image,
    ImageStatus,
    Job,
    Judgment,
    Page,
    PageItem,
    PageKind,
    User,
)

# Rounds of lock-and-recount before giving up on filling a page (each round takes fresh rows).
_MAX_LOCK_ROUNDS = 4

DEFAULT_STATUS_MESSAGES = {
    AnnotatorStatus.DISQUALIFIED: (
        "Thank you for taking the quiz. Your answers did not reach the accuracy this job needs, "
        "so we cannot offer you work on it. This is not a judgement of you: reading X-rays is "
        "hard. You are welcome to try other jobs."
    ),
    AnnotatorStatus.REMOVED: (
        "Thank you for your work. Your recent answers to test questions were below the accuracy "
        "this job needs, so we have paused your access to it. An administrator can review this."
    ),
}


@dataclass(frozen=True)
class NoPage:
    """Why no page could be served: a stable code and a sentence for the annotator."""

    code: str
    message: str


NO_GOLD_FOR_QUIZ = NoPage(
    "not_ready", "This job is not ready yet (it has no quiz questions). Please come back later."
)
QUOTA_REACHED = NoPage(
    "quota_reached", "You have reached the maximum number of answers one person can give in "
    "this job. Thank you very much for your work!"
)
GOLD_EXHAUSTED = NoPage(
    "all_done", "You have done all the work this job can offer you. Thank you very much!"
)
NO_OPEN_IMAGES = NoPage(
    "no_work_now", "There are no images waiting for you right now. Thank you! Please check back "
    "later: images come back when other people's pages expire."
)


def join_job(
    session: Session, job: Job, spec: JobSpec, user: User, now: datetime
) -> AnnotatorState:
    """The annotator's state for this job, created on first visit (quiz first, if there is one)."""
    state = _state(session, job, user)
    if state is not None:
        return state
    status = AnnotatorStatus.QUIZ if spec.gold.quiz_length > 0 else AnnotatorStatus.ACTIVE
    state = AnnotatorState(
        job_id=job.id, user_id=user.id, status=status, joined_at=now,
        quiz_passed_at=now if status == AnnotatorStatus.ACTIVE else None,
    )
    try:
        with session.begin_nested():  # a parallel first request may have created it
            session.add(state)
            session.flush()
    except IntegrityError:
        state = _state(session, job, user)
        assert state is not None
    return state


def next_page(
    session: Session, job: Job, spec: JobSpec, user: User, now: datetime,
    *, rng: random.Random | None = None,
) -> Page | None:
    """The page this annotator should work on now (an open one if they hold it), or None."""
    page, _reason = next_page_or_reason(session, job, spec, user, now, rng=rng)
    return page


def next_page_or_reason(
    session: Session, job: Job, spec: JobSpec, user: User, now: datetime,
    *, rng: random.Random | None = None,
) -> tuple[Page | None, NoPage | None]:
    """Like ``next_page`` but says why there is no page."""
    state = _locked_state(session, job, spec, user, now)
    if state.status not in (AnnotatorStatus.QUIZ, AnnotatorStatus.ACTIVE):
        return None, status_message(state)
    held = open_pages(session, job, user, now)
    if held:
        return held[0], None
    rng = rng or random.SystemRandom()
    if state.status == AnnotatorStatus.QUIZ:
        return _new_quiz_page(session, job, spec, user, now, rng)
    return _new_work_page(session, job, spec, user, now, rng)


def prefetch_page(
    session: Session, job: Job, spec: JobSpec, user: User, now: datetime,
    *, rng: random.Random | None = None,
) -> Page | None:
    """Reserve the page after the current one so a browser can download its images early.

    Only for active annotators holding exactly one open work page; returns the already
    prefetched page on a repeat call. ``submit_page`` restarts its clock when it is shown.
    """
    state = _locked_state(session, job, spec, user, now)
    if state.status != AnnotatorStatus.ACTIVE:
        return None
    held = open_pages(session, job, user, now)
    if len(held) >= 2:
        return held[1]
    if len(held) != 1 or held[0].kind != PageKind.WORK:
        return None
    page, _reason = _new_work_page(session, job, spec, user, now, rng or random.SystemRandom())
    return page


def open_pages(session: Session, job: Job, user: User, now: datetime) -> list[Page]:
    """The annotator's unsubmitted, unexpired pages, oldest first."""
    return list(session.scalars(
        select(Page)
        .where(Page.job_id == job.id, Page.user_id == user.id, Page.submitted_at.is_(None),
               Page.expires_at > now)
        .order_by(Page.id)
        # Callers show the items' images: two queries instead of one per item.
        .options(selectinload(Page.items).selectinload(PageItem.image))
    ))


def status_message(state: AnnotatorState) -> NoPage:
    text = state.message or DEFAULT_STATUS_MESSAGES.get(state.status, "")
    return NoPage(state.status, text)


def seen_image_ids(job: Job, user: User) -> Select:
    """Every image ever put on one of this annotator's pages in this job."""
    return (
        select(PageItem.image_id)
        .join(Page, Page.id == PageItem.page_id)
        .where(Page.job_id == job.id, Page.user_id == user.id)
    )


def open_reservations(job: Job, now: datetime):  # noqa: ANN201 - a SQLAlchemy subquery
    """Per image: work items on served, unsubmitted, unexpired pages."""
    return (
        select(PageItem.image_id.label("image_id"), func.count().label("n"))
        .join(Page, Page.id == PageItem.page_id)
        .where(Page.job_id == job.id, Page.submitted_at.is_(None), Page.expires_at > now,
               PageItem.is_gold.is_(False))
        .group_by(PageItem.image_id)
        .subquery("reserved")
    )


# --- internals ---------------------------------------------------------------------------------

def _state(session: Session, job: Job, user: User) -> AnnotatorState | None:
    return session.scalar(
        select(AnnotatorState).where(AnnotatorState.job_id == job.id,
                                     AnnotatorState.user_id == user.id)
    )


def _locked_state(
    session: Session, job: Job, spec: JobSpec, user: User, now: datetime
) -> AnnotatorState:
    """Join if needed, then lock the state row so one annotator's parallel requests queue."""
    state = join_job(session, job, spec, user, now)
    session.execute(
        select(AnnotatorState.id).where(AnnotatorState.id == state.id).with_for_update()
    )
    session.refresh(state)
    return state


def _unseen_gold(session: Session, job: Job, user: User) -> list[int]:
    # Two small queries instead of ``NOT IN (every image this annotator ever saw)``, which
    # SQLite materialises on every call: that list grows with the annotator's history, the
    # gold bank does not.
    active = session.scalars(
        select(GoldItem.image_id).where(GoldItem.job_id == job.id, GoldItem.active.is_(True))
    ).all()
    seen = set(session.scalars(
        select(PageItem.image_id)
        .join(Page, Page.id == PageItem.page_id)
        .join(GoldItem, GoldItem.image_id == PageItem.image_id)
        .where(Page.job_id == job.id, Page.user_id == user.id)
    ))
    return sorted(i for i in active if i not in seen)


def _new_quiz_page(
    session: Session, job: Job, spec: JobSpec, user: User, now: datetime, rng: random.Random
) -> tuple[Page | None, NoPage | None]:
    unseen = _unseen_gold(session, job, user)
    if not unseen:
        return None, NO_GOLD_FOR_QUIZ
    chosen = rng.sample(unseen, min(spec.gold.quiz_length, len(unseen)))
    return _make_page(session, job, spec, user, now, PageKind.QUIZ, [], chosen, rng), None


def _work_done_and_reserved(session: Session, job: Job, user: User, now: datetime) -> int:
    done = session.scalar(
        select(func.count(Judgment.id)).where(
            Judgment.job_id == job.id, Judgment.user_id == user.id, Judgment.is_gold.is_(False)
        )
    ) or 0
    reserved = session.scalar(
        select(func.count(PageItem.id))
        .join(Page, Page.id == PageItem.page_id)
        .where(Page.job_id == job.id, Page.user_id == user.id, Page.submitted_at.is_(None),
               Page.expires_at > now, PageItem.is_gold.is_(False))
    ) or 0
    return done + reserved


def _new_work_page(
    session: Session, job: Job, spec: JobSpec, user: User, now: datetime, rng: random.Random
) -> tuple[Page | None, NoPage | None]:
    quota = spec.judgments.max_per_annotator - _work_done_and_reserved(session, job, user, now)
    n_work = min(spec.pages.items_per_page - spec.gold.per_page, quota)
    if n_work <= 0:
        return None, QUOTA_REACHED
    gold: list[int] = []
    if spec.gold.per_page > 0:
        unseen = _unseen_gold(session, job, user)
        if len(unseen) < spec.gold.per_page:
            return None, GOLD_EXHAUSTED
        gold = rng.sample(unseen, spec.gold.per_page)
    work = claim_open_images(session, job, spec, user, now, n_work)
    if not work:
        return None, NO_OPEN_IMAGES
    return _make_page(session, job, spec, user, now, PageKind.WORK, work, gold, rng), None


def claim_open_images(
    session: Session, job: Job, spec: JobSpec, user: User, now: datetime, n: int
) -> list[int]:
    """Up to ``n`` open images this annotator has not seen, closest to finalised first.

    One set-based query; on PostgreSQL the chosen rows stay locked until the transaction ends.
    """
    reserved = open_reservations(job, now)
    n_reserved = func.coalesce(reserved.c.n, 0)
    missing = Image.judgment_target - Image.trusted_judgments - n_reserved
    query = (
        select(Image.id)
        .outerjoin(reserved, reserved.c.image_id == Image.id)
        .where(
            Image.job_id == job.id,
            Image.status == ImageStatus.NEEDS_JUDGMENTS,
            Image.trusted_judgments + n_reserved < Image.judgment_target,
            Image.trusted_judgments + n_reserved < spec.judgments.max,
            ~_seen_by(job, user),
        )
        .order_by(missing.asc(), Image.id)
    )
    # Same query over a short candidate list (same answer, see ``_candidates``) instead of
    # ranking every open image of the job on every page.
    fast = query.where(Image.id.in_(_candidates(job, user, reserved, n)))
    if session.get_bind().dialect.name == "sqlite":
        # The whole transaction already holds SQLite's single write lock (BEGIN IMMEDIATE).
        return list(session.scalars(fast.limit(n)))
    chosen = _claim_with_row_locks(session, fast, reserved, spec, n)
    if len(chosen) < n:  # candidates locked by other annotators right now: rank them all
        rest = query.where(Image.id.not_in(chosen)) if chosen else query
        chosen += _claim_with_row_locks(session, rest, reserved, spec, n - len(chosen))
    return chosen


def _seen_by(job: Job, user: User):  # noqa: ANN202 - a SQLAlchemy EXISTS clause
    """True for an image that was on one of this annotator's pages (an index lookup per image,
    not a materialised list of everything they ever saw)."""
    return (
        select(PageItem.id)
        .join(Page, Page.id == PageItem.page_id)
        .where(PageItem.image_id == Image.id, Page.job_id == job.id, Page.user_id == user.id)
        .exists()
    )


def _candidates(job: Job, user: User, reserved: Any, n: int) -> Select:
    """Image ids that contain the ``n`` best open images of the ranking in ``claim_open_images``.

    The ranking is (missing judgments, id). An image nobody has judged or reserved misses its
    whole target, so among those the ranking is (judgment_target, id): the first ``n`` of them
    unseen by this annotator (an ordered index scan, ``ix_images_open_order``) are enough. Every
    other open image has trusted judgments or reservations; those are few (work in progress)
    and all are included. The exact conditions are applied by the caller's query.
    """
    untouched = (
        select(Image.id)
        .where(Image.job_id == job.id, Image.status == ImageStatus.NEEDS_JUDGMENTS,
               Image.trusted_judgments == 0, Image.id.not_in(select(reserved.c.image_id)),
               ~_seen_by(job, user))
        .order_by(Image.judgment_target, Image.id)
        .limit(n)
        .subquery("untouched")
    )
    in_progress = select(Image.id).where(
        Image.job_id == job.id, Image.status == ImageStatus.NEEDS_JUDGMENTS,
        Image.trusted_judgments > 0)
    return union_all(in_progress, select(reserved.c.image_id), select(untouched.c.id))


def _claim_with_row_locks(
    session: Session, query: Select, reserved: Any, spec: JobSpec, n: int
) -> list[int]:
    """PostgreSQL: lock exactly the rows we want (SKIP LOCKED: rows another annotator is taking
    right now are passed over, not waited for), re-count them under the lock, repeat if some
    turned out full."""
    n_reserved = func.coalesce(reserved.c.n, 0)
    chosen: list[int] = []
    rejected: list[int] = []
    for _attempt in range(_MAX_LOCK_ROUNDS):
        want = n - len(chosen)
        if want <= 0:
            break
        candidates = list(session.scalars(
            query.where(Image.id.not_in(chosen + rejected) if chosen or rejected else true())
            # NO KEY UPDATE: excludes other assigners, not the FK checks of inserted rows.
            .limit(want).with_for_update(skip_locked=True, of=Image, key_share=True)
        ))
        if not candidates:
            break
        # Re-count with a fresh snapshot (READ COMMITTED): a reservation committed by someone
        # else between our query's snapshot and our lock is seen here.
        still_open = set(session.scalars(
            select(Image.id)
            .outerjoin(reserved, reserved.c.image_id == Image.id)
            .where(
                Image.id.in_(candidates),
                Image.status == ImageStatus.NEEDS_JUDGMENTS,
                Image.trusted_judgments + n_reserved < Image.judgment_target,
                Image.trusted_judgments + n_reserved < spec.judgments.max,
            )
        ))
        chosen += [i for i in candidates if i in still_open]
        rejected += [i for i in candidates if i not in still_open]
    return chosen


def _make_page(
    session: Session, job: Job, spec: JobSpec, user: User, now: datetime, kind: str,
    work: list[int], gold: list[int], rng: random.Random,
) -> Page:
    entries = [(image_id, False) for image_id in work] + [(image_id, True) for image_id in gold]
    rng.shuffle(entries)  # gold sits at random positions, indistinguishable from work
    # The caller shows every item's image: load them in one query, not one lazy load per item.
    images = {i.id: i for i in session.scalars(select(Image).where(Image.id.in_(work + gold)))}
    page = Page(
        job_id=job.id, user_id=user.id, kind=kind, served_at=now,
        expires_at=now + timedelta(minutes=spec.pages.reservation_minutes),
        items=[PageItem(image_id=i, image=images[i], position=pos, is_gold=g)
               for pos, (i, g) in enumerate(entries)],
    )
    session.add(page)
    session.flush()
    return page
