"""QA figures and the QA report file: draws the matplotlib figures of a job's ``QAData`` as
inline SVG (``qa_figures``) and puts them, with the summary cards, in one HTML file that makes
no external request (``render_qa_html``, ``render_qa_report``).

The data and the numbers come from :mod:`cxrlabel.results.qa`; this module only draws them.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless; set before anything imports pyplot

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cxrlabel.results.qa import (
    QAData,
    calibrations,
    qa_summary,
    reference_confusion,
    rounded,
)
from cxrlabel.storage.models import ImageStatus
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
        # Rounded exactly as the summary card's value (``rounded``), so the two never
        # differ by 0.1 point (rounding 0.12345 once gives 12.3 %, via 0.1235 gives 12.4 %).
        accuracy = rounded(np.trace(confusion) / n_ref)
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
