"""Tabular reports on a job, as Figure Eight/Appen users know them: full, aggregated,
contributors and gold.

Each ``*_report`` function reads the stored state (never recomputes quality decisions) and
returns a ``Table``: an ordered list of column names plus one dict per row with plain Python
values. ``write_table`` turns a table into CSV or JSON. Column meanings are documented in
docs/results.md; the column lists here are the contract.

Annotators appear only under their pseudonym (``User.pseudonym``), never their username.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from cxrlabel.jobspec import JobSpec
from cxrlabel.quality.consensus import ConsensusParams, aggregate_one
from cxrlabel.results.sources import SourceNamer
from cxrlabel.storage.models import (
    AnnotatorState,
    Contest,
    ExpertReview,
    GoldItem,
    Image,
    ImageStatus,
    Job,
    Judgment,
    PageItem,
    User,
)

REPORT_KINDS = ("full", "aggregated", "contributors", "gold")
FORMATS = ("csv", "json")


@dataclass
class Table:
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def column(self, name: str) -> list[Any]:
        return [row[name] for row in self.rows]


# --- value helpers -----------------------------------------------------------------------------


def iso(dt: datetime | None) -> str | None:
    """ISO 8601 in UTC with a ``Z``; SQLite hands back naive datetimes, which are UTC here."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, list | tuple):
        return "|".join(str(v) for v in value)
    return str(value)


def table_to_csv(table: Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.columns)
    for row in table.rows:
        writer.writerow([_csv_value(row[c]) for c in table.columns])
    return buffer.getvalue()


def table_to_json(table: Table) -> str:
    ordered = [{c: row[c] for c in table.columns} for row in table.rows]
    return json.dumps(ordered, indent=1, ensure_ascii=False) + "\n"


def write_table(table: Table, fmt: str, path: Path) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    text = table_to_csv(table) if fmt == "csv" else table_to_json(table)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)  # never leave a half-written report under the final name


def share(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


@dataclass(frozen=True)
class _Source:
    source_path: str
    source_format: str


# --- full: one row per judgment ----------------------------------------------------------------

FULL_COLUMNS = [
    "judgment_id",
    "image",
    "annotator",
    "answer",
    "certainty",
    "quality_flag",
    "is_quiz",
    "is_gold",
    "gold_missed",
    "trust_at_time",
    "trust_now",
    "tainted",
    "taint_reason",
    "served_at",
    "submitted_at",
    "seconds",
    "source",
]


def full_report(session: Session, job: Job) -> Table:
    stmt = (
        select(
            Judgment,
            Image.public_id,
            User.pseudonym,
            AnnotatorState.trust,
            Image.source_path,
            Image.source_format,
        )
        .join(Image, Image.id == Judgment.image_id)
        .join(User, User.id == Judgment.user_id)
        .outerjoin(
            AnnotatorState,
            and_(
                AnnotatorState.user_id == Judgment.user_id, AnnotatorState.job_id == Judgment.job_id
            ),
        )
        .where(Judgment.job_id == job.id)
        .order_by(Judgment.id)
    )
    table = Table(FULL_COLUMNS)
    source_of = SourceNamer()
    for j, image_id, pseudonym, trust_now, path, fmt in session.execute(stmt):
        table.rows.append(
            {
                "judgment_id": j.id,
                "image": image_id,
                "annotator": pseudonym,
                "answer": j.answer,
                "certainty": j.certainty,
                "quality_flag": j.quality_flag,
                "is_quiz": j.is_quiz,
                "is_gold": j.is_gold,
                "gold_missed": j.gold_missed,
                "trust_at_time": j.trust_at_time,
                "trust_now": trust_now,
                "tainted": j.tainted,
                "taint_reason": j.taint_reason,
                "served_at": iso(j.served_at),
                "submitted_at": iso(j.submitted_at),
                "seconds": j.seconds,
                "source": source_of(_Source(path, fmt)),
            }
        )
    return table


# --- aggregated: one row per image -------------------------------------------------------------


def aggregated_columns(spec: JobSpec) -> list[str]:
    return [
        "image",
        "status",
        "label",
        "label_source",
        "crowd_label",
        "confidence",
        *[f"p_{v}" for v in spec.label_values],
        "method",
        "trusted_judgments",
        "judgment_target",
        "counted_judgments",
        "agreement",
        "is_gold",
        "expert_label",
        "expert_reason",
        "reference_label",
        "patient_id",
        "source",
    ]


@dataclass(frozen=True)
class FinalLabel:
    """The label an image carries in reports and exports, and where it comes from.

    Precedence: an expert review beats the crowd; a gold item's single accepted answer is its
    label; otherwise the crowd aggregate (``Image.label``) if there is one.
    """

    label: str | None
    source: str  # expert | gold | crowd | none
    accepted: tuple[str, ...] = ()  # answers counted as agreeing (gold may accept several)


def final_label(image: Image, gold: GoldItem | None, review: ExpertReview | None) -> FinalLabel:
    if review is not None:
        return FinalLabel(review.label, "expert", (review.label,))
    if gold is not None:
        accepted = tuple(str(a) for a in gold.accepted_answers)
        label = accepted[0] if len(accepted) == 1 else None
        return FinalLabel(label, "gold", accepted)
    if image.label is not None:
        return FinalLabel(image.label, "crowd", (image.label,))
    return FinalLabel(None, "none")


def untainted_answers(session: Session, job: Job) -> dict[int, Counter[str]]:
    """image id -> Counter of untainted answers (work judgments, or gold answers on gold)."""
    stmt = (
        select(Judgment.image_id, Judgment.answer, func.count())
        .where(Judgment.job_id == job.id, ~Judgment.tainted)
        .group_by(Judgment.image_id, Judgment.answer)
    )
    result: dict[int, Counter[str]] = defaultdict(Counter)
    for image_id, answer, n in session.execute(stmt):
        result[image_id][answer] = n
    return result


def images_with_labels(
    session: Session, job: Job
) -> list[tuple[Image, GoldItem | None, ExpertReview | None]]:
    stmt = (
        select(Image, GoldItem, ExpertReview)
        .outerjoin(GoldItem, GoldItem.image_id == Image.id)
        .outerjoin(ExpertReview, ExpertReview.image_id == Image.id)
        .where(Image.job_id == job.id)
        .order_by(Image.id)
    )
    return [tuple(row) for row in session.execute(stmt)]  # type: ignore[misc]


@dataclass(frozen=True)
class CrowdOpinion:
    label: str | None
    confidence: float | None


def crowd_opinions(session: Session, job: Job, spec: JobSpec) -> dict[int, CrowdOpinion]:
    """The crowd's own label of every expert-reviewed image, by image id.

    Once an expert decides, the engine stores the expert's label on the image (it is the
    final one), so the crowd's view must be recomputed to compare the two honestly: the
    same online rule the engine used (``quality.consensus.aggregate_one``: trusted judgments,
    "can't tell" not voting, weighted by the annotators' current trust).
    """
    params = ConsensusParams.from_spec(spec)
    trust = dict(
        session.execute(
            select(AnnotatorState.user_id, AnnotatorState.trust).where(
                AnnotatorState.job_id == job.id
            )
        ).all()
    )
    rows = session.execute(
        select(Judgment.image_id, Judgment.user_id, Judgment.answer)
        .join(ExpertReview, ExpertReview.image_id == Judgment.image_id)
        .where(
            Judgment.job_id == job.id,
            Judgment.tainted.is_(False),
            Judgment.is_gold.is_(False),
            Judgment.certainty != params.cant_tell,
        )
        .order_by(Judgment.id)
    )
    votes: dict[int, tuple[list[str], list[float]]] = defaultdict(lambda: ([], []))
    for image_id, user_id, answer in rows:
        if answer in params.labels:
            votes[image_id][0].append(answer)
            votes[image_id][1].append(float(trust.get(user_id, 0.0)))
    reviewed = session.scalars(
        select(ExpertReview.image_id)
        .join(Image, Image.id == ExpertReview.image_id)
        .where(Image.job_id == job.id)
    )
    opinions = {}
    for image_id in reviewed:
        answers, weights = votes.get(image_id, ([], []))
        label, confidence, _proba = aggregate_one(answers, weights, params)
        opinions[image_id] = CrowdOpinion(label, confidence)
    return opinions


def crowd_view(
    image: Image, review: ExpertReview | None, opinions: dict[int, CrowdOpinion]
) -> CrowdOpinion:
    """The crowd's label and confidence of one image (recomputed when an expert decided)."""
    if review is not None and image.id in opinions:
        return opinions[image.id]
    return CrowdOpinion(image.label, image.confidence)


def aggregated_report(session: Session, job: Job, spec: JobSpec) -> Table:
    answers = untainted_answers(session, job)
    table = Table(aggregated_columns(spec))
    opinions = crowd_opinions(session, job, spec)
    source_of = SourceNamer()
    for image, gold, review in images_with_labels(session, job):
        final = final_label(image, gold, review)
        crowd = crowd_view(image, review, opinions)
        counts = answers.get(image.id, Counter())
        counted = sum(counts.values())
        agreeing = sum(counts[a] for a in final.accepted)
        proba = image.proba or {}
        table.rows.append(
            {
                "image": image.public_id,
                "status": image.status,
                "label": final.label,
                "label_source": final.source,
                "crowd_label": crowd.label,
                "confidence": crowd.confidence,
                **{f"p_{v}": proba.get(v) for v in spec.label_values},
                "method": image.aggregation_method,
                "trusted_judgments": image.trusted_judgments,
                "judgment_target": image.judgment_target,
                "counted_judgments": counted,
                "agreement": share(agreeing, counted) if final.accepted else None,
                "is_gold": gold is not None,
                "expert_label": review.label if review else None,
                "expert_reason": review.reason if review else None,
                "reference_label": image.reference_label,
                "patient_id": image.patient_id,
                "source": source_of(image),
            }
        )
    return table


# --- contributors: one row per annotator in the job --------------------------------------------

CONTRIBUTOR_COLUMNS = [
    "annotator",
    "state",
    "state_reason",
    "trust",
    "judgments",
    "tainted_judgments",
    "gold_seen",
    "gold_missed",
    "gold_contested",
    "gold_forgiven",
    "gold_accuracy",
    "speed_trips",
    "median_seconds",
    "flags",
    "joined_at",
    "quiz_passed_at",
]


def contributors_report(session: Session, job: Job) -> Table:
    seconds: dict[int, list[float]] = defaultdict(list)
    tainted: Counter[int] = Counter()
    for user_id, secs, is_tainted in session.execute(
        select(Judgment.user_id, Judgment.seconds, Judgment.tainted).where(
            Judgment.job_id == job.id
        )
    ):
        seconds[user_id].append(float(secs))
        tainted[user_id] += bool(is_tainted)
    stmt = (
        select(AnnotatorState, User.pseudonym)
        .join(User, User.id == AnnotatorState.user_id)
        .where(AnnotatorState.job_id == job.id)
        .order_by(AnnotatorState.id)
    )
    table = Table(CONTRIBUTOR_COLUMNS)
    for state, pseudonym in session.execute(stmt):
        user_seconds = seconds.get(state.user_id, [])
        table.rows.append(
            {
                "annotator": pseudonym,
                "state": state.status,
                "state_reason": state.status_reason,
                "trust": state.trust,
                "judgments": state.judgments,
                "tainted_judgments": tainted[state.user_id],
                "gold_seen": state.gold_seen,
                "gold_missed": state.gold_missed,
                "gold_contested": state.gold_contested,
                "gold_forgiven": state.gold_forgiven,
                "gold_accuracy": share(state.gold_seen - state.gold_missed, state.gold_seen),
                "speed_trips": state.speed_trips,
                "median_seconds": statistics.median(user_seconds) if user_seconds else None,
                "flags": dict(state.flags or {}),
                "joined_at": iso(state.joined_at),
                "quiz_passed_at": iso(state.quiz_passed_at),
            }
        )
    return table


# --- gold: one row per gold item ---------------------------------------------------------------

GOLD_COLUMNS = [
    "image",
    "accepted_answers",
    "reason",
    "difficulty",
    "source",
    "active",
    "times_shown",
    "times_answered",
    "missed",
    "pct_missed",
    "contested",
    "pct_contested",
    "contests_open",
    "contests_upheld",
    "contests_changed",
    "resolution",
]


def _count_by(session: Session, key_column, *where) -> Counter[Any]:
    stmt = select(key_column, func.count()).where(*where).group_by(key_column)
    return Counter({k: n for k, n in session.execute(stmt)})


def gold_report(session: Session, job: Job) -> Table:
    gold_rows = session.execute(
        select(GoldItem, Image.public_id, Image.id)
        .join(Image, Image.id == GoldItem.image_id)
        .where(GoldItem.job_id == job.id)
        .order_by(GoldItem.id)
    ).all()
    image_ids = [image_id for _, _, image_id in gold_rows]
    shown = _count_by(session, PageItem.image_id, PageItem.image_id.in_(image_ids))
    answered = _count_by(session, Judgment.image_id, Judgment.image_id.in_(image_ids))
    missed = _count_by(
        session, Judgment.image_id, Judgment.image_id.in_(image_ids), Judgment.gold_missed.is_(True)
    )
    contests: dict[int, Counter[str]] = defaultdict(Counter)
    for gold_id, status in session.execute(
        select(Contest.gold_id, Contest.status)
        .join(GoldItem, GoldItem.id == Contest.gold_id)
        .where(GoldItem.job_id == job.id)
    ):
        contests[gold_id][status] += 1
    table = Table(GOLD_COLUMNS)
    for gold, public_id, image_id in gold_rows:
        by_status = contests.get(gold.id, Counter())
        n_contests = sum(by_status.values())
        n_answered = answered[image_id]
        table.rows.append(
            {
                "image": public_id,
                "accepted_answers": list(gold.accepted_answers),
                "reason": gold.reason,
                "difficulty": gold.difficulty,
                "source": gold.source,
                "active": gold.active,
                "times_shown": shown[image_id],
                "times_answered": n_answered,
                "missed": missed[image_id],
                "pct_missed": _pct(missed[image_id], n_answered),
                "contested": n_contests,
                "pct_contested": _pct(n_contests, n_answered),
                "contests_open": by_status["open"],
                "contests_upheld": by_status["upheld"],
                "contests_changed": by_status["changed"],
                "resolution": _resolution(by_status),
            }
        )
    return table


def _pct(numerator: int, denominator: int) -> float | None:
    return round(100.0 * numerator / denominator, 1) if denominator else None


def _resolution(by_status: Counter[str]) -> str:
    """``""`` without contests, else e.g. ``"1 open, 2 upheld"`` (only non-zero statuses)."""
    parts = [f"{by_status[s]} {s}" for s in ("open", "upheld", "changed") if by_status[s]]
    parts += [
        f"{n} {s}"
        for s, n in sorted(by_status.items())
        if s not in ("open", "upheld", "changed") and n
    ]
    return ", ".join(parts)


def build_report(kind: str, session: Session, job: Job, spec: JobSpec) -> Table:
    if kind == "full":
        return full_report(session, job)
    if kind == "aggregated":
        return aggregated_report(session, job, spec)
    if kind == "contributors":
        return contributors_report(session, job)
    if kind == "gold":
        return gold_report(session, job)
    raise ValueError(f"unknown report {kind!r}; use one of {', '.join(REPORT_KINDS)}")


def status_counts(images: Iterable[Image]) -> dict[str, int]:
    counts = Counter(image.status for image in images)
    return {status: counts.get(status, 0) for status in ImageStatus.ALL}
