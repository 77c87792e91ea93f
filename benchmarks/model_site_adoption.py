"""Does adopting a site's own thresholds (`cxrlabel site-check --adopt-into`) hold on *fresh*
images of that site? Issue 21, on the new-patient estimate's scored images.

    PYTHONPATH=src python benchmarks/model_newpatient.py --schemes look_shift \\
        originals_to_squashed --size 128 --epochs 20 --seeds 0 1 2 --out /tmp/np21/ws
    PYTHONPATH=src python benchmarks/model_site_adoption.py --scores /tmp/np21/ws

Each scored set of ``model_newpatient.py`` (images of patients the model never saw, under a
constructed shift) plays a new hospital. Its patients are split in two at random: the "site
sample" (``--sample`` patients' worth of images, about what a radiologist reads for a site
check) chooses the thresholds by the training rule (``calibrate.choose_operating_points``, as
``site-check`` does), and the rest of the site, never seen by that choice, measures them. Next
to it, the thresholds the run chose on its own validation split (what ``train`` stores). The
baseline is in the same run: same images, same scores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cxrlabel.model import calibrate, metrics


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scores", type=Path, required=True, help="--out of model_newpatient.py")
    ap.add_argument("--sample", type=int, default=120, help="site-sample patients")
    ap.add_argument("--splits", type=int, default=20, help="random site-sample draws per run")
    ap.add_argument("--min-sensitivity", type=float, default=0.95)
    ap.add_argument("--min-npv", type=float, default=0.97)
    return ap.parse_args()


def _figures(y: np.ndarray, p: np.ndarray, flag: float, clear: float) -> tuple[float, ...]:
    sens, spec = metrics.sensitivity_specificity(y, p, flag)
    npv = metrics.negative_predictive_value(y, p, min(clear, flag))
    cleared = float((p[y == 0] < min(clear, flag)).mean())
    return sens, spec, npv, cleared


def main() -> None:
    args = _args()
    rows = []
    for path in sorted(args.scores.glob("*.npz")):
        run = np.load(path)
        y, p, groups = run["y"].astype(int), run["p"].astype(float), run["groups"]
        stored = _figures(y, p, float(run["flag_at"]), float(run["clear_below"]))
        patients = np.unique(groups)
        rng = np.random.default_rng(0)
        adopted = []
        for _ in range(args.splits):
            chosen = set(
                rng.choice(patients, size=min(args.sample, len(patients) // 2), replace=False)
            )
            in_sample = np.array([g in chosen for g in groups])
            ops = calibrate.choose_operating_points(
                y[in_sample],
                p[in_sample],
                groups[in_sample],
                args.min_sensitivity,
                args.min_npv,
                n_boot=200,
                seed=0,
            )
            fresh = ~in_sample
            adopted.append(
                (
                    int(in_sample.sum()),
                    *_figures(y[fresh], p[fresh], ops.flag.chosen, ops.clear.chosen),
                )
            )
        a = np.array(adopted)
        rows.append((path.stem, len(y), stored, a))
    print(
        "| run (scheme_seed_n) | images | stored bands: flag sens / spec, clear NPV / normals "
        "cleared | adopted on a site sample, measured on the rest: sample images; flag sens / "
        "spec; clear NPV / normals cleared (mean [5th-95th pct] over draws) |"
    )
    print("|---|---|---|---|")
    for name, n, stored, a in rows:
        print(
            f"| {name} | {n} | {stored[0]:.3f} / {stored[1]:.3f}, {stored[2]:.3f} / "
            f"{stored[3]:.3f} | {a[:, 0].mean():.0f}; {_spread(a[:, 1])} / {_spread(a[:, 2])}; "
            f"{_spread(a[:, 3])} / {_spread(a[:, 4])} |"
        )


def _spread(values: np.ndarray) -> str:
    low, high = np.nanpercentile(values, 5), np.nanpercentile(values, 95)
    return f"{np.nanmean(values):.3f} [{low:.3f}, {high:.3f}]"


if __name__ == "__main__":
    main()
