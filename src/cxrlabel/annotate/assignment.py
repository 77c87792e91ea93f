"""Which images an annotator sees next: the page assignment engine (no web code).

Rules (docs/annotator-app.md explains them for people):

- An annotator never gets the same image twice (any image ever put on one of their pages is
  excluded) and only ever sees their own pages, so never another annotator's answers.
- With ``[training] enabled`` a new annotator first gets training pages (clear cases from the
  training pool, never gold; feedback after each page; counted for nothing: annotate/training.py).
- A new annotator gets a quiz page (``gold.quiz_length`` test questions) until the quality
  engine marks them active; then work pages of ``pages.items_per_page`` items of which
  ``gold.per_page`` are hidden test questions at random positions.
- Work goes to images that are *open* (``status == needs_judgments`` and trusted judgments plus
  open reservations below ``judgment_target`` and below ``judgments.max``), preferring the ones
  closest to being finalised (fewest missing judgments), then in the job's shuffled serving
  order (``Image.serve_rank``, a per-job hash of the file: not the folder order, which lists
  one class first in a Kaggle layout). With
  ``[assignment] order = "model_uncertainty"`` the tie between equally complete images goes to
  the one the model is least sure about (``Image.model_score`` nearest 0.5; unscored last).
- A page reserves its work images until it is submitted or ``pages.reservation_minutes`` pass.
- Asking again while holding an open page returns that page (the oldest open one).
- ``judgments.max_per_annotator`` caps the work judgments (done + reserved) per annotator.
- Each test question is shown at most once per annotator. When an annotator has fewer unseen
  test questions than ``gold.per_page``, they get no more work pages: the gold bank bounds the
  work one person can do (as on Appen), because a page without hidden gold is unmeasured work.

The claim of open images for a work page (its SQL and the PostgreSQL row locks) lives in
``annotate/claim.py``.

Concurrency: on PostgreSQL the annotator's state row is locked (``FOR UPDATE``) so one person's
parallel requests queue, and candidate images are locked with ``FOR UPDATE SKIP LOCKED`` and
re-counted under the lock, so two annotators can never fill the last slot of an image twice. On
SQLite every transaction starts with ``BEGIN IMMEDIATE`` (storage/db.py): one writer at a time.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, Select, bindparam, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cxrlabel.annotate.claim import claim_open_images
from cxrlabel.annotate.training import training_images_due
from cxrlabel.jobspec import JobSpec
from cxrlabel.storage.models import (
    AnnotatorState,
    AnnotatorStatus,
    GoldItem,
    Image,
    Job,
    Page,
    PageItem,
    PageKind,
    User,
    new_public_id,
)

# Core tables of the prebuilt statements below.
_P, _PI, _I, _G = Page.__table__, PageItem.__table__, Image.__table__, GoldItem.__table__

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


@dataclass(frozen=True, slots=True)
class ServedImage:
    """What a page shows of an image (its public id and rendition; never a label)."""

    id: int
    public_id: str
    rendition_path: str | None


@dataclass(frozen=True, slots=True)
class ServedItem:
    image_id: int
    position: int
    is_gold: bool
    image: ServedImage


@dataclass(frozen=True, slots=True)
class ServedPage:
    """A page as handed to its annotator, as plain values: what the web app and the simulator
    read of it. (Building ORM ``Page``/``PageItem``/``Image`` objects for every page served
    cost more than the page's SQL: docs/benchmarks.md, issue 11.)"""

    id: int
    public_id: str
    job_id: int
    user_id: int
    kind: str
    served_at: datetime
    expires_at: datetime
    items: tuple[ServedItem, ...]


NO_GOLD_FOR_QUIZ = NoPage(
    "not_ready", "This job is not ready yet (it has no quiz questions). Please come back later."
)
QUOTA_REACHED = NoPage(
    "quota_reached",
    "You have reached the maximum number of answers one person can give in "
    "this job. Thank you very much for your work!",
)
GOLD_EXHAUSTED = NoPage(
    "all_done", "You have done all the work this job can offer you. Thank you very much!"
)
NO_OPEN_IMAGES = NoPage(
    "no_work_now",
    "There are no images waiting for you right now. Thank you! Please check back "
    "later: images come back when other people's pages expire.",
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
        job_id=job.id,
        user_id=user.id,
        status=status,
        joined_at=now,
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
    session: Session,
    job: Job,
    spec: JobSpec,
    user: User,
    now: datetime,
    *,
    rng: random.Random | None = None,
) -> ServedPage | None:
    """The page this annotator should work on now (an open one if they hold it), or None."""
    page, _reason = next_page_or_reason(session, job, spec, user, now, rng=rng)
    return page


def next_page_or_reason(
    session: Session,
    job: Job,
    spec: JobSpec,
    user: User,
    now: datetime,
    *,
    rng: random.Random | None = None,
) -> tuple[ServedPage | None, NoPage | None]:
    """Like ``next_page`` but says why there is no page."""
    state = _locked_state(session, job, spec, user, now)
    if state.status not in (AnnotatorStatus.QUIZ, AnnotatorStatus.ACTIVE):
        return None, status_message(state)
    held = open_pages(session, job, user, now)
    if held:
        return held[0], None
    rng = rng or random.SystemRandom()
    if state.status == AnnotatorStatus.QUIZ:
        training = training_images_due(session, job, spec, user, rng)
        if training:  # practice first (annotate/training.py): no gold on these pages
            return _make_page(
                session, job, spec, user, now, PageKind.TRAINING, training, [], rng
            ), None
        return _new_quiz_page(session, job, spec, user, now, rng)
    return _new_work_page(session, job, spec, user, now, rng, state, held)


def prefetch_page(
    session: Session,
    job: Job,
    spec: JobSpec,
    user: User,
    now: datetime,
    *,
    rng: random.Random | None = None,
) -> ServedPage | None:
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
    page, _reason = _new_work_page(
        session, job, spec, user, now, rng or random.SystemRandom(), state, held
    )
    return page


def open_pages(session: Session, job: Job, user: User, now: datetime) -> list[ServedPage]:
    """The annotator's unsubmitted, unexpired pages, oldest first (one query, items and their
    images included)."""
    rows = session.execute(_OPEN_PAGES, {"job": job.id, "user": user.id, "now": now}).all()
    pages: list[ServedPage] = []
    for page_id, page_rows in itertools.groupby(rows, key=lambda row: row.id):
        item_rows = list(page_rows)
        first = item_rows[0]
        items = tuple(
            ServedItem(
                r.image_id,
                r.position,
                bool(r.is_gold),
                ServedImage(r.image_id, r.image_public_id, r.rendition_path),
            )
            for r in item_rows
        )
        pages.append(
            ServedPage(
                page_id,
                first.public_id,
                first.job_id,
                first.user_id,
                first.kind,
                first.served_at,
                first.expires_at,
                items,
            )
        )
    return pages


_OPEN_PAGES = (
    select(
        _P.c.id,
        _P.c.public_id,
        _P.c.job_id,
        _P.c.user_id,
        _P.c.kind,
        _P.c.served_at,
        _P.c.expires_at,
        _PI.c.image_id,
        _PI.c.position,
        _PI.c.is_gold,
        _I.c.public_id.label("image_public_id"),
        _I.c.rendition_path,
    )
    .join(_PI, _PI.c.page_id == _P.c.id)
    .join(_I, _I.c.id == _PI.c.image_id)
    .where(
        _P.c.job_id == bindparam("job", type_=Integer),
        _P.c.user_id == bindparam("user", type_=Integer),
        _P.c.submitted_at.is_(None),
        _P.c.expires_at > bindparam("now"),
    )
    .order_by(_P.c.id, _PI.c.position)
)


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


# --- internals ---------------------------------------------------------------------------------


def _state(session: Session, job: Job, user: User) -> AnnotatorState | None:
    return session.scalar(
        select(AnnotatorState).where(
            AnnotatorState.job_id == job.id, AnnotatorState.user_id == user.id
        )
    )


def _locked_state(
    session: Session, job: Job, spec: JobSpec, user: User, now: datetime
) -> AnnotatorState:
    """Lock the state row so one annotator's parallel requests queue (joining first if needed);
    one query on every request but the first."""
    locked = (
        select(AnnotatorState)
        .where(AnnotatorState.job_id == job.id, AnnotatorState.user_id == user.id)
        .with_for_update()
        .execution_options(populate_existing=True)  # the values as of the lock
    )
    state = session.scalar(locked)
    if state is None:
        join_job(session, job, spec, user, now)
        state = session.scalar(locked)
        assert state is not None
    return state


def _unseen_gold(session: Session, job: Job, user: User) -> tuple[int, list[int]]:
    """How many active test questions this annotator has not seen, and the ids they have seen.

    With ``_unseen_gold_at`` a draw is ``rng.sample`` over the unseen ids in id order, as if
    the whole list were in memory (same rng calls, same picks: simulations stay reproducible),
    but only the picked rows leave the database, each from an index-only scan
    (``ix_gold_items_job_active_image``). Loading the whole bank on every page (1,500 ids in
    the benchmark) was the largest single cost of serving a page (docs/benchmarks.md).
    """
    params = {"job": job.id, "user": user.id}
    seen = sorted(set(session.execute(_ACTIVE_GOLD_SEEN_BY, params).scalars()))
    return session.execute(_N_ACTIVE_GOLD, params).scalar_one() - len(seen), seen


def _unseen_gold_at(session: Session, job: Job, seen: list[int], positions: list[int]) -> list[int]:
    """The unseen test questions at these positions of the id-ordered unseen list (a position
    past its end, possible only if the bank shrank since the count, gives nothing)."""
    picked = []
    for position in positions:
        image_id = session.execute(
            _UNSEEN_GOLD_AT, {"job": job.id, "seen": seen, "position": position}
        ).scalar()
        if image_id is not None:
            picked.append(image_id)
    return picked


_ACTIVE_GOLD_SEEN_BY = (  # the annotator's pages are few next to the bank: start from them
    select(_PI.c.image_id)
    .join(_P, _P.c.id == _PI.c.page_id)
    .join(_G, _G.c.image_id == _PI.c.image_id)
    .where(
        _P.c.job_id == bindparam("job", type_=Integer),
        _P.c.user_id == bindparam("user", type_=Integer),
        _G.c.active.is_(True),
    )
)
_N_ACTIVE_GOLD = (
    select(func.count())
    .select_from(_G)
    .where(_G.c.job_id == bindparam("job", type_=Integer), _G.c.active.is_(True))
)
# One row by position: an index-only walk of the bank (a window function over the whole bank,
# tried first, cost 1.2-2.1 ms a page on SQLite; this 0.13 ms).
_UNSEEN_GOLD_AT = (
    select(_G.c.image_id)
    .where(
        _G.c.job_id == bindparam("job", type_=Integer),
        _G.c.active.is_(True),
        _G.c.image_id.not_in(bindparam("seen", expanding=True)),
    )
    .order_by(_G.c.image_id)
    .limit(1)
    .offset(bindparam("position", type_=Integer))
)


def _new_quiz_page(
    session: Session, job: Job, spec: JobSpec, user: User, now: datetime, rng: random.Random
) -> tuple[ServedPage | None, NoPage | None]:
    n_unseen, seen = _unseen_gold(session, job, user)
    if n_unseen <= 0:
        return None, NO_GOLD_FOR_QUIZ
    positions = rng.sample(range(n_unseen), min(spec.gold.quiz_length, n_unseen))
    chosen = _unseen_gold_at(session, job, seen, positions)
    return _make_page(session, job, spec, user, now, PageKind.QUIZ, [], chosen, rng), None


def _work_done_and_reserved(state: AnnotatorState, held: list[ServedPage]) -> int:
    """Work answers given (the quality engine's ``judgments`` counter: every non-gold answer,
    tainted or not) plus work items on the pages the annotator holds now."""
    reserved = sum(1 for page in held for item in page.items if not item.is_gold)
    return state.judgments + reserved


def _new_work_page(
    session: Session,
    job: Job,
    spec: JobSpec,
    user: User,
    now: datetime,
    rng: random.Random,
    state: AnnotatorState,
    held: list[ServedPage],
) -> tuple[ServedPage | None, NoPage | None]:
    quota = spec.judgments.max_per_annotator - _work_done_and_reserved(state, held)
    n_work = min(spec.pages.items_per_page - spec.gold.per_page, quota)
    if n_work <= 0:
        return None, QUOTA_REACHED
    gold: list[int] = []
    if spec.gold.per_page > 0:
        n_unseen, seen = _unseen_gold(session, job, user)
        if n_unseen < spec.gold.per_page:
            return None, GOLD_EXHAUSTED
        gold = _unseen_gold_at(session, job, seen, rng.sample(range(n_unseen), spec.gold.per_page))
    work = claim_open_images(session, job, spec, user, now, n_work)
    if not work:
        return None, NO_OPEN_IMAGES
    return _make_page(session, job, spec, user, now, PageKind.WORK, work, gold, rng), None


def _make_page(
    session: Session,
    job: Job,
    spec: JobSpec,
    user: User,
    now: datetime,
    kind: str,
    work: list[int],
    gold: list[int],
    rng: random.Random,
) -> ServedPage:
    entries = [(image_id, False) for image_id in work] + [(image_id, True) for image_id in gold]
    rng.shuffle(entries)  # gold sits at random positions, indistinguishable from work
    # Core INSERTs (the ORM unit of work cost more than the statements): the page, then its
    # items in one statement; the caller gets plain values, not ORM objects (ServedPage).
    values: dict[str, Any] = {
        "public_id": new_public_id(),
        "job_id": job.id,
        "user_id": user.id,
        "kind": kind,
        "served_at": now,
        "submitted_at": None,
        "expires_at": now + timedelta(minutes=spec.pages.reservation_minutes),
    }
    page_id = session.execute(_INSERT_PAGE, values).scalar_one()
    _insert_items(session, page_id, entries)
    images = {
        row.id: ServedImage(row.id, row.public_id, row.rendition_path)
        for row in session.execute(_PAGE_IMAGES, {"ids": work + gold})
    }
    items = tuple(
        ServedItem(image_id, pos, is_gold, images[image_id])
        for pos, (image_id, is_gold) in enumerate(entries)
    )
    return ServedPage(
        page_id, values["public_id"], job.id, user.id, kind, now, values["expires_at"], items
    )


_PAGE_IMAGES = select(_I.c.id, _I.c.public_id, _I.c.rendition_path).where(
    _I.c.id.in_(bindparam("ids", expanding=True))
)
_INSERT_PAGE = insert(_P).returning(_P.c.id)


def _insert_items(session: Session, page_id: int, entries: list[tuple[int, bool]]) -> None:
    """One multi-row INSERT for a page's items (the ORM inserts them one by one on SQLite)."""
    session.execute(
        insert(_PI),
        [
            {"page_id": page_id, "image_id": i, "position": pos, "is_gold": g}
            for pos, (i, g) in enumerate(entries)
        ],
    )
