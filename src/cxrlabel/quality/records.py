"""The records that cross between the annotation engine and quality (pure: no web or database).

``annotate.submission`` builds a ``SubmittedJudgment`` for each judgment it inserts and hands
them to ``quality.grading.on_page_submitted``, which answers with a ``PageOutcome``; the
``MissedGold`` items of that outcome are stored verbatim in the submission's response
(``annotate.schemas.SubmitResult``). Imports go one way: annotate -> quality.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SubmittedJudgment:
    """A judgment of the page being graded, as the quality engine reads it (plain values; the
    engine writes its grading back with Core statements). ``Judgment`` rows have the same
    attributes, so replays and tests may pass those instead."""

    id: int
    image_id: int
    answer: str
    certainty: str
    quality_flag: str | None
    is_gold: bool
    is_quiz: bool
    trust_at_time: float | None = None


@dataclass(frozen=True)
class MissedGold:
    """Feedback for one missed test question; only ever sent *after* the page is submitted."""

    judgment_id: int
    image_public_id: str
    given_answer: str
    accepted_answers: list[str]
    reason: str


@dataclass
class PageOutcome:
    quiz_passed: bool | None
    quiz_accuracy: float | None
    annotator_status: str
    trust: float
    warnings: list[str] = field(default_factory=list)
    missed_gold: list[MissedGold] = field(default_factory=list)
    gold_seen: int = 0  # gold items on this page
    message: str | None = None  # the annotator's pending message, if any
