"""The inputs of the quality engine: every state change comes from one of these events.

The quality state is a pure function of the ordered list of events (see ``engine.replay``).
``service.py`` turns stored rows (judgments, audit log) into these events, so recomputing from
scratch and the incremental path on each submission run the same code.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JudgmentIn:
    id: int
    image_id: int
    answer: str
    certainty: str
    quality_flag: str | None = None
    is_gold: bool = False
    is_quiz: bool = False


@dataclass(frozen=True)
class PageSubmitted:
    user_id: int
    page_id: int
    kind: str  # quiz | work
    seconds: float  # submit time - page served_at
    judgments: tuple[JudgmentIn, ...]
    # Active gold items when the page was submitted: a quiz is complete after
    # min(quiz_length, active_gold) answers. None: count the gold items the state holds.
    active_gold: int | None = None


@dataclass(frozen=True)
class GoldChanged:
    """The accepted answers of a gold item changed (contest resolved by changing, or an edit)."""

    image_id: int
    accepted: tuple[str, ...]
    by: int | None = None


@dataclass(frozen=True)
class ContestOpened:
    contest_id: int
    judgment_id: int
    user_id: int


@dataclass(frozen=True)
class ContestUpheld:
    """An admin kept the gold answer of a contest: the contested miss counts again."""

    contest_id: int
    judgment_id: int
    user_id: int


@dataclass(frozen=True)
class AnnotatorRemoved:
    """An admin removed an annotator (automatic removals are decisions, not inputs)."""

    user_id: int
    reason: str
    by: int | None = None


@dataclass(frozen=True)
class AnnotatorReinstated:
    user_id: int
    reason: str
    by: int | None = None


@dataclass(frozen=True)
class ExpertLabeled:
    image_id: int
    label: str
    expert_id: int
    promote_to_gold: bool = False
    # The new gold item's difficulty: "hard" from the review queue (a "can't tell" on it is
    # no miss), "easy" when confirming gold proposed from the crowd's agreement.
    gold_difficulty: str = "hard"


Event = (
    PageSubmitted
    | GoldChanged
    | ContestOpened
    | ContestUpheld
    | AnnotatorRemoved
    | AnnotatorReinstated
    | ExpertLabeled
)
