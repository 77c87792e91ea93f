"""Out-of-fold triage-model scores for every shared Kermany image (issue 9, for the simulator).

Patient-grouped k-fold (default 2): each image is scored by a model trained on the other
fold(s), which never saw that image's patient; the score is calibrated with that model's own
temperature, fitted on a validation split carved from its training part. Expert labels.

    python benchmarks/model_oof.py [--out /tmp/model2/oof] [--size 128] [--epochs 6]
        [--scores /tmp/handoff/oof_scores.csv]

Writes ``--scores`` (``file,p_pneumonia``; ``file`` is the manifest's ``file`` column, i.e. the
path relative to the kermany folder) and, in ``--out``, ``oof_detail.csv`` (fold, patient,
label, logit) and ``report.json``; prints the pooled and per-fold out-of-fold figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from cxrlabel.config import shared_data_dir
from cxrlabel.model import metrics
from cxrlabel.model.crossfit import cross_fit
from cxrlabel.model.data import Example, load_batch
from cxrlabel.model.train import TrainConfig


def manifest_examples(manifest: Path) -> tuple[list[str], list[Example]]:
    """(manifest ``file`` values, examples with expert labels) for the train + val images."""
    files, examples = [], []
    with manifest.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["split"] not in ("train", "val"):
                continue
            files.append(row["file"])
            examples.append(
                Example(
                    path=manifest.parent / row["file"],
                    p_pneumonia=float(row["label"] == "PNEUMONIA"),
                    split="train",
                    patient_id=row["patient_id"],
                    label=row["label"],
                    reference_label=row["label"],
                    upstream_resized=row["upstream_resized"].strip().lower() == "true",
                )
            )
    return files, examples


def cached_pixels(examples: list[Example], size: int, cache: Path) -> np.ndarray:
    if cache.is_file():
        pixels = np.load(cache)
        if len(pixels) == len(examples):
            return pixels
    pixels = load_batch([e.path for e in examples], size)
    np.save(cache, pixels)
    return pixels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/model2/oof"))
    parser.add_argument("--scores", type=Path, default=Path("/tmp/handoff/oof_scores.csv"))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-minutes-per-fold", type=float, default=30.0)
    args = parser.parse_args()
    console = Console()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    started, load_before = time.monotonic(), os.getloadavg()

    manifest = shared_data_dir() / "kermany" / "manifest.csv"
    files, examples = manifest_examples(manifest)
    pixels = cached_pixels(examples, args.size, args.out / f"pixels_{args.size}.npy")
    console.print(
        f"{len(examples)} images decoded at {args.size} px ({time.monotonic() - started:.0f} s)"
    )
    cfg = TrainConfig(
        size=args.size,
        max_epochs=args.epochs,
        threads=args.threads,
        seed=args.seed,
        max_minutes=args.max_minutes_per_fold,
    )
    result = cross_fit(examples, pixels, cfg, n_folds=args.folds, console=console)

    y = np.array([e.evaluation_target for e in examples])
    groups = np.array([e.patient_id for e in examples])
    auc = metrics.bootstrap_ci(metrics.roc_auc, y, result.p, groups)
    acc = metrics.bootstrap_ci(metrics.accuracy, y, result.p, groups)
    args.scores.parent.mkdir(parents=True, exist_ok=True)
    with args.scores.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "p_pneumonia"])
        writer.writerows((f, f"{p:.6f}") for f, p in zip(files, result.p, strict=True))
    with (args.out / "oof_detail.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "patient_id", "label", "fold", "logit", "p_pneumonia"])
        for f, e, k, z, p in zip(
            files, examples, result.fold, result.logits, result.p, strict=True
        ):
            writer.writerow([f, e.patient_id, e.label, int(k), f"{z:.6f}", f"{p:.6f}"])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report = {
        "command": "python benchmarks/model_oof.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "n": len(examples),
        "auc": auc,
        "accuracy": acc,
        "ece": metrics.expected_calibration_error(y, result.p),
        "wall_seconds": time.monotonic() - started,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "folds": [{k: v for k, v in vars(f).items()} for f in result.folds],
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    console.print(
        f"\n[bold]Out-of-fold ({args.folds}-fold, patient-grouped)[/]: "
        f"AUC {auc[0]:.4f} [{auc[1]:.4f}, {auc[2]:.4f}], accuracy {acc[0]:.3f} "
        f"[{acc[1]:.3f}, {acc[2]:.3f}], ECE {report['ece']:.3f}; "
        f"{report['wall_seconds'] / 60:.1f} min wall, "
        f"{report['cpu_seconds'] / 60:.1f} CPU-min; load {load_before} -> "
        f"{report['loadavg_after']}"
    )
    for f in result.folds:
        m = f.held_out
        console.print(
            f"  fold {f.fold}: train {f.n_train} / val {f.n_validation} / scored "
            f"{f.n_scored}; epochs {f.epochs_run} (best {f.best_epoch}); T "
            f"{f.temperature:.3f}; flag {f.flag_at:.4f} clear {f.clear_below:.4f}; "
            f"held-out AUC {m['auc']:.4f}, flag sens/spec "
            f"{m['flag_sensitivity']:.3f}/{m['flag_specificity']:.3f}, clear NPV "
            f"{m['clear_npv']:.3f}"
        )
    console.print(f"scores: {args.scores}")


if __name__ == "__main__":
    main()
