"""An internal estimate of performance on new patients (issue 21).

A validation split carved from the training folders reads AUC ~0.999 but the official Kermany
test images (new patients, all 224 x 224 squashed copies) read ~0.95: the split is drawn like the
training data and says little. Two harder schemes stand in for the kept-aside test:

- ``squashed_cv``: patient-grouped k-fold; each fold scores only the *squashed copies*
  (``upstream_resized``) of patients whose images were all left out of training, so the scored
  images look like the official test copies and their patients are new;
- ``originals_to_squashed``: train on the larger originals only, score the squashed copies of
  patients that have no original in training: a constructed acquisition shift.
- ``earliest_patients``: hold out the lowest-numbered patients of every id series
  (``IM-``, ``NORMAL2-IM-``, ``person``) and score their squashed copies. The official test
  normals are exactly such a block: the training folders' normals start at ``IM-0115`` and
  ``NORMAL2-IM-0383``, so the test holds the earlier ids, an earlier stretch of acquisitions.
- ``look_shift``: a shift of acquisition *look*. Global intensity statistics (dark and bright
  percentiles, contrast, mean) separate the classes on their own (AUC ~0.86 in the Kermany
  training folders: consolidation lowers contrast, but so do exposure and processing). Hold
  out each class's patients whose look is most like the other class's and score their squashed
  copies; a model that leans on exposure rather than on the lungs fails here, as it would on a
  hospital whose healthy films are greyer.

Every split here is a pair of index arrays (train, scored) into one list of examples. Each
model's temperature and thresholds come from a validation split carved (by patient) from its
own training part; the scored part is only looked at afterwards. Pure NumPy apart from
``run_holdout``, which trains.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from cxrlabel.model.crossfit import patient_folds
from cxrlabel.model.data import Example

SCHEMES = ("squashed_cv", "originals_to_squashed", "earliest_patients", "look_shift")


@dataclass(frozen=True)
class HoldoutSplit:
    name: str
    train: np.ndarray  # indices of training examples (validation is carved from these)
    scored: np.ndarray  # indices of scored examples: new patients only


def _is_squashed(examples: list[Example]) -> np.ndarray:
    return np.array([e.upstream_resized is True for e in examples])


def squashed_cv(examples: list[Example], n_folds: int = 3, seed: int = 0) -> list[HoldoutSplit]:
    """k patient-grouped folds; each scores the squashed copies of its own patients only."""
    if n_folds < 2:
        raise ValueError("squashed_cv needs at least 2 folds")
    groups = np.array([e.patient_id for e in examples])
    y = np.array([e.evaluation_target for e in examples])
    fold = patient_folds(groups, y, n_folds, seed)
    squashed = _is_squashed(examples)
    return [
        HoldoutSplit(
            f"squashed_cv fold {k + 1}/{n_folds}",
            train=np.flatnonzero(fold != k),
            scored=np.flatnonzero((fold == k) & squashed),
        )
        for k in range(n_folds)
    ]


def originals_to_squashed(examples: list[Example]) -> HoldoutSplit:
    """Train on originals; score squashed copies of patients with no original in training."""
    squashed = _is_squashed(examples)
    original = np.array([e.upstream_resized is False for e in examples])
    train_patients = {e.patient_id for e, o in zip(examples, original, strict=True) if o}
    new_patient = np.array([e.patient_id not in train_patients for e in examples])
    return HoldoutSplit(
        "originals_to_squashed",
        train=np.flatnonzero(original),
        scored=np.flatnonzero(squashed & new_patient),
    )


def _series_and_number(patient_id: str) -> tuple[str, int]:
    """``NORMAL2-IM-0383`` -> (``NORMAL2-IM-``, 383); an id without a number sorts last."""
    head = patient_id.rstrip("0123456789")
    tail = patient_id[len(head) :]
    return head, int(tail) if tail else 10**9


def earliest_patients(examples: list[Example], share: float = 0.2) -> HoldoutSplit:
    """Hold out the lowest-numbered ``share`` of patients of each id series; score squashed."""
    if not 0 < share < 1:
        raise ValueError("share must be between 0 and 1")
    by_series: dict[str, list[tuple[int, str]]] = {}
    for pid in {e.patient_id for e in examples}:
        series, number = _series_and_number(pid)
        by_series.setdefault(series, []).append((number, pid))
    held: set[str] = set()
    for members in by_series.values():
        members.sort()
        held.update(pid for _, pid in members[: max(1, round(share * len(members)))])
    out = np.array([e.patient_id in held for e in examples])
    return HoldoutSplit(
        f"earliest_patients {share:.0%}",
        train=np.flatnonzero(~out),
        scored=np.flatnonzero(out & _is_squashed(examples)),
    )


def global_look(pixels: np.ndarray) -> np.ndarray:
    """(N, 4) standardised global statistics per image: 5th/95th percentile, std, mean."""
    x = pixels.reshape(len(pixels), -1).astype(np.float32)
    stats = np.stack([np.percentile(x, 5, 1), np.percentile(x, 95, 1), x.std(1), x.mean(1)], 1)
    return (stats - stats.mean(0)) / np.maximum(stats.std(0), 1e-6)


def look_score(examples: list[Example], pixels: np.ndarray) -> np.ndarray:
    """Least-squares linear read of the class from the global look alone (higher = pneumonia)."""
    design = np.c_[global_look(pixels), np.ones(len(pixels))]
    y = np.array([e.evaluation_target for e in examples], dtype=np.float64) * 2 - 1
    weights = np.linalg.lstsq(design, y, rcond=None)[0]
    return design @ weights


def look_shift(examples: list[Example], pixels: np.ndarray, share: float = 0.2) -> HoldoutSplit:
    """Hold out each class's ``share`` of patients that look most like the other class."""
    if not 0 < share < 1:
        raise ValueError("share must be between 0 and 1")
    score = look_score(examples, pixels)
    groups = np.array([e.patient_id for e in examples])
    y = np.array([e.evaluation_target for e in examples])
    held: set[str] = set()
    for cls, towards_other in ((0, -1.0), (1, 1.0)):
        patients = sorted(set(groups[y == cls]))
        mean_score = {g: float(score[groups == g].mean()) for g in patients}
        ranked = sorted(patients, key=lambda g: (towards_other * mean_score[g], g))
        held.update(ranked[: round(share * len(ranked))])
    out = np.isin(groups, sorted(held))
    return HoldoutSplit(
        f"look_shift {share:.0%}",
        train=np.flatnonzero(~out),
        scored=np.flatnonzero(out & _is_squashed(examples)),
    )


def check_split(examples: list[Example], split: HoldoutSplit) -> None:
    """Raise if a patient is on both sides or a scored image is not a squashed copy."""
    train_patients = {examples[i].patient_id for i in split.train}
    shared = train_patients & {examples[i].patient_id for i in split.scored}
    if shared:
        raise AssertionError(f"{split.name}: {len(shared)} patient(s) on both sides")
    if not all(examples[i].upstream_resized is True for i in split.scored):
        raise AssertionError(f"{split.name}: a scored image is not a squashed copy")


@dataclass
class HoldoutResult:
    name: str
    seed: int
    p: np.ndarray  # calibrated p(pneumonia) of the scored images
    logits: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    temperature: float
    flag_at: float  # chosen on the carved validation split (what `train` would store)
    clear_below: float
    proxy_auc: float  # AUC on the carved validation split: the easy, drawn-like-training proxy
    epochs_run: int
    seconds: float
    # Experiment (benchmark --adapt-bn): the scored images' logits after the batch-norm
    # statistics were measured again on those images (no labels), as a site could on its own
    # films; None when not asked for.
    adapted_logits: np.ndarray | None = None


def run_holdout(
    examples: list[Example],
    pixels: np.ndarray,
    split: HoldoutSplit,
    cfg,
    console,
    tta: bool = False,
    features=None,
    adapt_bn: bool = False,
) -> HoldoutResult:
    """Train on ``split.train`` as ``cxrlabel train`` does, then score ``split.scored``;
    ``features``: pre-trained feature weights (``train.pretrain``) to start from."""
    from cxrlabel.model import calibrate, metrics
    from cxrlabel.model.tensors import predict_logits
    from cxrlabel.model.train import (
        Split,
        carve_validation,
        fit,
        pick_device,
        pretrain,
    )

    check_split(examples, split)
    started = time.monotonic()
    marked = carve_validation(
        [replace(examples[i], split="train") for i in split.train], 0.15, cfg.seed
    )
    is_val = np.array([e.split == "validation" for e in marked])
    parts = {
        "train": Split(
            [e for e, v in zip(marked, is_val, strict=True) if not v], pixels[split.train[~is_val]]
        ),
        "validation": Split(
            [e for e, v in zip(marked, is_val, strict=True) if v], pixels[split.train[is_val]]
        ),
    }
    device = pick_device()
    if features is None:  # as ``train`` does: once per run, on the training part only
        features, _ = pretrain(parts["train"].pixels, cfg, device, console)
    model, history, _ = fit(parts, cfg, device, console, started, features)
    val = parts["validation"]
    val_logits = predict_logits(model, val.pixels, device, tta)
    temperature, _ = calibrate.fit_temperature(val_logits, val.calibration_target)
    ops = calibrate.choose_operating_points(
        val.y,
        calibrate.sigmoid(val_logits / temperature),
        val.groups,
        cfg.min_sensitivity,
        cfg.min_npv,
        seed=cfg.seed,
    )
    scored = [examples[i] for i in split.scored]
    logits = predict_logits(model, pixels[split.scored], device, tta)
    return HoldoutResult(
        name=split.name,
        seed=cfg.seed,
        p=calibrate.sigmoid(logits / temperature),
        logits=logits,
        y=np.array([e.evaluation_target for e in scored]),
        groups=np.array([e.patient_id for e in scored]),
        temperature=temperature,
        flag_at=ops.flag.chosen,
        clear_below=ops.clear.chosen,
        proxy_auc=metrics.roc_auc(val.y, val_logits),
        epochs_run=len(history),
        seconds=time.monotonic() - started,
        adapted_logits=_adapted_logits(model, pixels[split.scored], device) if adapt_bn else None,
    )


def _adapted_logits(model, pixels: np.ndarray, device) -> np.ndarray:
    import copy

    from cxrlabel.model.averaging import remeasure_batch_norm
    from cxrlabel.model.tensors import torch_logits

    adapted = remeasure_batch_norm(copy.deepcopy(model), pixels, device)
    return torch_logits(adapted, pixels, device)[0]


def thresholds_across(
    results: list[HoldoutResult],
    min_sensitivity: float = 0.95,
    min_npv: float = 0.97,
) -> dict:
    """Flag/clear thresholds chosen on the pooled new-patient scores, with their spread.

    Each run's own new-patient threshold is one draw; the stored choice is the lower 5 % of
    the pooled patient bootstrap (lower is safer for both bands), as in ``calibrate``.
    """
    from cxrlabel.model import calibrate

    y = np.concatenate([r.y for r in results])
    p = np.concatenate([r.p for r in results])
    groups = np.concatenate([[f"{r.seed}:{g}" for g in r.groups] for r in results])
    ops = calibrate.choose_operating_points(y, p, groups, min_sensitivity, min_npv)
    per_run_flag = [calibrate.flag_threshold(r.y, r.p, min_sensitivity) for r in results]
    per_run_clear = [calibrate.clear_threshold(r.y, r.p, min_npv) for r in results]
    return {
        "pooled": ops.to_dict(),
        "per_run_flag": per_run_flag,
        "per_run_clear": per_run_clear,
        "validation_flag": [r.flag_at for r in results],
        "validation_clear": [r.clear_below for r in results],
    }
