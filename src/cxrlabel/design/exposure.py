"""Gold bank exposure: how many annotators have been shown each test question's answer, and
retirement of the ones shown to too many.

The missed-test-question feedback shows the accepted answer and the expert's reason: that is
how annotators learn, and it is also the one place an answer leaves the server (a failed quiz
is told its score only: those misses reveal nothing and are not counted). An item whose
answer several accounts have seen can be shared, so it stops being a test: after it has been
*revealed* (missed, feedback shown: ``gold_reveals``) to ``gold.retire_after_reveals``
distinct annotators it is
retired (``active = False``, never put on a new page; pages already served keep it and are
graded as usual), unless that would take the active bank below its floor (a quiz plus
``SMALL_BANK_WORK_PAGES`` work pages): then it stays, and the gold check and the admin page
warn (``kept_over_limit``, ``small_bank``) so that the admin adds gold (a job without a
model can top up from the crowd's agreement: ``design/crowdgold.py``). Each retirement is
written to the audit log (``gold.retired``); it is not a quality input, so ``quality replay``
is unaffected (it reads the bank's current ``active``).

``gold.retire_after_reveals = 0`` turns retirement off (exposure is still counted and shown).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from cxrlabel.jobspec import JobSpec
from cxrlabel.storage.locks import GOLD_BANK, advisory_lock
from cxrlabel.storage.models import AuditEvent, GoldItem, GoldReveal, Job

GOLD_RETIRED = "gold.retired"
SMALL_BANK_WORK_PAGES = 10  # an active bank smaller than a quiz + this many pages is "small"


def answers_shown(kind: str, quiz_passed: bool | None) -> bool:
    """Whether a submitted page's feedback shows the accepted answers of its missed test
    questions: always, except to a failed quiz attempt (its score only)."""
    return not (kind == "quiz" and quiz_passed is False)


def record_reveals(
    session: Session, job: Job, user_id: int, image_ids: Iterable[int], now: datetime
) -> None:
    """Remember that ``user_id`` was shown the answers of these test questions."""
    known = set(
        session.scalars(
            select(GoldReveal.image_id).where(
                GoldReveal.user_id == user_id, GoldReveal.image_id.in_(list(image_ids))
            )
        )
    )
    for image_id in sorted(set(image_ids) - known):
        session.add(GoldReveal(job_id=job.id, image_id=image_id, user_id=user_id, created_at=now))
    session.flush()


def revealed_counts(
    session: Session, job: Job, image_ids: Iterable[int] | None = None
) -> dict[int, int]:
    """Gold image id -> distinct annotators who were shown its accepted answer."""
    query = (
        select(GoldReveal.image_id, func.count(distinct(GoldReveal.user_id)))
        .where(GoldReveal.job_id == job.id)
        .group_by(GoldReveal.image_id)
    )
    if image_ids is not None:
        query = query.where(GoldReveal.image_id.in_(list(image_ids)))
    return {image_id: int(n) for image_id, n in session.execute(query)}


def retire_revealed(
    session: Session, job: Job, spec: JobSpec, image_ids: Iterable[int], now: datetime
) -> list[int]:
    """Retire the active gold among ``image_ids`` revealed to the limit; their image ids."""
    limit = spec.gold.retire_after_reveals
    image_ids = list(image_ids)
    if limit <= 0 or not image_ids:
        return []
    counts = revealed_counts(session, job, image_ids)
    over = [image_id for image_id, n in counts.items() if n >= limit]
    if not over:
        return []
    spare = active_count(session, job) - small_bank_threshold(spec)
    retired = []
    for gold in session.scalars(
        select(GoldItem)
        .where(GoldItem.job_id == job.id, GoldItem.image_id.in_(over), GoldItem.active.is_(True))
        .order_by(GoldItem.id)
        .limit(max(spare, 0))
    ):
        gold.active = False
        retired.append(gold.image_id)
        session.add(
            AuditEvent(
                at=now,
                job_id=job.id,
                actor_id=None,
                action=GOLD_RETIRED,
                subject=f"gold:{gold.id}",
                payload={
                    "gold_id": gold.id,
                    "image_id": gold.image_id,
                    "revealed_to": counts[gold.image_id],
                    "limit": limit,
                },
            )
        )
    session.flush()
    return retired


def small_bank_threshold(spec: JobSpec) -> int:
    """The floor of the active bank: a quiz plus ``SMALL_BANK_WORK_PAGES`` work pages. Retiring
    below it would stop the job (no quiz, no work pages), so the item stays and the gold check
    and admin page say so (add gold)."""
    return spec.gold.quiz_length + SMALL_BANK_WORK_PAGES * spec.gold.per_page


def active_count(session: Session, job: Job) -> int:
    """Active gold items of the job (the bank as annotators meet it)."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(GoldItem)
            .where(GoldItem.job_id == job.id, GoldItem.active.is_(True))
        )
        or 0
    )


def after_feedback(
    session: Session,
    job: Job,
    spec: JobSpec,
    user_id: int,
    kind: str,
    quiz_passed: bool | None,
    missed_image_ids: list[int],
    now: datetime,
) -> None:
    """A page was graded: record the reveals its feedback makes and retire what hit the
    limit (called by ``annotate.submission.submit_page`` in the submit's transaction)."""
    if not missed_image_ids or not answers_shown(kind, quiz_passed):
        return
    # PostgreSQL grades pages side by side: the reveals are counted and items retired one
    # page at a time (the last lock a submit takes).
    advisory_lock(session, GOLD_BANK, job.id)
    record_reveals(session, job, user_id, missed_image_ids, now)
    retire_revealed(session, job, spec, missed_image_ids, now)


@dataclass(frozen=True)
class Exposure:
    """The bank's exposure, for the gold check and the admin dashboard."""

    active: int
    retired_revealed: int  # retired by the reveal limit (audit log)
    limit: int  # gold.retire_after_reveals (0: off)
    revealed: dict[int, int]  # gold image id -> distinct annotators shown its answer
    small_bank_threshold: int
    kept_over_limit: int = 0  # active items revealed to the limit, kept at the bank's floor

    @property
    def max_revealed(self) -> int:
        return max(self.revealed.values(), default=0)

    @property
    def small(self) -> bool:
        return self.active <= self.small_bank_threshold  # at the floor: no retirement left

    def warnings(self) -> list[tuple[str, str]]:
        """(code, message) pairs, empty when nothing needs the admin."""
        out = []
        if self.small:
            out.append(
                (
                    "small_bank",
                    (
                        f"only {self.active} active gold: no more than a quiz plus "
                        f"{SMALL_BANK_WORK_PAGES} work pages need ({self.small_bank_threshold}); "
                        "add gold before annotators run out (cxrlabel gold import; without "
                        "an expert-written bank, gold sample --from-crowd N proposes the "
                        "crowd's clearest finalised images for an expert to confirm)"
                    ),
                )
            )
        if self.kept_over_limit:
            out.append(
                (
                    "kept_over_limit",
                    (
                        f"{self.kept_over_limit} active gold have been revealed to {self.limit} "
                        "or more annotators but are kept: retiring them would leave the bank "
                        "below its floor "
                        f"({self.small_bank_threshold}); add gold"
                    ),
                )
            )
        if self.retired_revealed:
            out.append(
                (
                    "retired_revealed",
                    (
                        f"{self.retired_revealed} gold retired after their answer was shown to "
                        f"{self.limit} annotators (gold.retire_after_reveals)"
                    ),
                )
            )
        return out


def bank_exposure(session: Session, job: Job, spec: JobSpec) -> Exposure:
    active = active_count(session, job)
    retired_subjects = set(
        session.scalars(
            select(AuditEvent.subject).where(
                AuditEvent.job_id == job.id, AuditEvent.action == GOLD_RETIRED
            )
        )
    )
    retired = [
        gold_id
        for gold_id in session.scalars(
            select(GoldItem.id).where(GoldItem.job_id == job.id, GoldItem.active.is_(False))
        )
        if f"gold:{gold_id}" in retired_subjects
    ]  # still retired (an admin may reactivate it)
    revealed = revealed_counts(session, job)
    limit = spec.gold.retire_after_reveals
    kept = 0
    if limit > 0:
        over = [i for i, n in revealed.items() if n >= limit]
        kept = (
            int(
                session.scalar(
                    select(func.count())
                    .select_from(GoldItem)
                    .where(
                        GoldItem.job_id == job.id,
                        GoldItem.active.is_(True),
                        GoldItem.image_id.in_(over),
                    )
                )
                or 0
            )
            if over
            else 0
        )
    return Exposure(
        active=active,
        retired_revealed=len(retired),
        limit=limit,
        revealed=revealed,
        small_bank_threshold=small_bank_threshold(spec),
        kept_over_limit=kept,
    )
