"""Rows of the quality tables as the engine's records, and records written back to rows.

Shared by the database side of the quality service: ``store`` (the hot path's Core reads and
batched writes), ``audit`` (replay's mirror and its fix) and ``views``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cxrlabel.storage.models import AnnotatorState, Image, Judgment

from .state import AnnotatorRec, ImageRec, JudgmentRec


def annotator_rec(row: AnnotatorState) -> AnnotatorRec:
    return AnnotatorRec(
        user_id=row.user_id,
        status=row.status,
        status_reason=row.status_reason,
        trust=row.trust,
        gold_seen=row.gold_seen,
        gold_missed=row.gold_missed,
        gold_contested=row.gold_contested,
        gold_forgiven=row.gold_forgiven,
        judgments=row.judgments,
        speed_trips=row.speed_trips,
        flags=dict(row.flags or {}),
        message=row.message,
        quiz_passed=row.quiz_passed_at is not None,
    )


def image_rec(row: Image) -> ImageRec:
    return ImageRec(
        image_id=row.id,
        status=row.status,
        judgment_target=row.judgment_target,
        trusted_judgments=row.trusted_judgments,
        label=row.label,
        confidence=row.confidence,
        proba=dict(row.proba) if row.proba is not None else None,
        aggregation_method=row.aggregation_method,
    )


def judgment_rec(row: Judgment) -> JudgmentRec:
    return JudgmentRec(
        id=row.id,
        image_id=row.image_id,
        user_id=row.user_id,
        page_id=row.page_id,
        answer=row.answer,
        certainty=row.certainty,
        quality_flag=row.quality_flag,
        is_gold=row.is_gold,
        is_quiz=row.is_quiz,
        gold_missed=row.gold_missed,
        trust_at_time=row.trust_at_time,
        taints=JudgmentRec.parse_taints(row.taint_reason),
    )


def set_changed(row: Any, name: str, value: Any) -> None:
    if getattr(row, name) != value:
        setattr(row, name, value)


# Columns the engine's records own, written back after each decision (one list each, shared by
# the ORM writers below, used by replay's fix, and the batched UPDATEs of the hot path).
ANNOTATOR_SCALARS = (
    "status",
    "status_reason",
    "trust",
    "gold_seen",
    "gold_missed",
    "gold_contested",
    "gold_forgiven",
    "judgments",
    "speed_trips",
    "message",
)
ANNOTATOR_COLUMNS = (*ANNOTATOR_SCALARS, "flags", "quiz_passed_at", "answer_counts")
IMAGE_COLUMNS = (
    "status",
    "judgment_target",
    "trusted_judgments",
    "label",
    "confidence",
    "proba",
    "aggregation_method",
)
JUDGMENT_COLUMNS = ("gold_missed", "trust_at_time", "tainted", "taint_reason")


def write_annotator(row: AnnotatorState, rec: AnnotatorRec, now: datetime) -> None:
    for name in ANNOTATOR_SCALARS:
        set_changed(row, name, getattr(rec, name))
    set_changed(row, "flags", dict(rec.flags))
    if rec.quiz_passed and row.quiz_passed_at is None:
        row.quiz_passed_at = now


def write_image(row: Image, rec: ImageRec) -> None:
    for name in IMAGE_COLUMNS:
        set_changed(row, name, getattr(rec, name))


def write_judgment(row: Judgment, rec: JudgmentRec) -> None:
    for name in JUDGMENT_COLUMNS:
        set_changed(row, name, getattr(rec, name))


def image_values(rec: ImageRec) -> dict[str, Any]:
    values = {name: getattr(rec, name) for name in IMAGE_COLUMNS}
    values["proba"] = dict(rec.proba) if rec.proba is not None else None
    return values


def judgment_values(rec: JudgmentRec) -> dict[str, Any]:
    return {name: getattr(rec, name) for name in JUDGMENT_COLUMNS}
