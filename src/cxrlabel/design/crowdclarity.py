"""Clarity from the crowd's own agreement: which finalised work images would make clear test
questions when the job has no model scores (``cxrlabel gold sample --from-crowd``). Pure: it
reads plain records (``design/crowdgold.py`` builds them from the database), imports no
database or web code.

The rule (docs/quality.md, "Gold from the crowd's agreement"):

- Only images the quality engine *finalised* from crowd answers are candidates. Images that
  went to expert review at any time, or that an expert labelled, are contested cases: hard gold
  is for calibrating experts, not for testing annotators, so they are left out.
- At least ``min_answers`` trusted answers (untainted work answers): agreement among two people
  is too little evidence that a case is clear.
- Near-unanimous: at most ``max_dissent_fraction`` of the answers name another label (one of
  five is tolerated, none of three or four). A "can't tell" answer is no dissent (its label
  carries no vote), but it does count against clarity (below).
- No image-quality flag: a test question must test the question, not the picture.
- The score, lower = clearer (the scale of ``goldseed.model_clarity``: 0 = sure), is
  ``1 - confidence x support``: ``confidence`` is the engine's own posterior of the label it
  finalised (``Image.confidence``, the job's online aggregation, with its per-annotator trust),
  not a second aggregator; ``support`` is the mean certainty weight of the answers that agree,
  over *all* answers (``definitely`` 1.0, ``probably`` 0.6, ``can't tell`` and dissent 0). So
  five "definitely" answers score near 0, while the same label reached with two "can't tell"
  answers among five scores at least 0.4: the crowd found it, but not easily.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

FINALISED = "finalised"  # vocab.ImageStatus.FINALISED (kept literal: this module imports nothing)

# Why a finalised image is no candidate (counted for the CLI's message).
NOT_FINALISED = "not finalised by the crowd"
REVIEWED = "sent to an expert (contested)"
FEW_ANSWERS = "too few answers"
DISSENT = "not unanimous enough"
FLAGGED = "image-quality flag"
NO_CONFIDENCE = "no posterior stored"


@dataclass(frozen=True)
class CrowdAnswer:
    """One trusted work answer on the image: its label, certainty and image-quality flag."""

    answer: str
    certainty: str
    quality_flag: str | None = None


@dataclass(frozen=True)
class CrowdImage:
    image_id: int
    status: str
    label: str | None  # the engine's label
    confidence: float | None  # the engine's posterior of that label
    answers: tuple[CrowdAnswer, ...]
    reviewed: bool = False  # sent to expert review, or labelled by an expert, at any time


@dataclass(frozen=True)
class ClarityRule:
    cant_tell: str
    certainty_weights: Mapping[str, float]
    min_answers: int = 3
    max_dissent_fraction: float = 0.2


@dataclass
class Clarity:
    """Image id -> score (lower = clearer) for the candidates; why the others were left out."""

    scores: dict[int, float] = field(default_factory=dict)
    excluded: Counter[str] = field(default_factory=Counter)

    def explain(self) -> str:
        """The left-out images by reason, for an error or a report line."""
        return ", ".join(f"{n} {why}" for why, n in sorted(self.excluded.items())) or "none"


def crowd_clarity(images: Iterable[CrowdImage], rule: ClarityRule) -> Clarity:
    """Score each candidate image; count the others by the first rule they fail."""
    out = Clarity()
    for image in images:
        verdict = score_image(image, rule)
        if isinstance(verdict, str):
            out.excluded[verdict] += 1
        else:
            out.scores[image.image_id] = verdict
    return out


def score_image(image: CrowdImage, rule: ClarityRule) -> float | str:
    """The image's score, or the reason it is no candidate."""
    if image.status != FINALISED or image.label is None:
        return NOT_FINALISED
    if image.reviewed:
        return REVIEWED
    n = len(image.answers)
    if n < rule.min_answers:
        return FEW_ANSWERS
    votes = [a for a in image.answers if a.certainty != rule.cant_tell]
    dissent = sum(1 for a in votes if a.answer != image.label)
    if dissent > rule.max_dissent_fraction * n:
        return DISSENT
    if any(a.quality_flag for a in image.answers):
        return FLAGGED
    if image.confidence is None:
        return NO_CONFIDENCE
    agreeing = [a for a in votes if a.answer == image.label]
    support = sum(rule.certainty_weights.get(a.certainty, 0.0) for a in agreeing) / n
    return min(1.0, max(0.0, 1.0 - image.confidence * support))
