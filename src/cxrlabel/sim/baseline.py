"""The no-quality-control baseline: fixed k judgments per image, plain majority vote.

A plain NumPy computation, *not* the engine: the same crowd (same persona mix and the same
answer model, same truth and difficulty) answers every image exactly ``k`` times, each answer
from a different annotator picked in proportion to how much work their persona does; there is
no quiz, no gold, no removal and no expert. This is how a job without quality control would
be run, and what the adaptive engine has to beat.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrlabel.aggregate import fit
from cxrlabel.jobspec import JobSpec
from cxrlabel.sim.crowd import CrowdSpec
from cxrlabel.sim.engine import Truth, _ordered_certainties
from cxrlabel.vocab import PNEUMONIA

BASELINE_NAME = "fixed-5 majority vote, no quality control (plain computation)"


@dataclass(frozen=True)
class BaselineResult:
    k: int
    label_accuracy: float
    judgments_per_image: float
    cost: float
    pages: int
    curve: dict[int, float]  # majority-vote accuracy with the first k answers (same answers)


def simulate_answers(
    crowd: CrowdSpec,
    spec: JobSpec,
    truth: Truth,
    image_ids: list[int],
    k: int,
    seed: int = 0,
    n_annotators: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(items, workers, labels) with ``k`` answers per image from distinct annotators."""
    rng = np.random.default_rng([seed, 21])
    roster = crowd.roster(rng, n_annotators or crowd.annotators)
    volume = np.array([p.pages_per_session * p.sessions for p in roster], dtype=float)
    weights = volume / volume.sum()
    labels = spec.label_values
    certainties = _ordered_certainties(spec)
    rngs = [np.random.default_rng([seed, 22, i]) for i in range(len(roster))]
    items, workers, answers = [], [], []
    index = {label: i for i, label in enumerate(labels)}
    for item, image_id in enumerate(image_ids):
        chosen = rng.choice(len(roster), size=min(k, len(roster)), replace=False, p=weights)
        for worker in chosen:
            persona = roster[worker]
            answer = persona.answer(
                rngs[worker],
                truth.label[image_id],
                truth.difficulty.get(image_id, 0.5),
                labels,
                certainties,
                [],
                pages_done=10**6,
            )
            items.append(item)
            workers.append(int(worker))
            answers.append(index[answer.answer])
    return np.array(items), np.array(workers), np.array(answers)


def majority_accuracy_curve(
    crowd: CrowdSpec,
    spec: JobSpec,
    truth: Truth,
    image_ids: list[int],
    ks: range,
    seed: int = 0,
    reference: dict[int, str] | None = None,
) -> dict[int, float]:
    """Majority-vote accuracy with the first k answers, for each k (ties go to PNEUMONIA)."""
    k_max = max(ks)
    items, workers, answers = simulate_answers(crowd, spec, truth, image_ids, k_max, seed)
    labels = spec.label_values
    ref = reference or truth.label
    expected = np.array([labels.index(ref[i]) for i in image_ids])
    rank = _rank_within_item(items)
    tie = labels.index(PNEUMONIA) if PNEUMONIA in labels else None
    curve = {}
    for k in ks:
        keep = rank < k
        result = fit(
            items[keep],
            workers[keep],
            answers[keep],
            len(labels),
            method="mv",
            n_items=len(image_ids),
            n_workers=int(workers.max()) + 1,
            tie_break=tie,
        )
        curve[k] = float((result.labels == expected).mean())
    return curve


def run_baseline(
    crowd: CrowdSpec,
    spec: JobSpec,
    truth: Truth,
    image_ids: list[int],
    k: int = 5,
    seed: int = 0,
    reference: dict[int, str] | None = None,
    k_max: int = 9,
) -> BaselineResult:
    curve = majority_accuracy_curve(
        crowd, spec, truth, image_ids, range(1, max(k, k_max) + 1), seed, reference
    )
    pages = int(np.ceil(len(image_ids) * k / spec.pages.items_per_page))
    return BaselineResult(
        k=k,
        label_accuracy=round(curve[k], 4),
        judgments_per_image=float(k),
        cost=round(pages * spec.pay.per_page, 2),
        pages=pages,
        curve=curve,
    )


def _rank_within_item(items: np.ndarray) -> np.ndarray:
    """0, 1, 2... for the answers of each item in the order they were given."""
    rank = np.zeros(len(items), dtype=int)
    seen: dict[int, int] = {}
    for i, item in enumerate(items.tolist()):
        rank[i] = seen.get(item, 0)
        seen[item] = rank[i] + 1
    return rank
