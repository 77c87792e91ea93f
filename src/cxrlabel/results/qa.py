"""QA figures and numbers for a job: one source for ``cxrlabel report qa`` (a self-contained
HTML file), the admin dashboard page and the export datasheet.

``collect_qa`` reads the stored state once into plain arrays (``QAData``); ``qa_summary``
computes the headline numbers; ``qa_figures`` draws the matplotlib figures as inline SVG;
``render_qa_html`` puts them in one HTML file that makes no external request.

Agreement metrics come from :mod:`cxrlabel.aggregate.metrics` so every number here matches the
aggregation engineer's definitions.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless; set before anything imports pyplot

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
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
from cxrlabel.templating import document_env

STATE_COLOURS = {
    "active": "#2b6cb0",
    "quiz": "#a0aec0",
    "removed": "#c53030",
    "disqualified": "#744210",
}
STATUS_COLOURS = {
    ImageStatus.NEEDS_JUDGMENTS: "#a0aec0",
    ImageStatus.FINALISED: "#2f855a",
    ImageStatus.NEEDS_REVIEW: "#dd6b20",
    ImageStatus.EXPERT: "#6b46c1",
    ImageStatus.GOLD: "#b7791f",
    ImageStatus.HELD: "#718096",
    ImageStatus.TRAINING: "#d69e2e",
}


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
    calib = {c.name: {"ece": _num(c.diagram.ece), "n": c.n} for c in calibrations(qa)}
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
        "krippendorff_alpha": _num(metrics.krippendorff_alpha_nominal(counts))
        if counts.size
        else None,
        "fleiss_kappa": _num(metrics.fleiss_kappa(counts)) if counts.size else None,
        "gold_accuracy": _num(1.0 - qa.gold_missed[graded].mean()) if graded.any() else None,
        "gold_graded": int(graded.sum()),
        "mean_confidence": _num(crowd_conf.mean()) if crowd_conf.size else None,
        "share_confident": _num((crowd_conf >= qa.confidence_target).mean())
        if crowd_conf.size
        else None,
        "reference_agreement": _num(np.trace(confusion) / n_ref) if n_ref else None,
        "reference_compared": n_ref,
        "expert_agreement": _num(float(np.mean(expert_pairs))) if expert_pairs else None,
        "expert_compared": len(expert_pairs),
        "label_distribution": dict(
            Counter(img.label for img in qa.images if img.label and not img.is_gold)
        ),
        "calibration": calib,
    }


def _num(x: float) -> float | None:
    x = float(x)
    return None if np.isnan(x) else round(x, 4)


# --- figures -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QAFigure:
    key: str
    title: str
    caption: str
    svg: str


def _figure(width: float = 7.0, height: float = 3.4) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig


def _svg(fig: Figure) -> str:
    """Inline SVG (text kept as text, no XML prolog or DOCTYPE that points at w3.org)."""
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "cxrlabel"}):
        fig.savefig(buffer, format="svg")
    text = buffer.getvalue()
    text = re.sub(r"<\?xml[^>]*\?>\s*", "", text)
    text = re.sub(r"<!DOCTYPE[^>]*>\s*", "", text)
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    return text.strip()


def _empty(ax, message: str = "No data yet") -> None:
    ax.text(
        0.5,
        0.5,
        message,
        ha="center",
        va="center",
        transform=ax.transAxes,
        fontsize=12,
        color="#718096",
    )
    ax.set_xticks([])
    ax.set_yticks([])


def fig_progress(qa: QAData) -> QAFigure:
    fig = _figure()
    ax_j, ax_i = fig.subplots(1, 2, sharex=True)
    if qa.submitted_at.size == 0:
        _empty(ax_j)
        _empty(ax_i)
    else:
        times = qa.submitted_at.astype("datetime64[s]").astype(datetime)
        work = ~qa.tainted & ~qa.on_gold
        shown = _thinned(len(times))
        ax_j.step(
            times[shown], (np.arange(1, len(times) + 1))[shown], where="post", label="all judgments"
        )
        ax_j.step(times[shown], np.cumsum(work)[shown], where="post", label="untainted work")
        ax_j.step(
            times[shown],
            np.cumsum(qa.tainted)[shown],
            where="post",
            label="tainted",
            color="#c53030",
        )
        ax_j.set_ylabel("judgments (cumulative)")
        ax_j.legend(fontsize=8)
        # When did each work image get its min-th untainted judgment?
        seen: Counter[int] = Counter()
        reached = []
        for t, idx, ok in zip(times, qa.image_index, work, strict=True):
            if ok:
                seen[idx] += 1
                if seen[idx] == qa.min_judgments:
                    reached.append(t)
        n_work = sum(
            1 for img in qa.images if not img.is_gold and img.status != ImageStatus.TRAINING
        )
        if reached:
            shown = _thinned(len(reached))
            ax_i.step(
                np.array(reached)[shown],
                np.arange(1, len(reached) + 1)[shown],
                where="post",
                color="#2f855a",
            )
        ax_i.axhline(n_work, color="#718096", ls="--", lw=1, label=f"work images ({n_work})")
        ax_i.set_ylabel(f"images with ≥ {qa.min_judgments} judgments")
        ax_i.set_ylim(0, max(n_work, 1) * 1.08)
        ax_i.legend(fontsize=8, loc="lower right")
        for ax in (ax_j, ax_i):
            _integer_y(ax)
            ax.set_xlabel("time (UTC)")
            ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    return QAFigure(
        "progress",
        "Progress over time",
        "Left: judgments received. Right: work images that have the minimum number "
        "of untainted judgments (the dashed line is all work images).",
        _svg(fig),
    )


def _thinned(n: int, most: int = 1200) -> np.ndarray:
    """Indices of at most ``most`` evenly spread points of a cumulative curve of ``n`` points,
    first and last included: a 700-pixel-wide figure cannot show more, and every point drawn
    costs matplotlib time and the SVG bytes (30,000 judgments drew a 350 kB progress figure)."""
    if n <= most:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, most).round().astype(np.int64))


def fig_labels(qa: QAData) -> QAFigure:
    fig = _figure()
    ax_s, ax_l = fig.subplots(1, 2)
    status = Counter(img.status for img in qa.images)
    names = list(ImageStatus.ALL)
    bars = ax_s.barh(
        names, [status.get(s, 0) for s in names], color=[STATUS_COLOURS[s] for s in names]
    )
    ax_s.bar_label(bars, fontsize=8, padding=2)
    ax_s.invert_yaxis()
    ax_s.set_xlabel("images")
    ax_s.set_title("images by status", fontsize=10)
    x = np.arange(len(qa.labels))
    bottom = np.zeros(len(qa.labels))
    colours = {"crowd": "#2b6cb0", "expert": "#6b46c1", "gold": "#b7791f"}
    for source, colour in colours.items():
        values = np.array(
            [
                sum(1 for img in qa.images if img.label == lab and img.label_source == source)
                for lab in qa.labels
            ]
        )
        ax_l.bar(x - 0.2, values, 0.4, bottom=bottom, color=colour, label=f"label: {source}")
        bottom += values
    reference = [
        sum(1 for img in qa.images if img.reference_label == lab and not img.is_gold)
        for lab in qa.labels
    ]
    if any(reference):
        ax_l.bar(
            x + 0.2,
            reference,
            0.4,
            color="white",
            edgecolor="#4a5568",
            hatch="//",
            label="source reference",
        )
    ax_l.set_xticks(x, qa.labels)
    ax_l.set_ylabel("images")
    ax_l.set_title("label distribution", fontsize=10)
    top = max([*bottom, *reference, 1])
    ax_l.set_ylim(0, top * 1.45)  # headroom so the legend never covers a bar
    _integer_y(ax_l)
    ax_l.legend(fontsize=7, ncol=2, loc="upper center")
    return QAFigure(
        "labels",
        "Status and label distribution",
        "Left: where every image stands (the review queue is 'needs_review'). "
        "Right: current labels by who decided them, next to the labels the source "
        "data came with (if any).",
        _svg(fig),
    )


def fig_confidence(qa: QAData) -> QAFigure:
    fig = _figure(7.0, 3.0)
    ax = fig.subplots()
    conf = np.array(
        [img.confidence for img in qa.images if img.confidence is not None and not img.is_gold],
        dtype=float,
    )
    if conf.size == 0:
        _empty(ax)
    else:
        low = min(0.5, float(conf.min()))
        ax.hist(conf, bins=np.linspace(low, 1.0, 21).tolist(), color="#2b6cb0", edgecolor="white")
        ax.axvline(
            qa.confidence_target,
            color="#c53030",
            ls="--",
            label=f"confidence target {qa.confidence_target:g}",
        )
        ax.set_xlabel("confidence of the crowd label")
        ax.set_ylabel("images")
        _integer_y(ax)
        ax.legend(fontsize=8)
    return QAFigure(
        "confidence",
        "Confidence of aggregated labels",
        "Crowd-label confidence of every aggregated work image.",
        _svg(fig),
    )


def fig_agreement(qa: QAData, summary: dict[str, Any]) -> QAFigure:
    fig = _figure(7.0, 3.0)
    ax = fig.subplots()
    values = [
        img.answers[img.label] / sum(img.answers.values())
        for img in qa.images
        if not img.is_gold and img.label and sum(img.answers.values())
    ]
    if not values:
        _empty(ax)
    else:
        ax.hist(values, bins=np.linspace(0, 1, 11).tolist(), color="#2f855a", edgecolor="white")
        ax.set_xlabel("share of untainted judgments agreeing with the image's label")
        ax.set_ylabel("images")
        _integer_y(ax)
    alpha, kappa = summary["krippendorff_alpha"], summary["fleiss_kappa"]
    ax.set_title(
        f"Krippendorff's alpha = {_fmt(alpha)}    Fleiss' kappa = {_fmt(kappa)}", fontsize=10
    )
    return QAFigure(
        "agreement",
        "Agreement between annotators",
        "Per-image agreement with the label; alpha and kappa are computed on all "
        "untainted work judgments (chance-corrected: 0 = chance, 1 = perfect).",
        _svg(fig),
    )


def fig_trust(qa: QAData) -> QAFigure:
    fig = _figure(7.0, 3.0)
    ax = fig.subplots()
    if not qa.annotators:
        _empty(ax)
    else:
        states = [s for s in STATE_COLOURS if any(a.state == s for a in qa.annotators)]
        data = [[a.trust for a in qa.annotators if a.state == s] for s in states]
        ax.hist(
            data,
            bins=np.linspace(0, 1, 21).tolist(),
            stacked=True,
            label=states,
            color=[STATE_COLOURS[s] for s in states],
            edgecolor="white",
        )
        ax.set_xlabel("trust (estimated probability of a correct answer)")
        ax.set_ylabel("annotators")
        _integer_y(ax)
        ax.legend(fontsize=8)
    return QAFigure(
        "trust",
        "Trust distribution",
        "Current trust of every annotator in the job, by state.",
        _svg(fig),
    )


def fig_speed(qa: QAData) -> QAFigure:
    fig = _figure(7.0, 3.6)
    ax = fig.subplots()
    points = [
        a for a in qa.annotators if a.gold_accuracy is not None and a.median_seconds is not None
    ]
    if not points:
        _empty(ax, "No graded gold answers yet")
    else:
        for state in STATE_COLOURS:
            group = [a for a in points if a.state == state]
            if group:
                # (``points`` holds only annotators with both numbers; ``or 0.0`` is for mypy)
                ax.scatter(
                    [max(a.median_seconds or 0.0, 0.1) for a in group],
                    [a.gold_accuracy or 0.0 for a in group],
                    s=[30 + 6 * np.sqrt(a.judgments) for a in group],
                    color=STATE_COLOURS[state],
                    alpha=0.75,
                    label=state,
                    edgecolor="white",
                )
        ax.axvline(
            qa.seconds_per_item_floor,
            color="#c53030",
            ls="--",
            lw=1,
            label=f"speed-trap floor {qa.seconds_per_item_floor:g} s/image",
        )
        ax.set_xscale("log")
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("median seconds per image (log scale)")
        ax.set_ylabel("gold accuracy")
        ax.legend(fontsize=8, loc="lower right")
    return QAFigure(
        "speed",
        "Accuracy vs speed per annotator",
        "One dot per annotator (size grows with judgments). Fast and inaccurate "
        "annotators sit bottom-left.",
        _svg(fig),
    )


def fig_gold(qa: QAData, top: int = 15) -> QAFigure:
    rows = [r for r in qa.gold_rows if r["times_answered"]]
    rows.sort(key=lambda r: (-(r["pct_missed"] or 0), -(r["pct_contested"] or 0)))
    rows = rows[:top]
    fig = _figure(7.0, max(2.6, 0.6 + 0.28 * len(rows)))
    ax = fig.subplots()
    if not rows:
        _empty(ax, "No gold answers yet")
    else:
        y = np.arange(len(rows))
        ax.barh(y - 0.2, [r["pct_missed"] for r in rows], 0.4, color="#c53030", label="% missed")
        ax.barh(
            y + 0.2, [r["pct_contested"] for r in rows], 0.4, color="#dd6b20", label="% contested"
        )
        # The whole image id (as on the admin gold and contests pages, searchable there): a
        # truncated one matched nothing an admin could look up.
        ax.set_yticks(
            y,
            [
                f"{r['image']} {'/'.join(r['accepted_answers'])} ({r['times_answered']})"
                for r in rows
            ],
            fontsize=7,
        )
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("% of answers")
        ax.legend(fontsize=8, loc="lower right")
    return QAFigure(
        "gold",
        "Gold questions most often missed or contested",
        f"Up to {top} gold items (image id, accepted answer, answers received). A gold "
        "item many "
        "people miss and contest may have a wrong or debatable answer.",
        _svg(fig),
    )


def fig_calibration(qa: QAData) -> QAFigure:
    fig = _figure(7.0, 4.2)
    ax_c, ax_r = fig.subplots(1, 2, width_ratios=[1.25, 1])
    curves = calibrations(qa)
    ax_c.plot([0, 1], [0, 1], color="#a0aec0", ls="--", lw=1, label="perfect")
    for curve, colour in zip(curves, ("#2b6cb0", "#2f855a", "#6b46c1"), strict=False):
        d = curve.diagram
        mask = d.counts > 0
        ax_c.plot(
            d.mean_confidence[mask],
            d.accuracy[mask],
            marker="o",
            color=colour,
            label=f"{curve.name} (n={curve.n}, ECE {_fmt(d.ece)})",
        )
    ax_c.set_xlim(-0.02, 1.02)
    ax_c.set_ylim(-0.02, 1.05)
    ax_c.set_xlabel("stated probability (bin mean)")
    ax_c.set_ylabel("observed accuracy")
    ax_c.set_title("reliability diagram", fontsize=10, pad=8)
    # Below the axes: the curve names are long and would hide the points.
    ax_c.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    confusion, n_ref = reference_confusion(qa)
    if n_ref == 0:
        _empty(ax_r, "No reference labels")
    else:
        ax_r.imshow(confusion, cmap="Blues")
        for (i, j), value in np.ndenumerate(confusion):
            colour = "white" if value > confusion.max() / 2 else "black"
            ax_r.text(j, i, str(value), ha="center", va="center", color=colour)
        ax_r.set_xticks(range(len(qa.labels)), qa.labels, fontsize=8)
        ax_r.set_yticks(range(len(qa.labels)), qa.labels, fontsize=8)
        ax_r.set_xlabel("label (crowd or expert)")
        ax_r.set_ylabel("source reference label")
        # Rounded exactly as the summary card's value (``_num``), so the two never differ by
        # 0.1 point (rounding 0.12345 once gives 12.3 %, via 0.1235 gives 12.4 %).
        accuracy = _num(np.trace(confusion) / n_ref)
        ax_r.set_title(f"agreement {accuracy:.1%} (n={n_ref})", fontsize=10)
    return QAFigure(
        "calibration",
        "Calibration and agreement with reference labels",
        "Left: when a probability says 80 %, about 80 % should be right (points on "
        "the diagonal). Right: labels against the labels the source data came "
        "with.",
        _svg(fig),
    )


def _integer_y(ax) -> None:
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.3f}"


def qa_figures(qa: QAData, summary: dict[str, Any] | None = None) -> list[QAFigure]:
    summary = summary or qa_summary(qa)
    return [
        fig_progress(qa),
        fig_labels(qa),
        fig_confidence(qa),
        fig_agreement(qa, summary),
        fig_trust(qa),
        fig_speed(qa),
        fig_gold(qa),
        fig_calibration(qa),
    ]


# --- HTML --------------------------------------------------------------------------------------


def summary_cards(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs for the cards at the top of the report and dashboard."""
    pct = lambda x: "n/a" if x is None else f"{x:.1%}"  # noqa: E731
    by_state = summary["annotators_by_state"]
    return [
        ("images", str(summary["images"])),
        ("finalised", str(summary["images_by_status"][ImageStatus.FINALISED])),
        ("expert-labelled", str(summary["images_by_status"][ImageStatus.EXPERT])),
        ("review queue", str(summary["review_queue"])),
        ("judgments", str(summary["judgments"])),
        ("tainted judgments", str(summary["judgments_tainted"])),
        (
            "annotators active / removed",
            f"{by_state.get('active', 0)} / {by_state.get('removed', 0)}",
        ),
        ("Krippendorff's alpha", _fmt(summary["krippendorff_alpha"])),
        ("Fleiss' kappa", _fmt(summary["fleiss_kappa"])),
        ("gold accuracy", pct(summary["gold_accuracy"])),
        ("mean confidence", _fmt(summary["mean_confidence"])),
        ("agreement with reference", pct(summary["reference_agreement"])),
    ]


def render_qa_html(qa: QAData) -> str:
    summary = qa_summary(qa)
    return render_qa_report(qa.job_name, summary, qa_figures(qa, summary))


def render_qa_report(job_name: str, summary: dict[str, Any], figures: list[QAFigure]) -> str:
    """The report file from numbers and figures already computed (the dashboard's snapshot)."""
    return document_env.get_template("results:qa_report.html").render(
        job=job_name,
        generated_at=summary["generated_at"],
        cards=summary_cards(summary),
        figures=figures,
        summary=summary,
    )
