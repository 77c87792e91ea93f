"""Benchmark of the triage model (issue 9) on the shared Kermany images with expert labels.

Trains once on the shared ``train`` split minus a patient-grouped validation split and a
patient-grouped **proxy test split** (whole patients whose images are all third-party 224 x 224
squashed copies, as every official test image is; the official test split is not in the shared
folder). Thresholds and temperature are fixed on validation before the proxy test is scored.

Prints AUC with a bootstrap CI, accuracy, sensitivity/specificity at both operating points,
ECE, training time and CPU inference images/s (PyTorch vs ONNX Runtime, same run), next to the
published anchors. Then a transfer check: how thresholds chosen on one patient-grouped half of
the held-out images behave on the other half, over several random splits.

    python benchmarks/model.py [--out /tmp/issue9-model-bench] [--label-noise 0.1]

CPU budget: about 25-30 minutes on 2 cores (the training stops itself at --max-minutes).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from cxrlabel.config import shared_data_dir
from cxrlabel.model import calibrate, metrics
from cxrlabel.model.data import find_images, load_batch, read_export
from cxrlabel.model.infer import OnnxModel, predict_paths
from cxrlabel.model.net import TriageNet
from cxrlabel.model.reference import build_reference_dataset
from cxrlabel.model.train import TORCH_WEIGHTS, TrainConfig, torch_logits, train

ANCHORS = [
    ("Kermany et al. 2018 (Inception-v3, ImageNet transfer; official test)", 0.968, 0.928),
    ("MedMNIST v2 PneumoniaMNIST, ResNet-50 at 224 px (official test)", 0.962, 0.884),
]
TARGETS = "AUC >= 0.98, accuracy >= 0.93, flag sensitivity >= 0.95 with specificity >= 0.80"


def speed(model_dir: Path, meta: dict, pixels: np.ndarray, threads: int) -> dict[str, float]:
    """Images per second on CPU for the network alone, batch 32, both runtimes."""
    torch.set_num_threads(threads)
    net = TriageNet(tuple(meta["widths"]))
    net.load_state_dict(torch.load(model_dir / TORCH_WEIGHTS, weights_only=True))
    onnx = OnnxModel(model_dir, threads=threads)
    torch_logits(net, pixels[:32], torch.device("cpu"), 32)  # warm-up
    onnx.probabilities(pixels[:32])
    out = {}
    t0 = time.perf_counter()
    torch_logits(net, pixels, torch.device("cpu"), 32)
    out["torch_images_per_s"] = len(pixels) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for start in range(0, len(pixels), 32):
        onnx.probabilities(pixels[start:start + 32])
    out["onnx_images_per_s"] = len(pixels) / (time.perf_counter() - t0)
    return out


def end_to_end_speed(model_dir: Path, files: list[Path], threads: int) -> float:
    """Files per second through ``predict`` (decode + squash + ONNX Runtime)."""
    model = OnnxModel(model_dir, threads=threads)
    t0 = time.perf_counter()
    predict_paths(model, files)
    return len(files) / (time.perf_counter() - t0)


def transfer_check(y, p, groups, n_splits: int = 10, seed: int = 0) -> list[dict]:
    """Thresholds from one patient-grouped half, evaluated on the other half."""
    rng = np.random.default_rng(seed)
    unique = np.unique(groups)
    rows = []
    for _ in range(n_splits):
        half = set(rng.choice(unique, size=len(unique) // 2, replace=False))
        a = np.array([g in half for g in groups])
        ops = calibrate.choose_operating_points(y[a], p[a], groups[a], n_boot=200)
        sens, spec = metrics.sensitivity_specificity(y[~a], p[~a], ops.flag.chosen)
        rows.append({"flag": ops.flag.chosen, "clear": ops.clear.chosen,
                     "sens": sens, "spec": spec,
                     "npv": metrics.negative_predictive_value(
                         y[~a], p[~a], min(ops.clear.chosen, ops.flag.chosen))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/issue9-model-bench"))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-minutes", type=float, default=90.0, help="wall-clock guard")
    parser.add_argument("--max-cpu-minutes", type=float, default=50.0,
                        help="CPU budget: 50 CPU-min is 25 min on 2 dedicated cores")
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--skip-train", action="store_true",
                        help="reuse OUT/model and OUT/dataset, redo only the measurements")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label-noise", type=float, default=0.0,
                        help="flip rate for crowd-like soft train labels (0 = expert labels)")
    parser.add_argument("--limit", type=int, default=None, help="images, for a quick dry run")
    args = parser.parse_args()
    console = Console()
    torch.set_num_threads(args.threads)

    manifest = shared_data_dir() / "kermany" / "manifest.csv"
    dataset = args.out / "dataset"
    model_dir = args.out / "model"
    if args.skip_train:
        counts = json.loads((args.out / "counts.json").read_text())
        meta = json.loads((model_dir / "model.json").read_text())
    else:
        counts = build_reference_dataset(manifest, dataset, seed=args.seed,
                                         label_noise=args.label_noise, limit=args.limit)
        (args.out / "counts.json").write_text(json.dumps(counts))
        console.print(f"reference dataset {dataset}: {counts}")
        cfg = TrainConfig(size=args.size, threads=args.threads, max_minutes=args.max_minutes,
                          max_cpu_minutes=args.max_cpu_minutes, max_epochs=args.epochs,
                          seed=args.seed)
        meta = train(dataset, model_dir, cfg, console).meta

    examples = [e for e in read_export(dataset) if e.split in ("validation", "test")]
    pixels = load_batch([e.path for e in examples], args.size)
    onnx = OnnxModel(model_dir, threads=args.threads)
    p, _ = onnx.probabilities(pixels)
    y = np.array([e.evaluation_target for e in examples])
    groups = np.array([e.patient_id for e in examples])
    transfer = transfer_check(y, p, groups)
    speeds = speed(model_dir, meta, pixels[:512], args.threads)
    files = find_images([dataset / "test"])[:200]
    speeds["predict_files_per_s"] = end_to_end_speed(model_dir, files, args.threads)

    report = {"counts": counts, "meta": meta, "speed": speeds, "transfer": transfer,
              "label_noise": args.label_noise}
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print_report(report, console)


def print_report(report: dict, console: Console) -> None:
    meta, speeds = report["meta"], report["speed"]
    test, val = meta["metrics"]["test"], meta["metrics"]["validation"]
    tr, ops = meta["training"], meta["operating_points"]
    console.print("\n[bold]Triage model benchmark[/] (targets on held-out data: " + TARGETS + ")")
    console.print(f"training: {tr['seconds'] / 60:.1f} min wall, "
                  f"{tr.get('cpu_seconds', float('nan')) / 60:.1f} CPU-min, "
                  f"{tr['epochs_run']} epochs "
                  f"(best {tr['best_epoch']}), {tr['stop_reason']}; {tr['torch_threads']} "
                  f"threads; images {tr['n_images']}")
    for name, m in (("validation", val), ("proxy test", test)):
        console.print(
            f"{name:>11}: AUC {m['auc']:.4f} [{m['auc_ci'][0]:.4f}, {m['auc_ci'][1]:.4f}]  "
            f"acc {m['accuracy']:.3f} [{m['accuracy_ci'][0]:.3f}, {m['accuracy_ci'][1]:.3f}]  "
            f"ECE {m['ece']:.3f}  flag sens/spec {m['flag_sensitivity']:.3f}/"
            f"{m['flag_specificity']:.3f}  clear NPV {m['clear_npv']:.3f} "
            f"(sens {m['clear_sensitivity']:.3f})  bands {m['share_flag']:.2f}/"
            f"{m['share_review']:.2f}/{m['share_clear']:.2f}")
    for label, auc, acc in ANCHORS:
        console.print(f"  anchor: {label}: AUC {auc}, accuracy {acc}")
    console.print(f"temperature {meta['temperature']:.3f} (fit {meta['temperature_fit']:.3f}); "
                  f"flag {ops['flag']['chosen']:.4f} (point {ops['flag']['point']:.4f}, "
                  f"5-95 % {ops['flag']['q05']:.4f}-{ops['flag']['q95']:.4f}); clear "
                  f"{ops['clear']['chosen']:.4f} (point {ops['clear']['point']:.4f}, "
                  f"5-95 % {ops['clear']['q05']:.4f}-{ops['clear']['q95']:.4f})")
    t = report["transfer"]
    for key in ("flag", "clear", "sens", "spec", "npv"):
        values = np.array([r[key] for r in t], dtype=float)
        console.print(f"transfer over {len(t)} half-splits: {key} min {np.nanmin(values):.4f} "
                      f"median {np.nanmedian(values):.4f} max {np.nanmax(values):.4f}")
    console.print(f"CPU inference ({tr['torch_threads']} threads, batch 32, {meta['input_size']}"
                  f" px): PyTorch {speeds['torch_images_per_s']:.0f} img/s, ONNX Runtime "
                  f"{speeds['onnx_images_per_s']:.0f} img/s; predict end-to-end "
                  f"{speeds['predict_files_per_s']:.0f} files/s; ONNX parity "
                  f"{meta['onnx_parity_max_abs_diff']:.1e}")


if __name__ == "__main__":
    main()
