"""Internal new-patient estimate of the triage model (issue 21), next to the easy proxy.

Schemes (see ``cxrlabel.model.newpatient``): ``squashed_cv`` (patient-grouped k-fold scoring
only the 224 x 224 squashed copies of held-out patients), ``originals_to_squashed`` (train
on originals, score squashed copies of other patients), ``earliest_patients`` (hold out the
lowest-numbered patients of each id series) and ``look_shift`` (hold out each class's patients
whose global look resembles the other class). Expert (manifest) labels, the shared
Kermany train + val images; the official test split is not on this machine.

    nice -n 10 python benchmarks/model_newpatient.py [--size 128] [--epochs 20] [--folds 3]
        [--seeds 0] [--patients 0.3] [--augment default|strong] [--tta] [--threads 2]
        [--out /tmp/model_newpatient]

Prints one row per run and a pooled row per scheme: proxy AUC (carved validation, drawn like
training), new-patient AUC with a patient-bootstrap 95 % CI, flag sensitivity/specificity and
clear NPV / share of normals cleared at the thresholds each run chose on its own validation
split, then the thresholds chosen on the pooled new-patient scores with their spread.
Writes ``report.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from model_oof import cached_pixels, manifest_examples

from cxrlabel.config import shared_data_dir
from cxrlabel.model import metrics, newpatient
from cxrlabel.model.augment import AugmentConfig
from cxrlabel.model.net import DEFAULT_WIDTHS
from cxrlabel.model.train import TrainConfig


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # Defaults = the shipped recipe (`cxrlabel train`), so a bare run measures what ships;
    # exploration passes smaller values (e.g. --size 96 --epochs 3).
    ap.add_argument("--size", type=int, default=TrainConfig().size)
    ap.add_argument("--epochs", type=int, default=TrainConfig().max_epochs)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument(
        "--patience",
        type=int,
        default=0,
        help="early stopping as `train --patience` (0 = the whole schedule, today's default; "
        "4 = the rule before session 6)",
    )
    ap.add_argument(
        "--widths", type=int, nargs=4, default=list(DEFAULT_WIDTHS), help="network widths"
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--patients", type=float, default=1.0, help="share of patients used")
    ap.add_argument("--augment", choices=("default", "strong"), default="default")
    ap.add_argument("--tta", action="store_true")
    ap.add_argument(
        "--pretrain-epochs",
        type=int,
        default=TrainConfig().pretrain_epochs,
        help="SimCLR pre-training epochs before each run (train --pretrain-epochs)",
    )
    ap.add_argument(
        "--average-last",
        type=float,
        default=TrainConfig().average_last,
        help="share of the schedule whose weights are averaged (train --average-last; 0 = off)",
    )
    ap.add_argument(
        "--weight-decay", type=float, default=TrainConfig().weight_decay, help="AdamW decay"
    )
    ap.add_argument(
        "--adapt-bn",
        action="store_true",
        help="also score each run after re-measuring its batch-norm statistics on the scored "
        "images (no labels; test-time adaptation experiment)",
    )
    ap.add_argument(
        "--crop",
        type=float,
        default=1.0,
        help="experiment: keep the central share of each image's side (e.g. 0.85: borders, "
        "burnt-in markers and labels cut away), resized back to --size; every image",
    )
    ap.add_argument(
        "--balance", action="store_true", help="weigh the two classes equally in the loss"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--schemes", nargs="+", default=list(newpatient.SCHEMES), choices=newpatient.SCHEMES
    )
    ap.add_argument("--out", type=Path, default=Path("/tmp/model_newpatient"))
    ap.add_argument(
        "--write-estimate",
        type=Path,
        default=None,
        help="also write the summary the model card quotes (e.g. "
        "src/cxrlabel/model/newpatient_estimate.json)",
    )
    ap.add_argument(
        "--add-to-estimate",
        action="store_true",
        help="add this run's schemes to the existing --write-estimate file (same recipe)",
    )
    return ap.parse_args()


def _central_crop(pixels: np.ndarray, share: float) -> np.ndarray:
    """The central ``share`` of every (S, S) image, resized back to S x S (antialiased)."""
    side = pixels.shape[-1]
    cut = round(side * (1.0 - share) / 2)
    inner = torch.from_numpy(pixels[:, cut : side - cut, cut : side - cut]).float()[:, None]
    out = torch.nn.functional.interpolate(
        inner, size=(side, side), mode="bilinear", antialias=True, align_corners=False
    )
    return out[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def _subset(examples, share: float, seed: int = 0) -> np.ndarray:
    patients = sorted({e.patient_id for e in examples})
    keep = set(
        np.random.default_rng(seed).choice(
            patients, size=max(2, round(len(patients) * share)), replace=False
        )
    )
    return np.array([i for i, e in enumerate(examples) if e.patient_id in keep])


def _fmt_ci(ev: dict) -> str:
    return f"{ev['auc']:.3f} [{ev['auc_ci'][0]:.3f}, {ev['auc_ci'][1]:.3f}]"


def _ci(pair) -> str:
    return f"[{pair[0]:.3f}, {pair[1]:.3f}]"


def _row(name: str, proxy: str, ev: dict) -> str:
    return (
        f"| {name} | {ev['n']} | {proxy} | {_fmt_ci(ev)} | {ev['flag_sensitivity']:.3f} / "
        f"{ev['flag_specificity']:.3f} | {ev['clear_npv']:.3f} / "
        f"{ev['clear_specificity']:.3f} |"
    )


def main() -> None:
    args = _args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    console = Console(quiet=True)
    manifest = shared_data_dir() / "kermany" / "manifest.csv"
    _, examples = manifest_examples(manifest)
    t0 = time.monotonic()
    pixels = cached_pixels(examples, args.size, args.out / f"pixels_{args.size}.npy")
    keep = _subset(examples, args.patients)
    examples, pixels = [examples[i] for i in keep], pixels[keep]
    # The splits are drawn from the images as decoded (look_shift reads their look), so a
    # cropped run holds out the same patients as an uncropped one: a paired comparison.
    split_pixels = pixels
    if args.crop < 1.0:
        pixels = _central_crop(pixels, args.crop)
    kept = (
        f"weights averaged over the last {args.average_last:.0%} of the schedule"
        if args.average_last
        else "best-validation-loss epoch kept"
    )
    print(
        f"{len(examples)} images, {len({e.patient_id for e in examples})} patients, "
        f"decode {time.monotonic() - t0:.0f} s, {args.size} px, {args.epochs} epochs, "
        f"augment {args.augment}, TTA {args.tta}, pre-training {args.pretrain_epochs} epochs, "
        f"{kept}, central crop {args.crop:.0%}, {args.threads} threads"
    )
    aug = AugmentConfig.strong() if args.augment == "strong" else AugmentConfig()
    header = (
        "| run | n scored | proxy AUC (carved val) | new-patient AUC [95 % CI] | "
        "flag sens / spec | clear NPV / normals cleared |\n|---|---|---|---|---|---|"
    )
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "schemes": {}}
    print(header)
    for scheme in args.schemes:
        results = []
        for seed in args.seeds:
            cfg = TrainConfig(
                size=args.size,
                max_epochs=args.epochs,
                patience=args.patience,
                widths=tuple(args.widths),
                seed=seed,
                threads=args.threads,
                batch_size=64,
                augment=aug,
                max_minutes=600,
                pretrain_epochs=args.pretrain_epochs,
                average_last=args.average_last,
                weight_decay=args.weight_decay,
                balance_classes=args.balance,
            )
            splits = _splits(scheme, examples, split_pixels, args.folds, seed)
            for split in splits:
                r = newpatient.run_holdout(
                    examples,
                    pixels,
                    split,
                    replace(cfg),
                    console,
                    tta=args.tta,
                    adapt_bn=args.adapt_bn,
                )
                results.append(r)
                np.savez(
                    args.out / f"{scheme}_{seed}_{len(results)}.npz",
                    y=r.y,
                    p=r.p,
                    groups=r.groups,
                    flag_at=r.flag_at,
                    clear_below=r.clear_below,
                )
                ev = metrics.evaluate(r.y, r.p, r.groups, r.flag_at, r.clear_below)
                print(
                    _row(
                        f"{r.name} seed {seed} ({r.epochs_run} epochs, {r.seconds / 60:.1f} min)",
                        f"{r.proxy_auc:.3f}",
                        ev,
                    ),
                    flush=True,
                )
                if r.adapted_logits is not None:
                    np.save(
                        args.out / f"{scheme}_{seed}_{len(results)}_adapted.npy", r.adapted_logits
                    )
                    print(
                        f"  batch-norm statistics re-measured on the scored images: AUC "
                        f"{metrics.roc_auc(r.y, r.adapted_logits):.4f} (as trained "
                        f"{metrics.roc_auc(r.y, r.logits):.4f})",
                        flush=True,
                    )
        same_images = len(args.seeds) > 1 and scheme != "squashed_cv"
        if args.adapt_bn:
            print(f"  {scheme}: {_adapted_summary(results, same_images)}", flush=True)
        pooled = _pooled(results)
        ensembles = None
        if same_images:  # every run scored the same images
            print(f"  {scheme}: {_seed_ensemble(results)}", flush=True)
            ensembles = _shipped_ensembles(results)
            if ensembles:
                print(
                    f"  {scheme}: {ensembles['members']}-seed ensembles (as `train` ships), "
                    f"all {ensembles['n']} drawn from these seeds: AUC median "
                    f"{ensembles['median']:.4f}, range {ensembles['min']:.4f}-"
                    f"{ensembles['max']:.4f}",
                    flush=True,
                )
        th = newpatient.thresholds_across(results)
        print(
            _row(f"**{scheme} pooled**", f"{np.mean([r.proxy_auc for r in results]):.3f}", pooled),
            flush=True,
        )
        print(
            f"  {scheme}: flag sensitivity 95 % CI {_ci(pooled['flag_sensitivity_ci'])}, "
            f"specificity {_ci(pooled['flag_specificity_ci'])}, clear NPV "
            f"{_ci(pooled['clear_npv_ci'])}",
            flush=True,
        )
        report["schemes"][scheme] = {
            "pooled": pooled,
            "shipped_ensembles": ensembles,
            "thresholds": th,
            "runs": [
                {
                    "name": r.name,
                    "seed": r.seed,
                    "proxy_auc": r.proxy_auc,
                    "auc": metrics.roc_auc(r.y, r.p),
                    "temperature": r.temperature,
                    "flag_at": r.flag_at,
                    "clear_below": r.clear_below,
                    "seconds": r.seconds,
                    "epochs": r.epochs_run,
                }
                for r in results
            ],
        }
    print()
    for scheme, rep in report["schemes"].items():
        ops = rep["thresholds"]["pooled"]
        flags = rep["thresholds"]["validation_flag"]
        print(
            f"{scheme}: flag threshold chosen per run on validation "
            f"{min(flags):.3f}-{max(flags):.3f}; on pooled new-patient scores "
            f"{ops['flag']['point']:.3f} (bootstrap 5-95 % {ops['flag']['q05']:.3f}-"
            f"{ops['flag']['q95']:.3f}); clear {ops['clear']['point']:.3f} "
            f"({ops['clear']['q05']:.3f}-{ops['clear']['q95']:.3f})"
        )
    (args.out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    if args.write_estimate:
        summary = estimate_summary(report, args)
        if args.add_to_estimate:
            summary = merged_estimate(args.write_estimate, summary)
        args.write_estimate.write_text(json.dumps(summary, indent=2, default=float) + "\n")


def _calibrated(results: list, attr: str = "logits") -> list[np.ndarray]:
    """Each run's calibrated logits (``attr``: as trained, or ``adapted_logits``)."""
    return [getattr(r, attr) / r.temperature for r in results]


def _seed_ensemble(results: list) -> str:
    """What averaging the seeds' calibrated logits would read on the same scored images (the
    shipped `train --ensemble` averages logits the same way)."""
    y = results[0].y
    logit = np.mean(_calibrated(results), axis=0)
    cut = np.quantile(logit[y == 1], 0.05)  # ranking figure: specificity at 95 % sensitivity
    return (
        f"{len(results)}-seed ensemble (mean logit) AUC {metrics.roc_auc(y, logit):.4f}, "
        f"specificity at 95 % sensitivity {float((logit[y == 0] < cut).mean()):.3f}"
    )


def _adapted_summary(results: list, same_images: bool) -> str:
    """Pooled (and, on the same images, ensemble) AUC as trained and after batch-norm
    re-measurement: the same runs, so the pair is exact."""
    y = np.concatenate([r.y for r in results])
    line = ""
    for attr, name in (("logits", "as trained"), ("adapted_logits", "adapted")):
        logits = _calibrated(results, attr)
        line += f"{name}: pooled AUC {metrics.roc_auc(y, np.concatenate(logits)):.4f}"
        if same_images:
            ensemble = metrics.roc_auc(results[0].y, np.mean(logits, axis=0))
            line += f", {len(results)}-seed ensemble {ensemble:.4f}"
        line += "; "
    return line.rstrip("; ")


def _shipped_ensembles(results: list) -> dict | None:
    """AUC of every ensemble of ``train``'s default size drawn from the runs' seeds: what a
    shipped model reads on this shift, and how much the draw of seeds moves it."""
    members = TrainConfig().ensemble
    if len(results) < members:
        return None
    y, logits = results[0].y, _calibrated(results)
    aucs = [
        metrics.roc_auc(y, np.mean([logits[i] for i in chosen], axis=0))
        for chosen in itertools.combinations(range(len(results)), members)
    ]
    return {
        "members": members,
        "n": len(aucs),
        "min": float(np.min(aucs)),
        "median": float(np.median(aucs)),
        "max": float(np.max(aucs)),
    }


RECIPE_KEYS = (
    "size",
    "epochs",
    "augment",
    "tta",
    "patience",
    "widths",
    "pretrain_epochs",
    "average_last",
)


def merged_estimate(path: Path, new: dict) -> dict:
    """The estimate at ``path`` with this run's schemes added or replaced: schemes measured by
    separate runs of the same recipe (e.g. with other seeds) in one file the card quotes."""
    old = json.loads(path.read_text())
    # Estimates from before pre-training and weight averaging existed used neither.
    old.setdefault("pretrain_epochs", 0)
    old.setdefault("average_last", 0.0)
    differs = [k for k in RECIPE_KEYS if old.get(k) != new.get(k, 0)]
    if differs:
        raise SystemExit(f"{path}: another recipe ({', '.join(differs)} differ); not merged")
    return new | {"seeds": None, "schemes": old["schemes"] | new["schemes"]}


def _splits(scheme: str, examples, pixels, folds: int, seed: int) -> list:
    if scheme == "squashed_cv":
        return newpatient.squashed_cv(examples, folds, seed)
    if scheme == "originals_to_squashed":
        return [newpatient.originals_to_squashed(examples)]
    if scheme == "earliest_patients":
        return [newpatient.earliest_patients(examples)]
    return [newpatient.look_shift(examples, pixels)]


def _pooled(results) -> dict:
    """Pooled figures with each run's own validation thresholds (band per run, then pooled)."""
    y = np.concatenate([r.y for r in results])
    p = np.concatenate([r.p for r in results])
    groups = np.concatenate([[f"{r.seed}:{g}" for g in r.groups] for r in results])
    # Map each run's scores onto its own thresholds: flag iff p >= flag_at, so shift p so that
    # one common cut (0.5) reproduces each run's bands for sensitivity/specificity/NPV.
    flag_rel = np.concatenate([np.where(r.p >= r.flag_at, 1.0, 0.0) for r in results])
    clear_rel = np.concatenate([np.where(r.p < r.clear_below, 0.0, 1.0) for r in results])
    ev = metrics.evaluate(y, p, groups, 0.5, 0.5)
    flagged, cleared = flag_rel == 1.0, clear_rel == 0.0
    ev["flag_sensitivity"] = float(flagged[y == 1].mean())
    ev["flag_specificity"] = float((~flagged[y == 0]).mean())
    ev["clear_npv"] = float((y[cleared] == 0).mean()) if cleared.any() else float("nan")
    ev["clear_specificity"] = float(cleared[y == 0].mean())
    ev["flag_sensitivity_ci"] = _rate_ci(y, flagged, groups, 1)
    ev["flag_specificity_ci"] = _rate_ci(y, ~flagged, groups, 0)
    ev["clear_npv_ci"] = list(
        metrics.bootstrap_ci(
            lambda yy, cc: float((yy[cc > 0] == 0).mean()) if (cc > 0).any() else float("nan"),
            y,
            cleared.astype(float),
            groups,
            500,
        )[1:]
    )
    return ev


def _rate_ci(y, hit, groups, cls: int) -> list[float]:
    """Patient-bootstrap 95 % interval of the share of class ``cls`` with ``hit``."""

    def share(yy, hh):
        return float(hh[yy == cls].mean()) if (yy == cls).any() else float("nan")

    return list(metrics.bootstrap_ci(share, y, hit.astype(float), groups, 500)[1:])


def estimate_summary(report: dict, args: argparse.Namespace) -> dict:
    """What the model card quotes: the recipe and its pooled new-patient figures."""
    out = {
        "measured_by": "benchmarks/model_newpatient.py",
        "size": args.size,
        "epochs": args.epochs,
        "augment": args.augment,
        "tta": args.tta,
        "patience": args.patience,
        "widths": list(args.widths),
        "pretrain_epochs": args.pretrain_epochs,
        "average_last": args.average_last,
        "seeds": args.seeds,
        "date": time.strftime("%Y-%m-%d"),
        "schemes": {},
    }
    for scheme, rep in report["schemes"].items():
        ev = rep["pooled"]
        out["schemes"][scheme] = {
            k: ev[k]
            for k in (
                "n",
                "auc",
                "auc_ci",
                "flag_sensitivity",
                "flag_sensitivity_ci",
                "flag_specificity",
                "flag_specificity_ci",
                "clear_npv",
                "clear_npv_ci",
                "clear_specificity",
            )
        }
        out["schemes"][scheme]["seeds"] = args.seeds
        # The seed spread, which the pooled bootstrap interval does not hold (card: "runs").
        out["schemes"][scheme]["run_auc"] = [r["auc"] for r in rep["runs"]]
        if rep.get("shipped_ensembles"):
            out["schemes"][scheme]["ensemble_auc"] = rep["shipped_ensembles"]
        if scheme == "squashed_cv":
            out["schemes"][scheme]["folds"] = args.folds
        out["schemes"][scheme]["proxy_auc"] = float(np.mean([r["proxy_auc"] for r in rep["runs"]]))
        out["schemes"][scheme]["flag_threshold"] = rep["thresholds"]["pooled"]["flag"]
    return out


if __name__ == "__main__":
    main()
