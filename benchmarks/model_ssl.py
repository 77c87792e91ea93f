"""Self-supervised pre-training on the job's own images, then the shipped recipe (issue 21).

Question: does contrastive pre-training (SimCLR: two augmented views of an image should map to
nearby embeddings, other images far) on the training pool's images, without labels, make the
triage network transfer better to new patients than training from random weights?

Same split and recipe as ``benchmarks/model_newpatient.py --schemes look_shift``: the images of
the held-out patients are never seen, not even unlabelled (a new patient's image is not in the
job). Only the initial weights of ``TriageNet.features`` differ; the head, the calibration, the
thresholds and the scoring are the shipped ones (``newpatient.run_holdout``). Pre-training runs
once (seed 0, on the whole training side) and every seed is fine-tuned from it, so the two arms
are paired seed by seed; ``model_newpatient.py --pretrain-epochs N`` measures the product's
own way (pre-training inside each run, on its training part).

    PYTHONPATH=src python benchmarks/model_ssl.py --baseline [--size 128] [--ssl-epochs 20]
        [--epochs 20] [--seeds 0 1 2] [--out /tmp/model_ssl]

Prints one row per fine-tuned seed, the pooled row and the 3-seed ensemble line, from random
weights (``--baseline``, the named baseline) and from the pre-trained ones, in one run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).parent))
from model_newpatient import _pooled, _row, _seed_ensemble
from model_oof import cached_pixels, manifest_examples

from cxrlabel.config import shared_data_dir
from cxrlabel.model import metrics, newpatient
from cxrlabel.model.net import DEFAULT_WIDTHS
from cxrlabel.model.pretrain import pretrain_features
from cxrlabel.model.train import TrainConfig, pick_device


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--ssl-epochs", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--baseline", action="store_true", help="also fine-tune from random weights")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/tmp/model_ssl"))
    return ap.parse_args()


def pretrain_once(pixels: np.ndarray, args: argparse.Namespace) -> dict:
    """The product's pre-training (``cxrlabel.model.pretrain``), seed 0, shared by every
    fine-tuned seed of the run (``train`` pre-trains once per run, with its own seed)."""
    with Progress(console=Console()) as progress:
        features, history = pretrain_features(
            pixels, DEFAULT_WIDTHS, args.ssl_epochs, 0, pick_device(), progress, budget_s=1e9
        )
    print(f"SimCLR loss {history[0]['loss']:.3f} -> {history[-1]['loss']:.3f}", flush=True)
    return features


def _fine_tune(name, examples, pixels, split, args, console, features=None) -> list:
    results = []
    for seed in args.seeds:
        cfg = TrainConfig(
            size=args.size,
            max_epochs=args.epochs,
            seed=seed,
            threads=args.threads,
            batch_size=64,
            max_minutes=600,
            pretrain_epochs=0,  # the SimCLR arm gets the run's shared ``features``
        )
        r = newpatient.run_holdout(examples, pixels, split, cfg, console, features=features)
        results.append(r)
        ev = metrics.evaluate(r.y, r.p, r.groups, r.flag_at, r.clear_below)
        print(
            _row(f"{name} seed {seed} ({r.seconds / 60:.1f} min)", f"{r.proxy_auc:.3f}", ev),
            flush=True,
        )
    print(_row(f"**{name} pooled**", "", _pooled(results)), flush=True)
    print(f"  {name}: {_seed_ensemble(results)}", flush=True)
    return results


def main() -> None:
    args = _args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    console = Console(quiet=True)
    _, examples = manifest_examples(shared_data_dir() / "kermany" / "manifest.csv")
    pixels = cached_pixels(examples, args.size, args.out / f"pixels_{args.size}.npy")
    split = newpatient.look_shift(examples, pixels)
    print(f"look_shift: {len(split.train)} training images, {len(split.scored)} scored")
    print(
        "| run | n scored | proxy AUC | new-patient AUC [95 % CI] | flag sens / spec | "
        "clear NPV / normals cleared |\n|---|---|---|---|---|---|"
    )
    if args.baseline:
        _fine_tune("random init", examples, pixels, split, args, console)
    t0 = time.monotonic()
    features = pretrain_once(pixels[split.train], args)
    print(f"pre-training {(time.monotonic() - t0) / 60:.1f} min", flush=True)
    _fine_tune("SimCLR init", examples, pixels, split, args, console, features)


if __name__ == "__main__":
    main()
