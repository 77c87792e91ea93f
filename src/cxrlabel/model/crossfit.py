"""Out-of-fold (cross-fitted) model scores: every image scored by a model that never saw it.

Used where a model's score must be honest about images the model was trained on, e.g. the
simulator measuring model-assisted labeling on the same images the model would be trained on.
Folds keep whole patients (``personNNN`` alone; see the data README) and each class's images
spread evenly. Inside each training part, 15 % of patients are held back as the validation
split that stops training early and fits the temperature, as ``cxrlabel train`` does; the
held-out fold is scored only after that, so its scores are calibrated out of sample.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, replace

import numpy as np
from rich.console import Console

from cxrlabel.model import calibrate, metrics
from cxrlabel.model.data import Example
from cxrlabel.model.tensors import torch_logits
from cxrlabel.model.train import (
    Split,
    TrainConfig,
    carve_validation,
    fit,
    pick_device,
)


def patient_folds(groups: np.ndarray, y: np.ndarray, n_folds: int = 2, seed: int = 0) -> np.ndarray:
    """Fold index per row: whole groups, each class's images balanced across folds.

    Groups are dealt out largest first (in a seeded order among equals) to the fold that holds
    the fewest images of that group's majority class so far.
    """
    groups, y = np.asarray(groups), np.asarray(y).astype(int)
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    names = list(members)
    np.random.default_rng(seed).shuffle(names)
    names.sort(key=lambda g: -len(members[g]))  # stable: the shuffle breaks ties
    load = np.zeros((2, n_folds), dtype=int)  # images per (class, fold)
    fold = np.empty(len(groups), dtype=int)
    for g in names:
        rows = members[g]
        cls = int(round(float(y[rows].mean())))
        k = int(np.argmin(load[cls] + load.sum(axis=0) * 1e-6))  # tie-break: smaller fold
        fold[rows] = k
        load[cls, k] += len(rows)
    return fold


@dataclass
class FoldResult:
    fold: int
    n_train: int
    n_validation: int
    n_scored: int
    temperature: float
    flag_at: float
    clear_below: float
    epochs_run: int
    best_epoch: int
    stop_reason: str
    seconds: float
    cpu_seconds: float
    history: list[dict]
    held_out: dict  # metrics.evaluate on the scored fold, with this fold's thresholds


@dataclass
class CrossFitResult:
    logits: np.ndarray  # raw logit per example, from the model that did not see it
    p: np.ndarray  # calibrated p(pneumonia), that model's own temperature
    fold: np.ndarray
    folds: list[FoldResult]


def cross_fit(
    examples: list[Example],
    pixels: np.ndarray,
    cfg: TrainConfig,
    n_folds: int = 2,
    console: Console | None = None,
    fold_seed: int = 0,
) -> CrossFitResult:
    """Train one model per fold on the other folds; score the fold it did not see.

    ``examples[i]`` and ``pixels[i]`` (uint8, (N, S, S), already squashed to ``cfg.size``)
    describe the same image; ``split`` of the examples is ignored.
    """
    console = console or Console()
    y = np.array([e.evaluation_target for e in examples])
    groups = np.array([e.patient_id for e in examples])
    fold = patient_folds(groups, y, n_folds, fold_seed)
    device = pick_device()
    logits = np.full(len(examples), np.nan)
    p = np.full(len(examples), np.nan)
    results = []
    for k in range(n_folds):
        started, cpu0 = time.monotonic(), time.process_time()
        train_idx = np.flatnonzero(fold != k)
        marked = carve_validation(
            [replace(examples[i], split="train") for i in train_idx], 0.15, cfg.seed + k
        )
        is_val = np.array([e.split == "validation" for e in marked])
        splits = {
            "train": Split(
                [e for e, v in zip(marked, is_val, strict=True) if not v],
                pixels[train_idx[~is_val]],
            ),
            "validation": Split(
                [e for e, v in zip(marked, is_val, strict=True) if v], pixels[train_idx[is_val]]
            ),
        }
        console.print(
            f"fold {k + 1}/{n_folds}: train {len(splits['train'].examples)}, "
            f"validation {len(splits['validation'].examples)}, "
            f"scored {int((fold == k).sum())}"
        )
        model, history, stop = fit(splits, cfg, device, console, started)
        val = splits["validation"]
        val_logits, _ = torch_logits(model, val.pixels, device)
        temperature, _ = calibrate.fit_temperature(val_logits, val.calibration_target)
        ops = calibrate.choose_operating_points(
            val.y,
            calibrate.sigmoid(val_logits / temperature),
            val.groups,
            cfg.min_sensitivity,
            cfg.min_npv,
            seed=cfg.seed,
        )
        # Only now, with temperature and thresholds fixed, is the held-out fold scored.
        held = np.flatnonzero(fold == k)
        held_logits, _ = torch_logits(model, pixels[held], device)
        logits[held] = held_logits
        p[held] = calibrate.sigmoid(held_logits / temperature)
        results.append(
            FoldResult(
                fold=k,
                n_train=len(splits["train"].examples),
                n_validation=len(val.examples),
                n_scored=len(held),
                temperature=temperature,
                flag_at=ops.flag.chosen,
                clear_below=ops.clear.chosen,
                epochs_run=len(history),
                best_epoch=int(np.argmin([h["val_loss"] for h in history])) + 1,
                stop_reason=stop,
                seconds=time.monotonic() - started,
                cpu_seconds=time.process_time() - cpu0,
                history=history,
                held_out=metrics.evaluate(
                    y[held], p[held], groups[held], ops.flag.chosen, ops.clear.chosen
                ),
            )
        )
        console.print(
            f"fold {k + 1}: held-out AUC {results[-1].held_out['auc']:.4f}, "
            f"T {temperature:.3f}, {results[-1].seconds / 60:.1f} min"
        )
    return CrossFitResult(logits=logits, p=p, fold=fold, folds=results)
