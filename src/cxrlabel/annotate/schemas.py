"""Typed inputs and outputs of the annotation engine (shared by the web app, API and simulator)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from cxrlabel.errors import EngineError
from cxrlabel.quality.records import MissedGold

__all__ = [
    "AnswerIn",
    "MissedGold",
    "SubmissionError",
    "SubmitResult",
    "TrainingFeedback",
]


class SubmissionError(EngineError):
    """A page submission that was refused; nothing was stored."""


class AnswerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_public_id: str = Field(min_length=1, max_length=32)
    answer: str = Field(min_length=1, max_length=32)
    certainty: str = Field(min_length=1, max_length=16)
    quality_flag: str | None = Field(default=None, max_length=32)


class TrainingFeedback(BaseModel):
    """One case of a training page after its submit: the answer given, the right one and the
    expert's reason (training cases are not test questions, so their answers are no secret)."""

    image_public_id: str
    answer: str
    correct_answer: str
    correct: bool
    reason: str


class SubmitResult(BaseModel):
    """What a page submission returns; stored verbatim in ``submissions.response`` so a replay
    returns exactly the same thing."""

    page_id: str
    kind: str  # training | quiz | work
    saved: int  # judgments stored (training answers on a training page)
    gold_seen: int  # test questions on this page (counted after submission only)
    missed_gold: list[MissedGold] = []
    quiz_passed: bool | None = None  # set on quiz pages
    quiz_accuracy: float | None = None
    annotator_status: str
    message: str | None = None
    training: list[TrainingFeedback] = []  # training pages only
    replayed: bool = False  # True when this is the stored answer to an earlier identical submit
