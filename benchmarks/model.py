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
    python benchmarks/model.py --labels crowd:EXPORT_DIR --crowd-db sqlite:///SIM.sqlite3 \
        [--crowd-sim SIM_RESULT.json] --out /tmp/model2/crowd-bench
    python benchmarks/model.py --compare /tmp/issue9-model-bench /tmp/model2/crowd-bench

``--labels crowd:EXPORT_DIR`` trains on the labels of a ``cxrlabel export`` (e.g. of a
``cxrlabel simulate`` run; ``--crowd-db`` is that job's database, which maps the export's image
ids to source files) on exactly the same patient splits (``--split-seed``) as the expert-label
run, and scores the same proxy test with expert labels. ``--seed`` changes only the training
(weights, order, augmentation), so runs with several seeds measure the spread of one setting.

CPU budget: about 25-30 minutes on 2 cores (the training stops itself at --max-minutes).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
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
from cxrlabel.model.reference import build_reference_dataset, read_crowd_export
from cxrlabel.model.tensors import torch_logits
from cxrlabel.model.train import TORCH_WEIGHTS, TrainConfig, train

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
        onnx.probabilities(pixels[start : start + 32])
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
        rows.append(
            {
                "flag": ops.flag.chosen,
                "clear": ops.clear.chosen,
                "sens": sens,
                "spec": spec,
                "npv": metrics.negative_predictive_value(
                    y[~a], p[~a], min(ops.clear.chosen, ops.flag.chosen)
                ),
            }
        )
    return rows


def expert_labels(manifest: Path) -> dict[str, str]:
    """Source file name -> the dataset's expert label (Kermany names are unique)."""
    with manifest.open(newline="", encoding="utf-8") as fh:
        return {Path(r["file"]).name: r["label"] for r in csv.DictReader(fh)}


def export_source_names(db_url: str) -> dict[str, str]:
    """image public id -> source file name, from the job database behind an export."""
    from sqlalchemy import select

    from cxrlabel.storage.db import Database
    from cxrlabel.storage.models import Image

    db = Database(db_url)
    try:
        with db.session() as session:
            rows = session.execute(select(Image.public_id, Image.source_path)).all()
    finally:
        db.dispose()
    return {public_id: Path(source).name for public_id, source in rows}


def crowd_notes(export_dir: Path, sim_json: Path | None) -> str:
    """Markdown for the dataset README: the simulation's figures and the export's QA sections."""
    notes = []
    if sim_json:
        sim = json.loads(sim_json.read_text())
        notes.append(
            "## Crowd label quality (simulated crowd)\n\n"
            f"`cxrlabel simulate` crowd `{sim.get('crowd', '?')}`, seed {sim.get('seed', '?')}: "
            f"final labels agree with the expert labels on {sim['label_accuracy']:.1%} of the "
            f"work images; {sim['judgments_per_image']:.2f} judgments per image "
            f"({sim['trusted_judgments_per_image']:.2f} trusted); "
            f"{sim['expert_review_fraction']:.1%} of images labelled by the simulated "
            f"radiologist; {sim['annotators_removed']} of {sim['annotators_arrived']} "
            "annotators removed."
        )
    readme = export_dir / "README.md"
    if readme.is_file():
        sections = re.split(r"(?m)^(?=## )", readme.read_text(encoding="utf-8"))
        notes += [
            s.strip()
            for s in sections
            if s.startswith(("## Labeling process", "## Quality figures"))
        ]
    return "\n\n".join(notes)


def build_dataset(args: argparse.Namespace, manifest: Path, dataset: Path) -> dict:
    if args.labels == "expert":
        return build_reference_dataset(
            manifest, dataset, seed=args.split_seed, label_noise=args.label_noise, limit=args.limit
        )
    export_dir = Path(args.labels.removeprefix("crowd:"))
    if not args.labels.startswith("crowd:") or not args.crowd_db:
        sys.exit("--labels is 'expert' or 'crowd:EXPORT_DIR' (with --crowd-db)")
    crowd = read_crowd_export(export_dir, export_source_names(args.crowd_db))
    return build_reference_dataset(
        manifest,
        dataset,
        seed=args.split_seed,
        limit=args.limit,
        crowd=crowd,
        crowd_notes=crowd_notes(export_dir, args.crowd_sim),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/issue9-model-bench"))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-minutes", type=float, default=90.0, help="wall-clock guard")
    parser.add_argument(
        "--max-cpu-minutes",
        type=float,
        default=50.0,
        help="CPU budget: 50 CPU-min is 25 min on 2 dedicated cores",
    )
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument(
        "--skip-train",
        action="store_true",
        help="reuse OUT/model and OUT/dataset, redo only the measurements",
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument(
        "--split-seed",
        type=int,
        default=0,
        help="seed of the patient splits (keep it to compare runs)",
    )
    parser.add_argument(
        "--labels", default="expert", help="'expert' or 'crowd:EXPORT_DIR' (a cxrlabel export)"
    )
    parser.add_argument(
        "--crowd-db", default=None, help="database URL of the job behind a crowd export"
    )
    parser.add_argument(
        "--crowd-sim",
        type=Path,
        default=None,
        help="cxrlabel simulate's result JSON, quoted in the model card",
    )
    parser.add_argument(
        "--label-noise",
        type=float,
        default=0.0,
        help="flip rate for crowd-like soft train labels (0 = expert labels)",
    )
    parser.add_argument("--limit", type=int, default=None, help="images, for a quick dry run")
    parser.add_argument(
        "--compare",
        type=Path,
        nargs="+",
        default=None,
        help="print earlier runs' report.json side by side, then exit",
    )
    args = parser.parse_args()
    console = Console()
    if args.compare:
        compare(
            [json.loads((out / "report.json").read_text()) for out in args.compare],
            [str(out) for out in args.compare],
            console,
        )
        return
    torch.set_num_threads(args.threads)
    started, load_before = time.monotonic(), os.getloadavg()

    manifest = shared_data_dir() / "kermany" / "manifest.csv"
    dataset = args.out / "dataset"
    model_dir = args.out / "model"
    if args.skip_train:
        counts = json.loads((args.out / "counts.json").read_text())
        meta = json.loads((model_dir / "model.json").read_text())
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        counts = build_dataset(args, manifest, dataset)
        (args.out / "counts.json").write_text(json.dumps(counts))
        console.print(f"reference dataset {dataset}: {counts}")
        cfg = TrainConfig(
            size=args.size,
            threads=args.threads,
            max_minutes=args.max_minutes,
            max_cpu_minutes=args.max_cpu_minutes,
            max_epochs=args.epochs,
            seed=args.seed,
        )
        meta = train(dataset, model_dir, cfg, console).meta

    examples = [e for e in read_export(dataset) if e.split in ("validation", "test")]
    pixels = load_batch([e.path for e in examples], args.size)
    onnx = OnnxModel(model_dir, threads=args.threads)
    p, _ = onnx.probabilities(pixels)
    # Expert labels for every held-out image, also where a crowd run validated on the crowd's:
    # the transfer check and "validation vs expert" measure against the truth in both runs.
    expert = expert_labels(manifest)
    y = np.array([int(expert[e.path.name] == "PNEUMONIA") for e in examples])
    groups = np.array([e.patient_id for e in examples])
    transfer = transfer_check(y, p, groups)
    is_val = np.array([e.split == "validation" for e in examples])
    validation_vs_expert = metrics.evaluate(
        y[is_val],
        p[is_val],
        groups[is_val],
        meta["thresholds"]["flag"],
        meta["thresholds"]["clear"],
    )
    speeds = speed(model_dir, meta, pixels[:512], args.threads)
    files = find_images([dataset / "test"])[:200]
    speeds["predict_files_per_s"] = end_to_end_speed(model_dir, files, args.threads)

    report = {
        "counts": counts,
        "meta": meta,
        "speed": speeds,
        "transfer": transfer,
        "validation_vs_expert": validation_vs_expert,
        "label_noise": args.label_noise,
        "labels": args.labels,
        "command": " ".join(sys.argv),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "wall_seconds": time.monotonic() - started,
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print_report(report, console)


def print_report(report: dict, console: Console) -> None:
    meta, speeds = report["meta"], report["speed"]
    test, val = meta["metrics"]["test"], meta["metrics"]["validation"]
    tr, ops = meta["training"], meta["operating_points"]
    console.print("\n[bold]Triage model benchmark[/] (targets on held-out data: " + TARGETS + ")")
    console.print(
        f"training: {tr['seconds'] / 60:.1f} min wall, "
        f"{tr.get('cpu_seconds', float('nan')) / 60:.1f} CPU-min, "
        f"{tr['epochs_run']} epochs "
        f"(best {tr['best_epoch']}), {tr['stop_reason']}; {tr['torch_threads']} "
        f"threads; images {tr['n_images']}"
    )
    for name, m in (("validation", val), ("proxy test", test)):
        console.print(
            f"{name:>11}: AUC {m['auc']:.4f} [{m['auc_ci'][0]:.4f}, {m['auc_ci'][1]:.4f}]  "
            f"acc {m['accuracy']:.3f} [{m['accuracy_ci'][0]:.3f}, {m['accuracy_ci'][1]:.3f}]  "
            f"ECE {m['ece']:.3f}  flag sens/spec {m['flag_sensitivity']:.3f}/"
            f"{m['flag_specificity']:.3f}  clear NPV {m['clear_npv']:.3f} "
            f"(sens {m['clear_sensitivity']:.3f})  bands {m['share_flag']:.2f}/"
            f"{m['share_review']:.2f}/{m['share_clear']:.2f}"
        )
    for label, auc, acc in ANCHORS:
        console.print(f"  anchor: {label}: AUC {auc}, accuracy {acc}")
    console.print(
        f"temperature {meta['temperature']:.3f} (fit {meta['temperature_fit']:.3f}); "
        f"flag {ops['flag']['chosen']:.4f} (point {ops['flag']['point']:.4f}, "
        f"5-95 % {ops['flag']['q05']:.4f}-{ops['flag']['q95']:.4f}); clear "
        f"{ops['clear']['chosen']:.4f} (point {ops['clear']['point']:.4f}, "
        f"5-95 % {ops['clear']['q05']:.4f}-{ops['clear']['q95']:.4f})"
    )
    t = report["transfer"]
    for key in ("flag", "clear", "sens", "spec", "npv"):
        values = np.array([r[key] for r in t], dtype=float)
        console.print(
            f"transfer over {len(t)} half-splits: {key} min {np.nanmin(values):.4f} "
            f"median {np.nanmedian(values):.4f} max {np.nanmax(values):.4f}"
        )
    console.print(
        f"CPU inference ({tr['torch_threads']} threads, batch 32, {meta['input_size']}"
        f" px): PyTorch {speeds['torch_images_per_s']:.0f} img/s, ONNX Runtime "
        f"{speeds['onnx_images_per_s']:.0f} img/s; predict end-to-end "
        f"{speeds['predict_files_per_s']:.0f} files/s; ONNX parity "
        f"{meta['onnx_parity_max_abs_diff']:.1e}"
    )


COMPARE_ROWS = [
    ("AUC [95 % CI]", lambda m: f"{m['auc']:.4f} [{m['auc_ci'][0]:.4f}, {m['auc_ci'][1]:.4f}]"),
    (
        "accuracy at p = 0.5 [95 % CI]",
        lambda m: f"{m['accuracy']:.3f} [{m['accuracy_ci'][0]:.3f}, {m['accuracy_ci'][1]:.3f}]",
    ),
    ("ECE (15 bins)", lambda m: f"{m['ece']:.3f}"),
    (
        "flag: sensitivity / specificity",
        lambda m: f"{m['flag_sensitivity']:.3f} / {m['flag_specificity']:.3f}",
    ),
    (
        "clear: NPV / pneumonia kept out of clear",
        lambda m: f"{m['clear_npv']:.3f} / {m['clear_sensitivity']:.3f}",
    ),
    (
        "share flag / review / clear",
        lambda m: f"{m['share_flag']:.2f} / {m['share_review']:.2f} / {m['share_clear']:.2f}",
    ),
    (
        "normal in flag; pneumonia in clear",
        lambda m: (
            f"{m['normal_in_flag']} of {m['n'] - m['n_pneumonia']}; "
            f"{m['pneumonia_in_clear']} of {m['n_pneumonia']}"
        ),
    ),
]


def compare(reports: list[dict], names: list[str], console: Console) -> None:
    """A Markdown table of the proxy-test figures of several runs (same splits assumed)."""
    heads = [
        f"{r.get('labels', 'expert')} seed {r['meta']['training']['config']['seed']}"
        for r in reports
    ]
    console.print("runs: " + "; ".join(f"{h} = {n}" for h, n in zip(heads, names, strict=True)))
    lines = ["| proxy test | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    lines += [
        f"| {label} | " + " | ".join(fn(r["meta"]["metrics"]["test"]) for r in reports) + " |"
        for label, fn in COMPARE_ROWS
    ]
    extra = [
        (
            "temperature (fit)",
            lambda r: f"{r['meta']['temperature']:.3f} ({r['meta']['temperature_fit']:.3f})",
        ),
        (
            "flag threshold stored (point)",
            lambda r: (
                f"{r['meta']['thresholds']['flag']:.4f} "
                f"({r['meta']['operating_points']['flag']['point']:.4f})"
            ),
        ),
        (
            "clear threshold stored (point)",
            lambda r: (
                f"{r['meta']['thresholds']['clear']:.4f} "
                f"({r['meta']['operating_points']['clear']['point']:.4f})"
            ),
        ),
        (
            "validation AUC (its own labels)",
            lambda r: f"{r['meta']['metrics']['validation']['auc']:.4f}",
        ),
        (
            "validation AUC / flag sens, spec vs expert labels",
            lambda r: (
                "n/a"
                if "validation_vs_expert" not in r
                else f"{r['validation_vs_expert']['auc']:.4f} / "
                f"{r['validation_vs_expert']['flag_sensitivity']:.3f}, "
                f"{r['validation_vs_expert']['flag_specificity']:.3f}"
            ),
        ),
        (
            "epochs (best)",
            lambda r: (
                f"{r['meta']['training']['epochs_run']} ({r['meta']['training']['best_epoch']})"
            ),
        ),
        ("train images", lambda r: str(r["meta"]["training"]["n_images"]["train"])),
        (
            "training wall / CPU min",
            lambda r: (
                f"{r['meta']['training']['seconds'] / 60:.1f} / "
                f"{r['meta']['training'].get('cpu_seconds', float('nan')) / 60:.1f}"
            ),
        ),
    ]
    lines += [f"| {label} | " + " | ".join(fn(r) for r in reports) + " |" for label, fn in extra]
    console.print("\n".join(lines), markup=False, soft_wrap=True)


if __name__ == "__main__":
    main()
