"""The quality state: plain records for annotators, images, gold items and judgments.

``QualityState`` keeps them in dictionaries. Lookups of something it does not hold go through
``_load_*`` hooks that return nothing here; ``store.DbState`` overrides them to load rows from the
database on demand, so the incremental path on each submission touches only the rows it needs
while running exactly the same rules as a full replay (which starts from an empty state).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from cxrlabel.vocab import TAINT_ORDER, AnnotatorStatus, ImageStatus

# Short names of the statuses the rules compute with (defined once in ``cxrlabel.vocab``, the
# same strings ``storage.models`` stores).
QUIZ, ACTIVE = AnnotatorStatus.QUIZ, AnnotatorStatus.ACTIVE
REMOVED, DISQUALIFIED = AnnotatorStatus.REMOVED, AnnotatorStatus.DISQUALIFIED
NEEDS_JUDGMENTS, FINALISED = ImageStatus.NEEDS_JUDGMENTS, ImageStatus.FINALISED
NEEDS_REVIEW, EXPERT, GOLD = ImageStatus.NEEDS_REVIEW, ImageStatus.EXPERT, ImageStatus.GOLD


@dataclass
class JudgmentRec:
    id: int
    image_id: int
    user_id: int
    page_id: int
    answer: str
    certainty: str
    quality_flag: str | None = None
    is_gold: bool = False
    is_quiz: bool = False
    gold_missed: bool | None = None
    trust_at_time: float | None = None
    taints: set[str] = field(default_factory=set)

    @property
    def tainted(self) -> bool:
        return bool(self.taints)

    @property
    def taint_reason(self) -> str | None:
        if not self.taints:
            return None
        ordered = [t for t in TAINT_ORDER if t in self.taints]
        return "; ".join(ordered + sorted(self.taints - set(TAINT_ORDER)))

    @staticmethod
    def parse_taints(reason: str | None) -> set[str]:
        return {part.strip() for part in (reason or "").split(";") if part.strip()}


@dataclass
class AnswerCounts:
    """What the answer-distribution rule and the quiz decision need about one annotator.

    Counts cover non-quiz answers (work items and gold mixed into work pages), because the quiz
    mix is chosen by the job designer and says nothing about the annotator's habits.
    """

    labels: Counter[str] = field(default_factory=Counter)
    certainty: Counter[str] = field(default_factory=Counter)
    quiz_seen: int = 0  # in the current quiz attempt
    quiz_missed: int = 0
    quiz_failures: int = 0  # failed quiz attempts that led to a retake
    # Peer agreement on work items (``skill.py``): pairs of labels two annotators gave the same
    # work image (neither tainted nor "can't tell" when the second arrived), and agreements.
    peer_pairs: int = 0
    peer_agree: int = 0
    # The same per peer (user id -> [pairs, agreements]), kept only with
    # ``quality.collusion_min_pairs`` > 0: what tells a colluding partner from the crowd.
    peer_tally: dict[int, list[int]] = field(default_factory=dict)

    @property
    def n_answers(self) -> int:
        return sum(self.labels.values())

    def to_dict(self) -> dict[str, Any]:
        """The stored form (``annotator_states.answer_counts``): plain JSON, zero counts left out
        so that equal counts always give equal documents."""
        stored: dict[str, Any] = {
            "labels": {k: v for k, v in sorted(self.labels.items()) if v},
            "certainty": {k: v for k, v in sorted(self.certainty.items()) if v},
            "quiz_seen": self.quiz_seen,
            "quiz_missed": self.quiz_missed,
        }
        for name in _OPTIONAL_COUNTS:  # absent when zero: documents from before stay equal
            if getattr(self, name):
                stored[name] = getattr(self, name)
        if self.peer_tally:
            stored["peer_tally"] = {str(k): list(v) for k, v in sorted(self.peer_tally.items())}
        return stored

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnswerCounts:
        return cls(
            Counter(data.get("labels") or {}),
            Counter(data.get("certainty") or {}),
            int(data.get("quiz_seen", 0)),
            int(data.get("quiz_missed", 0)),
            **{name: int(data.get(name, 0)) for name in _OPTIONAL_COUNTS},
            peer_tally={
                int(k): [int(v[0]), int(v[1])] for k, v in (data.get("peer_tally") or {}).items()
            },
        )


_OPTIONAL_COUNTS = ("quiz_failures", "peer_pairs", "peer_agree")


@dataclass
class AnnotatorRec:
    user_id: int
    status: str = QUIZ
    status_reason: str | None = None
    trust: float = 0.0
    gold_seen: int = 0
    gold_missed: int = 0
    gold_contested: int = 0
    gold_forgiven: int = 0
    judgments: int = 0  # work answers (gold and quiz answers not included)
    speed_trips: int = 0
    flags: dict[str, Any] = field(default_factory=dict)
    message: str | None = None
    quiz_passed: bool = False

    @property
    def removal_kind(self) -> str | None:
        """Why the annotator is removed: the part of ``status_reason`` before the colon."""
        if self.status != REMOVED or not self.status_reason:
            return None
        return self.status_reason.split(":", 1)[0].strip()


@dataclass
class ImageRec:
    image_id: int
    status: str = NEEDS_JUDGMENTS
    judgment_target: int = 0
    trusted_judgments: int = 0
    label: str | None = None
    confidence: float | None = None
    proba: dict[str, float] | None = None
    aggregation_method: str | None = None
    # The model's p(positive label) for this image (``Image.model_score``): an input of the
    # model-disagreement review rule, never changed by the engine.
    model_score: float | None = None


@dataclass
class GoldRec:
    image_id: int
    accepted: tuple[str, ...]
    active: bool = True
    # easy | medium | hard (``GoldItem.difficulty``): "can't tell" on a hard one is no miss.
    difficulty: str = "medium"


class QualityState:
    """Everything the quality engine decides, keyed by database ids."""

    def __init__(self, *, default_status: str = QUIZ, default_target: int = 3) -> None:
        self.default_status = default_status
        self.default_target = default_target
        self.annotators: dict[int, AnnotatorRec] = {}
        self.images: dict[int, ImageRec] = {}
        self.gold: dict[int, GoldRec] = {}
        self.judgments: dict[int, JudgmentRec] = {}
        # Model scores of images this state creates from nothing (replay); the database-backed
        # state reads them from the image rows instead.
        self.model_scores: dict[int, float] = {}
        self._counts: dict[int, AnswerCounts] = {}
        self._by_image: dict[int, dict[int, JudgmentRec]] = {}
        self._by_user: dict[int, dict[int, JudgmentRec]] = {}
        self._images_loaded: set[int] = set()
        self._users_loaded: set[int] = set()

    # --- lookups ------------------------------------------------------------------------------
    def annotator(self, user_id: int) -> AnnotatorRec:
        rec = self.annotators.get(user_id)
        if rec is None:
            rec = self._load_annotator(user_id) or AnnotatorRec(user_id, self.default_status)
            self.annotators[user_id] = rec
        return rec

    def image(self, image_id: int) -> ImageRec:
        rec = self.images.get(image_id)
        if rec is None:
            rec = self._load_image(image_id) or ImageRec(
                image_id,
                status=GOLD if image_id in self.gold else NEEDS_JUDGMENTS,
                judgment_target=self.default_target,
                model_score=self.model_scores.get(image_id),
            )
            self.images[image_id] = rec
        return rec

    def gold_of(self, image_id: int) -> GoldRec | None:
        if image_id not in self.gold:
            loaded = self._load_gold(image_id)
            if loaded is None:
                return None
            self.gold[image_id] = loaded
        return self.gold[image_id]

    def counts(self, user_id: int) -> AnswerCounts:
        counts = self._counts.get(user_id)
        if counts is None:
            counts = self._load_counts(user_id) or AnswerCounts()
            self._counts[user_id] = counts
        return counts

    def judgments_on(self, image_id: int) -> list[JudgmentRec]:
        if image_id not in self._images_loaded:
            self._remember(self._load_judgments_on(image_id))
            self._images_loaded.add(image_id)
        return sorted(self._by_image.get(image_id, {}).values(), key=lambda j: j.id)

    def judgments_by(self, user_id: int) -> list[JudgmentRec]:
        if user_id not in self._users_loaded:
            self._remember(self._load_judgments_by(user_id))
            self._users_loaded.add(user_id)
        return sorted(self._by_user.get(user_id, {}).values(), key=lambda j: j.id)

    def prefetch(self, image_ids: list[int]) -> None:
        """A hint: these images and their judgments are about to be evaluated. The
        database-backed state loads them in a few queries instead of a few per image."""

    def active_gold_count(self) -> int:
        return sum(1 for g in self.gold.values() if g.active)

    # --- changes ------------------------------------------------------------------------------
    def add_judgment(self, rec: JudgmentRec) -> None:
        if rec.id in self.judgments:
            raise ValueError(f"judgment {rec.id} was already processed")
        self._remember([rec])

    def add_gold(self, rec: GoldRec) -> None:
        self.gold[rec.image_id] = rec

    def _remember(self, recs: list[JudgmentRec]) -> None:
        for rec in recs:
            if rec.id in self.judgments:  # already known (e.g. loaded by user, now by image)
                continue
            self.judgments[rec.id] = rec
            self._by_image.setdefault(rec.image_id, {})[rec.id] = rec
            self._by_user.setdefault(rec.user_id, {})[rec.id] = rec

    # --- loader hooks (the database-backed state overrides these) -----------------------------
    def _load_annotator(self, user_id: int) -> AnnotatorRec | None:
        return None

    def _load_image(self, image_id: int) -> ImageRec | None:
        return None

    def _load_gold(self, image_id: int) -> GoldRec | None:
        return None

    def _load_counts(self, user_id: int) -> AnswerCounts | None:
        return None

    def _load_judgments_on(self, image_id: int) -> list[JudgmentRec]:
        return []

    def _load_judgments_by(self, user_id: int) -> list[JudgmentRec]:
        return []

    # --- comparison ---------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """A plain, comparable picture of everything decided (used to check replays)."""
        return {
            "annotators": {uid: _annotator_view(a) for uid, a in sorted(self.annotators.items())},
            "images": {iid: _image_view(i) for iid, i in sorted(self.images.items())},
            "judgments": {
                jid: (j.tainted, j.taint_reason, j.gold_missed, _round(j.trust_at_time))
                for jid, j in sorted(self.judgments.items())
            },
            "gold": {iid: (tuple(g.accepted), g.active) for iid, g in sorted(self.gold.items())},
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 9)


def _annotator_view(a: AnnotatorRec) -> tuple[Any, ...]:
    return (
        a.status,
        a.status_reason,
        _round(a.trust),
        a.gold_seen,
        a.gold_missed,
        a.gold_contested,
        a.gold_forgiven,
        a.judgments,
        a.speed_trips,
        {k: v for k, v in a.flags.items()},
    )


def _image_view(i: ImageRec) -> tuple[Any, ...]:
    proba = None if i.proba is None else {k: _round(v) for k, v in sorted(i.proba.items())}
    return (
        i.status,
        i.judgment_target,
        i.trusted_judgments,
        i.label,
        _round(i.confidence),
        proba,
        i.aggregation_method,
    )
