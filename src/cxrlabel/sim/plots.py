"""Figures for a simulated run and a design sweep (matplotlib, written as PNG files)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt

OUT_COLOURS = {
    "active": "#2b8a3e",
    "quiz": "#868e96",
    "removed": "#e03131",
    "disqualified": "#f08c00",
}


def accuracy_vs_judgments(
    result: dict[str, Any],
    by_judgments: dict[int, tuple[int, int]],
    baseline_curve: dict[int, float] | None,
    path: Path,
) -> Path:
    """Adaptive run (overall point and per judgment count) against fixed-k majority vote."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if baseline_curve:
        ks = sorted(baseline_curve)
        ax.plot(
            ks,
            [baseline_curve[k] for k in ks],
            "o--",
            color="#868e96",
            label="fixed k judgments, majority vote, no QC",
        )
    xs = [k for k, (n, _) in by_judgments.items() if n >= 5]
    if xs:
        ax.scatter(
            xs,
            [by_judgments[k][1] / by_judgments[k][0] for k in xs],
            s=[max(12, min(300, by_judgments[k][0] / 3)) for k in xs],
            alpha=0.45,
            color="#1971c2",
            label="images with that many judgments (size = count)",
        )
    if result.get("label_accuracy") is not None:
        ax.scatter(
            [result["judgments_per_image"]],
            [result["label_accuracy"]],
            marker="*",
            s=260,
            color="#e8590c",
            zorder=5,
            label=f"adaptive job: {result['label_accuracy']:.1%} at "
            f"{result['judgments_per_image']:.2f} judgments/image",
        )
    ax.set_xlabel("crowd judgments per image")
    ax.set_ylabel("agreement with reference labels")
    ax.set_title(f"Accuracy vs judgments ({result.get('crowd', '')} crowd)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def trust_by_persona(annotators: Sequence[dict[str, Any]], path: Path) -> Path:
    """Final trust of every simulated annotator, by persona, coloured by final status."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in annotators:
        if row.get("gold_seen", 0) > 0:
            groups[row["persona"]].append(row)
    names = sorted(groups, key=lambda n: -_mean([r["trust"] for r in groups[n]]))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if names:
        ax.boxplot([[r["trust"] for r in groups[n]] for n in names], showfliers=False)
        for i, name in enumerate(names, start=1):
            rows = groups[name]
            jitter = [i + ((k * 37) % 21 - 10) / 60 for k in range(len(rows))]
            ax.scatter(
                jitter,
                [r["trust"] for r in rows],
                s=14,
                alpha=0.7,
                c=[OUT_COLOURS.get(r["status"], "#1971c2") for r in rows],
            )
        ax.set_xticks(range(1, len(names) + 1))
        ax.set_xticklabels([n.replace("_", "\n") for n in names], fontsize=8)
    for status, colour in OUT_COLOURS.items():
        ax.scatter([], [], c=colour, s=14, label=status)
    ax.set_ylabel("final trust (gold accuracy, Beta prior)")
    ax.set_title("Trust by persona")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="lower left", ncols=4)
    return _save(fig, path)


def pareto_front(
    rows: Sequence[dict[str, Any]],
    front: Sequence[dict[str, Any]],
    recommended: dict[str, Any] | None,
    path: Path,
) -> Path:
    """Accuracy against cost per image for every swept setting, per crowd."""
    fig, ax = plt.subplots(figsize=(8, 5))
    crowds = sorted({r["crowd"] for r in rows})
    markers = dict(zip(crowds, "osD^v", strict=False))
    for crowd in crowds:
        mine = [r for r in rows if r["crowd"] == crowd and r["label_accuracy"] is not None]
        ax.scatter(
            [r["cost_per_image"] for r in mine],
            [r["label_accuracy"] for r in mine],
            marker=markers[crowd],
            alpha=0.55,
            label=f"{crowd} crowd",
        )
    ordered = sorted(front, key=lambda r: r["cost_per_image"])
    if ordered:
        ax.plot(
            [r["cost_per_image"] for r in ordered],
            [r["label_accuracy"] for r in ordered],
            "-",
            color="#e8590c",
            label="Pareto front (mean over crowds)",
        )
    if recommended:
        ax.scatter(
            [recommended["cost_per_image"]],
            [recommended["label_accuracy"]],
            marker="*",
            s=300,
            color="#e8590c",
            zorder=5,
            label="recommended",
        )
    ax.set_xlabel("crowd cost per image (pay per page x pages / images)")
    ax.set_ylabel("agreement with reference labels")
    ax.set_title("Job settings: accuracy vs cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
