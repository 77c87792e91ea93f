"""What an annotator is told about where they stand: the status panel and the status message.

Pure functions over plain values, plus one small reader (``read_standing``). The message is
derived from the *current* status and its reason every time, never from a stored text that an
earlier event left behind: a removed annotator used to see an old speed warning ("After 2 more
such page(s) you will be removed"), and a reinstated one saw nothing at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cxrlabel.quality import skill
from cxrlabel.quality.rules import (
    REMOVED_DISTRIBUTION,
    REMOVED_LOW_TRUST,
    REMOVED_SPEED,
)

ACTIVE, QUIZ, REMOVED, DISQUALIFIED = "active", "quiz", "removed", "disqualified"
NEAR_MINIMUM = 0.05  # warn when running accuracy is this close to the job's minimum


def removal_message(status_reason: str | None, min_accuracy: float) -> str:
    """Why this annotator no longer gets work, in words, from the engine's coded reason."""
    code, _, detail = (status_reason or "").partition(":")
    if code == REMOVED_SPEED:
        return (
            "You were removed from this job: too many pages were submitted faster than a "
            "careful look at every image takes, so their answers were not counted. "
            "An administrator can review this and reinstate you."
        )
    if code == REMOVED_LOW_TRUST:
        return (
            "You were removed from this job: your accuracy on the hidden test questions "
            f"fell below the job's minimum of {min_accuracy:.0%}. Your answers since then "
            "are not counted. An administrator can review this and reinstate you."
        )
    if code == REMOVED_DISTRIBUTION:
        return (
            "You were removed from this job: your answers did not look like careful "
            "answers to these images (for example always the same button). An "
            "administrator can review this and reinstate you."
        )
    harm = skill.reason_text(status_reason) if code in skill.HARM_REASONS else None
    if harm is not None:  # removal for harm (skill.py): its own words, one place for all pages
        return f"{harm} An administrator can review this and reinstate you."
    why = detail.strip() if code == "admin" else (status_reason or "").strip()
    return (
        "An administrator removed you from this job"
        + (f": {why}" if why else ".")
        + " Your answers are not counted."
    )


def disqualified_message(correct: int | None, seen: int | None, min_accuracy: float) -> str:
    score = (
        f"{correct} of {seen} of your answers matched the experts; this job needs "
        f"{min_accuracy:.0%}"
        if seen
        else f"Your answers did not reach the {min_accuracy:.0%} this job needs"
    )
    return (
        f"You did not pass the quiz. {score}, so we cannot offer you work on it. This is "
        "not a judgement of you: reading X-rays is hard. You are welcome to try other "
        "jobs."
    )


def reinstated_message(flags: dict[str, Any], gold_seen: int | None = None) -> str | None:
    """Announced until the annotator's next graded page (the engine records ``gold_seen`` at
    reinstatement), not forever."""
    info = flags.get("reinstated") if flags else None
    if not info:
        return None
    if gold_seen is not None and gold_seen > int(info.get("gold_seen", -1)):
        return None
    reason = str(info.get("reason") or "").strip()
    return (
        "Welcome back: an administrator reinstated you on this job"
        + (f" ({reason})" if reason else "")
        + ". Your earlier answers count again."
    )


def standing_message(
    status: str,
    status_reason: str | None,
    flags: dict[str, Any] | None,
    stored_message: str | None,
    min_accuracy: float,
    quiz: tuple[int, int] | None = None,
) -> str | None:
    """The one message that is true for the annotator's status now."""
    if status == REMOVED:
        return removal_message(status_reason, min_accuracy)
    if status == DISQUALIFIED:
        correct, seen = quiz or (None, None)
        return disqualified_message(correct, seen, min_accuracy)
    gold_seen = quiz[1] if quiz else None
    # A reinstatement outranks whatever warning was stored before the removal.
    return reinstated_message(flags or {}, gold_seen) or stored_message


@dataclass(frozen=True)
class Standing:
    """The numbers of the annotator's status panel."""

    gold_seen: int
    gold_correct: int
    min_accuracy: float
    pages_done: int
    pages_left: int | None  # None: unbounded by the job's limits
    pay_per_page: float
    currency: str
    min_seconds_per_page: float
    speed_trips: int
    speed_trap_limit: int

    @property
    def accuracy(self) -> float | None:
        return self.gold_correct / self.gold_seen if self.gold_seen else None

    @property
    def earnings(self) -> float:
        return self.pages_done * self.pay_per_page

    @property
    def near_minimum(self) -> bool:
        acc = self.accuracy
        return acc is not None and acc < self.min_accuracy + NEAR_MINIMUM

    def pace_text(self) -> str | None:
        if self.min_seconds_per_page <= 0:
            return None
        text = (
            f"Take at least {self.min_seconds_per_page:.0f} s per page: faster pages are "
            "not counted"
        )
        left = self.speed_trap_limit - self.speed_trips
        if self.speed_trips:
            text += f" ({self.speed_trips} so far; {max(left, 0)} more and you are removed)"
        return text + "."


def pages_left(
    work_done: int, max_per_annotator: int, per_page_work: int, unseen_gold: int, gold_per_page: int
) -> int:
    """Pages this annotator can still get, bounded by their judgment cap and by the test
    questions left for them (a work page needs ``gold_per_page`` unseen ones)."""
    by_cap = max(max_per_annotator - work_done, 0) / max(per_page_work, 1)
    by_gold = unseen_gold // gold_per_page if gold_per_page else math.inf
    return int(min(math.ceil(by_cap), by_gold))


def read_standing(session, job, spec, user_id: int) -> Standing | None:
    """The status panel's numbers for one annotator on one job (a few indexed counts)."""
    from sqlalchemy import func, select

    from cxrlabel.quality.rules import RuleParams
    from cxrlabel.storage.models import AnnotatorState, GoldItem, Page, PageItem

    state = session.scalar(
        select(AnnotatorState).where(
            AnnotatorState.job_id == job.id, AnnotatorState.user_id == user_id
        )
    )
    if state is None:
        return None
    pages_done = (
        session.scalar(
            select(func.count(Page.id)).where(
                Page.job_id == job.id,
                Page.user_id == user_id,
                Page.kind == "work",
                Page.submitted_at.is_not(None),
            )
        )
        or 0
    )
    gold_total = (
        session.scalar(
            select(func.count(GoldItem.id)).where(GoldItem.job_id == job.id, GoldItem.active)
        )
        or 0
    )
    gold_shown = (
        session.scalar(
            select(func.count(PageItem.id))
            .join(Page, Page.id == PageItem.page_id)
            .where(Page.job_id == job.id, Page.user_id == user_id, PageItem.is_gold)
        )
        or 0
    )
    per_page_work = spec.pages.items_per_page - spec.gold.per_page
    params = RuleParams.from_spec(spec)
    return Standing(
        gold_seen=state.gold_seen,
        gold_correct=state.gold_seen - state.gold_missed,
        min_accuracy=spec.gold.min_accuracy,
        pages_done=pages_done,
        pages_left=pages_left(
            state.judgments,
            spec.judgments.max_per_annotator,
            per_page_work,
            max(gold_total - gold_shown, 0),
            spec.gold.per_page,
        ),
        pay_per_page=spec.pay.per_page,
        currency=spec.pay.currency,
        min_seconds_per_page=params.min_seconds_per_page,
        speed_trips=state.speed_trips,
        speed_trap_limit=params.speed_trap_limit,
    )
