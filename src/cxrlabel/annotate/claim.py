"""Which open images a work page takes: the claim query (no web code).

The ranking, the rules of which images are *open* and the concurrency story are described in
``annotate/assignment.py``, which calls ``claim_open_images`` for every work page. This module
holds that hot path's SQL: the prebuilt claim statements (one set per tie order), the short
candidate list they rank, the per-image count of open reservations (also read by
``annotate/submission.py``) and, on PostgreSQL, the ``FOR UPDATE SKIP LOCKED`` lock-and-recount
loop.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CompoundSelect,
    Integer,
    Select,
    bindparam,
    func,
    literal_column,
    select,
    true,
    union_all,
)
from sqlalchemy.orm import Session

from cxrlabel.jobspec import JobSpec
from cxrlabel.storage.models import Image, ImageStatus, Job, Page, PageItem, User

# Rounds of lock-and-recount before giving up on filling a page (each round takes fresh rows).
_MAX_LOCK_ROUNDS = 4


def open_reservations(job: Job, now: datetime):  # a SQLAlchemy subquery
    """Per image: work items on served, unsubmitted, unexpired pages."""
    return _reservations(job.id, now)


def _reservations(job_id: Any, now: Any):  # a SQLAlchemy subquery
    return (
        select(PageItem.image_id.label("image_id"), func.count().label("n"))
        .join(Page, Page.id == PageItem.page_id)
        .where(
            Page.job_id == job_id,
            Page.submitted_at.is_(None),
            Page.expires_at > now,
            PageItem.is_gold.is_(False),
        )
        .group_by(PageItem.image_id)
        .subquery("reserved")
    )


def claim_open_images(
    session: Session, job: Job, spec: JobSpec, user: User, now: datetime, n: int
) -> list[int]:
    """Up to ``n`` open images this annotator has not seen, closest to finalised first.

    One set-based query; on PostgreSQL the chosen rows stay locked until the transaction ends.
    """
    sql = _claim_sql(spec.assignment.order)
    params = {"job": job.id, "user": user.id, "now": now, "jmax": spec.judgments.max, "n": n}
    if session.get_bind().dialect.name == "sqlite":
        # The whole transaction already holds SQLite's single write lock (BEGIN IMMEDIATE).
        return list(session.scalars(sql.fast_limited, params))
    # PostgreSQL: the candidate ids first, then the ranking over that explicit list. As one
    # statement, a job whose tables had no statistics yet (just ingested, before autovacuum's
    # ANALYZE) got a plan that re-ran the candidate union for every image: seconds per page.
    params["candidates"] = list(session.scalars(sql.candidates, params))
    chosen = _claim_with_row_locks(session, sql.listed, sql.reserved, n, params)
    # Candidates locked by other annotators right now: rank them all. Then, when a crowd
    # arrives at once, everyone ranks the same few almost-finalised images first and most of
    # those are filled by someone else between this claimer's query and its re-count; every
    # round can lose that race. Images nobody has judged or reserved cannot be filled by one
    # other reservation (their target is at least 2 for any job with a second opinion), so
    # they are the last resort before "no images waiting right now" (which 1 of 32
    # annotators starting together was told while hundreds waited: docs/scaling.md).
    for query in (sql.ranked, sql.fresh):
        if len(chosen) >= n:
            break
        rest = query.where(Image.id.not_in(chosen)) if chosen else query
        chosen += _claim_with_row_locks(session, rest, sql.reserved, n - len(chosen), params)
    return chosen


@dataclass(frozen=True)
class _ClaimSql:
    reserved: Any  # open reservations per image (subquery)
    ranked: Select  # every open image the annotator has not seen, best first
    fast: Select  # the same ranking over the short candidate list (``_candidates``)
    fast_limited: Select  # ... and only the first ``:n``
    candidates: Any  # the candidate ids alone
    listed: Select  # the ranking over an explicit list of ids (``:candidates``)
    fresh: Select  # the ranking restricted to images with no judgment and no reservation


@functools.cache
def _claim_sql(order: str) -> _ClaimSql:
    """The claim statements, built once per tie order with bound parameters (``:job``,
    ``:user``, ``:now``, ``:jmax``, ``:n``): building this statement and its cache key took
    about as long as SQLite takes to run it."""
    job, user, n = (bindparam(name, type_=Integer) for name in ("job", "user", "n"))
    reserved = _reservations(job, bindparam("now"))
    n_reserved = func.coalesce(reserved.c.n, 0)
    missing = Image.judgment_target - Image.trusted_judgments - n_reserved
    ranked = (
        select(Image.id)
        .outerjoin(reserved, reserved.c.image_id == Image.id)
        .where(
            Image.job_id == job,
            Image.status == ImageStatus.NEEDS_JUDGMENTS,
            Image.trusted_judgments + n_reserved < Image.judgment_target,
            Image.trusted_judgments + n_reserved < bindparam("jmax", type_=Integer),
            ~_seen_by(user),
        )
        .order_by(missing.asc(), *_tie_order(order))
    )
    # Same query over a short candidate list (same answer, see ``_candidates``) instead of
    # ranking every open image of the job on every page.
    candidates = _candidates(job, order, user, reserved, n)
    fast = ranked.where(Image.id.in_(candidates))
    listed = ranked.where(Image.id.in_(bindparam("candidates", expanding=True)))
    fresh = ranked.where(Image.trusted_judgments == 0, reserved.c.n.is_(None))
    return _ClaimSql(reserved, ranked, fast, fast.limit(n), candidates, listed, fresh)


def _seen_by(user_id: Any):  # a SQLAlchemy EXISTS clause
    """True for an image that was on one of this annotator's pages.

    Per candidate image: its few page items (``ix_page_items_image``), each page by primary
    key. ``user_id + 0`` keeps the planner off ``ix_pages_user_id``: without statistics SQLite
    otherwise walks all of the annotator's pages for every candidate, a cost that grows with
    their history (hundreds of pages for a busy annotator, times hundreds of candidates). No
    job condition: an image's page items are all on pages of its own job.
    """
    return (
        select(PageItem.id)
        .join(Page, Page.id == PageItem.page_id)
        .where(PageItem.image_id == Image.id, (Page.user_id + 0) == user_id)
        .exists()
    )


def model_uncertainty() -> Any:
    """``[assignment] order = "model_uncertainty"``'s key: |p - 0.5| (least sure first), 1.0
    for images without a score (last). Written exactly as ``ix_images_model_order`` indexes it
    (constants inline, not bound), so both databases scan that index in this order."""
    return func.coalesce(func.abs(Image.model_score - literal_column("0.5")), literal_column("1.0"))


def _tie_order(order: str) -> tuple[Any, ...]:
    """The order among open images equally close to being finalised."""
    if order == "model_uncertainty":
        return (model_uncertainty(), Image.id)
    return (Image.serve_rank, Image.id)


def _candidates(job_id: Any, order: str, user_id: Any, reserved: Any, n: Any) -> CompoundSelect:
    """Image ids that contain the ``n`` best open images of the ranking in ``claim_open_images``.

    The ranking is (missing judgments, tie order). An image nobody has judged or reserved
    misses its whole target, so among those the ranking is (judgment_target, tie order):
    the first ``n`` of them unseen by this annotator (an ordered index scan,
    ``ix_images_open_order``, or ``ix_images_model_order`` with model ordering) are enough.
    Every other open image has trusted judgments or reservations; those are few (work in
    progress) and all are included. The exact conditions are applied by the caller's query.
    """
    untouched = (
        select(Image.id)
        .where(
            Image.job_id == job_id,
            Image.status == ImageStatus.NEEDS_JUDGMENTS,
            Image.trusted_judgments == 0,
            Image.id.not_in(select(reserved.c.image_id)),
            ~_seen_by(user_id),
        )
        .order_by(Image.judgment_target, *_tie_order(order))
        .limit(n)
        .subquery("untouched")
    )
    in_progress = select(Image.id).where(
        Image.job_id == job_id,
        Image.status == ImageStatus.NEEDS_JUDGMENTS,
        Image.trusted_judgments > 0,
    )
    return union_all(in_progress, select(reserved.c.image_id), select(untouched.c.id))


def _claim_with_row_locks(
    session: Session, query: Select, reserved: Any, n: int, params: dict[str, Any]
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
        candidates = list(
            session.scalars(
                query.where(Image.id.not_in(chosen + rejected) if chosen or rejected else true())
                # NO KEY UPDATE: excludes other assigners, not the FK checks of inserted rows.
                .limit(want)
                .with_for_update(skip_locked=True, of=Image, key_share=True),
                params,
            )
        )
        if not candidates:
            break
        # Re-count with a fresh snapshot (READ COMMITTED): a reservation committed by someone
        # else between our query's snapshot and our lock is seen here.
        still_open = set(
            session.scalars(
                select(Image.id)
                .outerjoin(reserved, reserved.c.image_id == Image.id)
                .where(
                    Image.id.in_(candidates),
                    Image.status == ImageStatus.NEEDS_JUDGMENTS,
                    Image.trusted_judgments + n_reserved < Image.judgment_target,
                    Image.trusted_judgments + n_reserved < bindparam("jmax", type_=Integer),
                ),
                params,
            )
        )
        chosen += [i for i in candidates if i in still_open]
        rejected += [i for i in candidates if i not in still_open]
    return chosen
