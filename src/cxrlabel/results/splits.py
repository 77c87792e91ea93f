"""Patient-aware, label-stratified train/validation/test splits.

Why patient-aware: several X-rays of the same child are nearly the same picture; if one lands in
train and another in test the test score measures memory, not skill. So the unit of assignment
is the *patient group* (all images of one patient), never the image.

Why stratified at group level: a random group split of a small or skewed dataset can leave a
split with far too few NORMAL images. Each split has a target per label (``ratio * label
total``); groups are assigned greedily, one at a time, to the split that lags furthest behind
its target for the group's labels (the "desire" rule of iterative stratification, Sechidis et
al. 2011). Largest groups go first, while every split is still empty, so a big family cannot
overshoot a small split late. This keeps split sizes and label ratios close to target without
an exact (NP-hard) optimisation.

Pure code: no database, no files.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

SPLIT_NAMES: tuple[str, ...] = ("train", "validation", "test")
DEFAULT_RATIOS: tuple[float, float, float] = (0.8, 0.1, 0.1)


class SplitError(ValueError):
    """Bad split parameters, phrased for the user."""


def parse_ratios(text: str) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` -> (0.8, 0.1, 0.1); three non-negative numbers summing to 1."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3:
        raise SplitError(f"--ratios needs three numbers train,validation,test; got {text!r}")
    try:
        ratios = tuple(float(p) for p in parts)
    except ValueError:
        raise SplitError(f"--ratios must be numbers like 0.8,0.1,0.1; got {text!r}") from None
    return check_ratios(ratios)


def check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    if len(ratios) != 3:
        raise SplitError(f"ratios need three numbers (train, validation, test); got {ratios}")
    if any(r < 0 or r != r for r in ratios):
        raise SplitError(f"ratios must be non-negative; got {tuple(ratios)}")
    if abs(sum(ratios) - 1.0) > 1e-6:
        raise SplitError(f"ratios must sum to 1; got {tuple(ratios)} (sum {sum(ratios):g})")
    if ratios[0] <= 0:
        raise SplitError("the train ratio must be greater than 0")
    return (float(ratios[0]), float(ratios[1]), float(ratios[2]))


@dataclass(frozen=True)
class SplitResult:
    """``split_of_group[group] -> split name``; the image-level mapping is the caller's."""

    split_of_group: dict[Hashable, str]
    counts: dict[str, Counter[str]]  # split -> label -> images

    def sizes(self) -> dict[str, int]:
        return {name: sum(c.values()) for name, c in self.counts.items()}


def assign_splits(
    group_labels: Mapping[Hashable, Sequence[str]],
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = 0,
) -> SplitResult:
    """Assign every group (patient) to one split.

    ``group_labels`` maps a group key to the labels of its images. Deterministic for a given
    seed and input; the seed only breaks ties and orders groups of equal size.
    """
    ratios = check_ratios(ratios)
    totals: Counter[str] = Counter()
    for labels in group_labels.values():
        totals.update(labels)
    labels_sorted = sorted(totals)
    targets = {
        s: {lab: r * totals[lab] for lab in labels_sorted}
        for s, r in zip(SPLIT_NAMES, ratios, strict=True)
    }
    counts: dict[str, Counter[str]] = {s: Counter() for s in SPLIT_NAMES}

    rng = random.Random(seed)
    # Sort keys by their string form first so the input order (dict order) does not matter.
    keys = sorted(group_labels, key=str)
    rng.shuffle(keys)
    keys.sort(key=lambda k: len(group_labels[k]), reverse=True)  # stable: shuffle breaks ties

    split_of_group: dict[Hashable, str] = {}
    for key in keys:
        group = Counter(group_labels[key])
        best = _best_split(group, counts, targets, ratios, rng)
        counts[best].update(group)
        split_of_group[key] = best
    return SplitResult(split_of_group, counts)


def _best_split(
    group: Counter[str],
    counts: dict[str, Counter[str]],
    targets: dict[str, dict[str, float]],
    ratios: tuple[float, float, float],
    rng: random.Random,
) -> str:
    """The split that most "wants" this group's labels: the lowest fill (count / target) of
    those labels, weighted by how many of each the group has. Ties go to the split with the
    largest remaining deficit, then to chance (seeded)."""
    scored = []
    size = sum(group.values())
    for split, ratio in zip(SPLIT_NAMES, ratios, strict=True):
        if ratio == 0:
            continue  # an empty split stays empty
        fill = 0.0
        for lab, n in group.items():
            target = targets[split][lab]
            fill += n * (counts[split][lab] / target if target > 0 else float("inf"))
        deficit = sum(targets[split].values()) - sum(counts[split].values())
        scored.append((round(fill / size, 12), -deficit, rng.random(), split))
    return min(scored)[3]
