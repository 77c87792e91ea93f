"""QA data and numbers for a job: one source for ``cxrlabel report qa`` (a self-contained
HTML file), the admin dashboard page and the export datasheet.

``collect_qa`` reads the stored state once into plain arrays (``QAData``); ``qa_summary``
computes the headline numbers. The figures and the HTML report drawn from them live in
:mod:`cxrlabel.results.qa_figures`.

Agreement metrics come from :mod:`cxrlabel.aggregate.metrics` so every number here matches the
aggregation engineer's definitions.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from cxrlabel.aggregate import metrics
from cxrlabel.jobspec import JobSpec
from cxrlabel.results.reports import (
    crowd_opinions,
    crowd_view,
    final_label,
    gold_report,
    images_with_labels,
)
from cxrlabel.storage.models import (
    AnnotatorState,
    ImageStatus,
    Job,
    Judgment,
    User,
    utcnow,
)

# --- data --------------------------------------------------------------------------------------


@dataclass
class ImageRow:
    public_id: str
    status: str
    label: str | None  # final label (expert > gold > crowd)
    label_source: str
    crowd_label: str | None
    confidence: float | None
    reference_label: str | None
    expert_label: str | None
    is_gold: bool
    answers: Counter[str] = field(default_factory=Counter)  # untainted answers


@dataclass
class AnnotatorRow:
    pseudonym: str
    state: str
    trust: float
    judgments: int
    gold_graded: int  # gold answers with a grade (quiz included)
    gold_correct: int
    median_seconds: float | None

    @property
    def gold_accuracy(self) -> float | None:
        return self.gold_correct / self.gold_graded if self.gold_graded else None


@dataclass
class QAData:
    job_name: str
    labels: list[str]
    confidence_target: float
    min_judgments: int
    seconds_per_item_floor: float  # the speed trap's per-item threshold
    generated_at: datetime
    images: list[ImageRow]
    annotators: list[AnnotatorRow]
    # One entry per judgment (all of them, tainted too), in submission order.
    submitted_at: np.ndarray  # datetime64[s]
    tainted: np.ndarray  # bool
    on_gold: np.ndarray  # bool: judgment on a gold item (quiz included)
    image_index: np.ndarray  # index into ``images``
    trust_at_time: np.ndarray  # float, NaN when unknown
    gold_missed: np.ndarray  # float: 1 missed, 0 correct, NaN ungraded
    gold_rows: list[dict[str, Any]]


def collect_qa(session: Session, job: Job, spec: JobSpec, now: datetime | None = None) -> QAData:
    index_of: dict[int, int] = {}
    images: list[ImageRow] = []
    opinions = crowd_opinions(session, job, spec)
    for image, gold, review in images_with_labels(session, job):
        final = final_label(image, gold, review)
        crowd = crowd_view(image, review, opinions)
        index_of[image.id] = len(images)
        images.append(
            ImageRow(
                public_id=image.public_id,
                status=image.status,
                label=final.label,
                label_source=final.source,
                crowd_label=crowd.label,
                confidence=crowd.confidence,
                reference_label=image.reference_label,
                expert_label=review.label if review else None,
                is_gold=gold is not None,
            )
        )
    rows = session.execute(
        select(
            Judgment.image_id,
            Judgment.user_id,
            Judgment.answer,
            Judgment.tainted,
            Judgment.is_gold,
            Judgment.gold_missed,
            Judgment.trust_at_time,
            Judgment.seconds,
            Judgment.submitted_at,
        )
        .where(Judgment.job_id == job.id)
        .order_by(Judgment.submitted_at, Judgment.id)
    ).all()
    per_user: dict[int, dict[str, Any]] = {}
    for r in rows:
        if not r.tainted:
            images[index_of[r.image_id]].answers[r.answer] += 1
        u = per_user.setdefault(r.user_id, {"secs": [], "graded": 0, "correct": 0})
        u["secs"].append(float(r.seconds))
        if r.gold_missed is not None:
            u["graded"] += 1
            u["correct"] += not r.gold_missed
    annotators = []
    for state, pseudonym in session.execute(
        select(AnnotatorState, User.pseudonym)
        .join(User, User.id == AnnotatorState.user_id)
        .where(AnnotatorState.job_id == job.id)
        .order_by(AnnotatorState.id)
    ):
        u = per_user.get(state.user_id, {"secs": [], "graded": 0, "correct": 0})
        annotators.append(
            AnnotatorRow(
                pseudonym=pseudonym,
                state=state.status,
                trust=float(state.trust),
                judgments=state.judgments,
                gold_graded=u["graded"],
                gold_correct=u["correct"],
                median_seconds=float(np.median(u["secs"])) if u["secs"] else None,
            )
        )
    return QAData(
        job_name=job.name,
        labels=spec.label_values,
        confidence_target=spec.judgments.confidence_target,
        min_judgments=spec.judgments.min,
        seconds_per_item_floor=spec.pages.min_seconds_per_page / spec.pages.items_per_page,
        generated_at=now or utcnow(),
        images=images,
        annotators=annotators,
        submitted_at=np.array([_naive_utc(r.submitted_at) for r in rows], dtype="datetime64[s]"),
        tainted=np.array([bool(r.tainted) for r in rows], dtype=bool),
        on_gold=np.array([bool(r.is_gold) for r in rows], dtype=bool),
        image_index=np.array([index_of[r.image_id] for r in rows], dtype=np.int64),
        trust_at_time=np.array(
            [np.nan if r.trust_at_time is None else r.trust_at_time for r in rows], dtype=float
        ),
        gold_missed=np.array(
            [np.nan if r.gold_missed is None else float(r.gold_missed) for r in rows], dtype=float
        ),
        gold_rows=gold_report(session, job).rows,
    )


def _naive_utc(dt: datetime) -> datetime:
    return dt.astimezone(UTC).replace(tzinfo=None) if dt.tzinfo else dt


# --- numbers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    name: str
    diagram: metrics.ReliabilityDiagram
    n: int


def work_counts(qa: QAData) -> np.ndarray:
    """(work images, labels) matrix of untainted answers; the input of the agreement metrics."""
    rows = [[img.answers[lab] for lab in qa.labels] for img in qa.images if not img.is_gold]
    return np.array(rows, dtype=float).reshape(-1, len(qa.labels))


def calibrations(qa: QAData) -> list[Calibration]:
    """Reliability of three confidence-like numbers against an independent truth.

    * annotator trust at the time of a gold answer vs that answer being right (the quality
      engine's trust is meant to be a probability of being right);
    * the crowd label's confidence vs the source's reference label;
    * the crowd label's confidence vs the expert's label.
    """
    out = []
    graded = ~np.isnan(qa.gold_missed) & ~np.isnan(qa.trust_at_time)
    if graded.any():
        out.append(
            Calibration(
                "annotator trust vs gold answers",
                metrics.reliability_diagram(qa.trust_at_time[graded], 1.0 - qa.gold_missed[graded]),
                int(graded.sum()),
            )
        )
    for truth in ("reference_label", "expert_label"):
        pairs = [
            (img.confidence, img.crowd_label == getattr(img, truth))
            for img in qa.images
            if img.crowd_label
            and img.confidence is not None
            and getattr(img, truth)
            and not img.is_gold
        ]
        if pairs:
            conf, correct = np.array(pairs, dtype=float).T
            name = "crowd confidence vs " + truth.replace("_label", " label")
            out.append(Calibration(name, metrics.reliability_diagram(conf, correct), len(pairs)))
    return out


def reference_confusion(qa: QAData) -> tuple[np.ndarray, int]:
    """(reference, final label) count matrix over labelled work images with a reference."""
    k = {lab: i for i, lab in enumerate(qa.labels)}
    matrix = np.zeros((len(qa.labels), len(qa.labels)), dtype=int)
    for img in qa.images:
        if (
            not img.is_gold
            and img.label in k
            and img.reference_label in k
            and img.status in (ImageStatus.FINALISED, ImageStatus.EXPERT, ImageStatus.NEEDS_REVIEW)
        ):
            matrix[k[img.reference_label], k[img.label]] += 1
    return matrix, int(matrix.sum())


def qa_summary(qa: QAData) -> dict[str, Any]:
    """Headline numbers (JSON-friendly; NaN becomes None)."""
    counts = work_counts(qa)
    status = Counter(img.status for img in qa.images)
    confusion, n_ref = reference_confusion(qa)
    graded = ~np.isnan(qa.gold_missed)
    crowd_conf = np.array(
        [img.confidence for img in qa.images if img.confidence is not None and not img.is_gold],
        dtype=float,
    )
    expert_pairs = [
        img.crowd_label == img.expert_label
        for img in qa.images
        if img.crowd_label and img.expert_label and not img.is_gold
    ]
    calib = {c.name: {"ece": rounded(c.diagram.ece), "n": c.n} for c in calibrations(qa)}
    return {
        "job": qa.job_name,
        "generated_at": qa.generated_at.isoformat(timespec="seconds"),
        "images": len(qa.images),
        "images_by_status": {s: status.get(s, 0) for s in ImageStatus.ALL},
        "review_queue": status.get(ImageStatus.NEEDS_REVIEW, 0),
        "judgments": int(qa.tainted.size),
        "judgments_untainted_work": int((~qa.tainted & ~qa.on_gold).sum()),
        "judgments_tainted": int(qa.tainted.sum()),
        "judgments_gold": int(qa.on_gold.sum()),
        "annotators": len(qa.annotators),
        "annotators_by_state": dict(Counter(a.state for a in qa.annotators)),
        "krippendorff_alpha": rounded(metrics.krippendorff_alpha_nominal(counts))
        if counts.size
        else None,
        "fleiss_kappa": rounded(metrics.fleiss_kappa(counts)) if counts.size else None,
        "gold_accuracy": rounded(1.0 - qa.gold_missed[graded].mean()) if graded.any() else None,
        "gold_graded": int(graded.sum()),
        "mean_confidence": rounded(crowd_conf.mean()) if crowd_conf.size else None,
        "share_confident": rounded((crowd_conf >= qa.confidence_target).mean())
        if crowd_conf.size
        else None,
        "reference_agreement": rounded(np.trace(confusion) / n_ref) if n_ref else None,
        "reference_compared": n_ref,
        "expert_agreement": rounded(float(np.mean(expert_pairs))) if expert_pairs else None,
        "expert_compared": len(expert_pairs),
        "label_distribution": dict(
            Counter(img.label for img in qa.images if img.label and not img.is_gold)
        ),
        "calibration": calib,
    }


def rounded(x: float) -> float | None:
    """A headline number as stored and shown: 4 decimals, or None for NaN."""
    x = float(x)
    return None if np.isnan(x) else round(x, 4)
