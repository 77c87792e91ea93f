"""Simulated crowd on the shared Kermany images: accuracy, cost and quality control of the
adaptive job, next to a no-quality-control baseline computed in the same run.

What runs:
  1. ingest every image once (real ingest pipeline) into a template SQLite database, sample
     the gold bank from reference labels, derive the cross-fitted difficulty;
  2. adaptive job, as the bundled job file sets it, driven through the real assignment,
     submission and quality engines by the `realistic` crowd (in-process, simulated clock);
  3. adaptive job with a tuned setting (``--tuned``, e.g. the design sweep's recommendation);
  4. BASELINE: fixed 5 judgments per image, plain majority vote, no quiz, no gold, no removal,
     no expert - a plain NumPy computation with the same crowd mix, answer model, truth and
     difficulty (``cxrlabel.sim.baseline``), plus its accuracy for k = 1..9.
Figures: label accuracy vs the expert (reference) labels, judgments per image, expert-review
fraction, removed-annotator precision/recall, cost, simulated hours, and where the wall time
goes (assignment vs submission+quality vs the simulator itself).

    python benchmarks/simulation.py [--limit N] [--seed 0] [--crowd realistic]
        [--tuned "2,5,0.8,1,0.65,trust"] [--json out.json] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import shutil
import tempfile
import time
from pathlib import Path

from cxrlabel.config import shared_data_dir
from cxrlabel.jobspec import JobSpec, load_job, resolve_job_path
from cxrlabel.sim.baseline import BASELINE_NAME, run_baseline
from cxrlabel.sim.crowd import CrowdSpec, load_crowd
from cxrlabel.sim.prepare import choose_subset, default_gold_size, list_images
from cxrlabel.sim.sweep import Setting, apply_setting, build_template, setting_of, simulate_copy

KEYS = ("label_accuracy", "coverage", "judgments_per_image", "trusted_judgments_per_image",
        "expert_review_fraction", "annotators_arrived", "annotators_removed",
        "bad_annotators_removed", "bad_annotators", "removal_precision", "removal_recall",
        "pages", "quiz_pages", "cost", "cost_quiz_unpaid", "hours", "expert_hours")


def parse_setting(text: str) -> Setting:
    lo, hi, conf, gold, acc, method = (part.strip() for part in text.split(","))
    return Setting(int(lo), int(hi), float(conf), int(gold), float(acc), method)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path,
                        default=shared_data_dir() / "kermany" / "manifest.csv")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crowd", default="realistic")
    parser.add_argument("--tuned", default=None,
                        help="min,max,confidence,gold_per_page,min_accuracy,method")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the first adaptive run; print the top cxrlabel calls")
    args = parser.parse_args()

    path = resolve_job_path("pneumonia-pediatric")
    spec, spec_toml = load_job(path), path.read_text(encoding="utf-8")
    crowd = load_crowd(args.crowd)
    folder = Path(tempfile.mkdtemp(prefix="cxrlabel-bench-sim-"))
    try:
        _run(args, spec, spec_toml, crowd, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run(args: argparse.Namespace, spec: JobSpec, spec_toml: str, crowd: CrowdSpec,
         folder: Path) -> None:
    t0 = time.perf_counter()
    n_images = len(choose_subset(list_images(args.images, spec), args.limit, args.seed))
    template = build_template(spec, spec_toml, args.images, folder, limit=args.limit,
                              seed=args.seed, gold=default_gold_size(n_images, spec))
    setup_s = time.perf_counter() - t0
    print(f"setup (ingest + gold + difficulty): {setup_s:.0f} s; {template.setup}", flush=True)

    settings = [("job file as written", setting_of(spec))]
    if args.tuned:
        settings.append(("tuned", parse_setting(args.tuned)))
    report: dict = {"images_source": str(args.images), "crowd": crowd.name, "seed": args.seed,
                    "setup": template.setup, "setup_seconds": round(setup_s, 1), "runs": []}
    work_ids: list[int] = []
    for i, (name, setting) in enumerate(settings):
        run_spec = apply_setting(spec, setting)
        profiler = cProfile.Profile() if args.profile and i == 0 else None
        t0 = time.perf_counter()
        if profiler:
            profiler.enable()
        outcome = simulate_copy(template, folder, run_spec, crowd, args.seed)
        if profiler:
            profiler.disable()
        wall = time.perf_counter() - t0
        work_ids = outcome.work_ids
        timings = {k: round(v, 1) for k, v in outcome.record.timings.items()}
        row = {"name": name, "setting": setting.key, "wall_seconds": round(wall, 1),
               "timings_seconds": timings,
               "ms_per_page": round(1000 * wall / max(outcome.result["pages"], 1), 1),
               **{k: outcome.result[k] for k in KEYS}}
        report["runs"].append(row)
        print(json.dumps(row), flush=True)
        if profiler:
            report["profile"] = _profile_text(profiler)
            print(report["profile"], flush=True)

    base = run_baseline(crowd, spec, template.truth, work_ids, k=5, seed=args.seed)
    curve = base.curve
    report["baseline"] = {"name": BASELINE_NAME, "label_accuracy": base.label_accuracy,
                          "judgments_per_image": base.judgments_per_image, "cost": base.cost,
                          "pages": base.pages,
                          "majority_vote_by_k": {k: round(v, 4) for k, v in curve.items()}}
    print(json.dumps(report["baseline"]), flush=True)
    _print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def _profile_text(profiler: cProfile.Profile, limit: int = 25) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).sort_stats("cumulative")
    stats.print_stats(r"cxrlabel", limit)
    return out.getvalue()


def _print_table(report: dict) -> None:
    base = report["baseline"]
    rows = [*report["runs"], {"name": "BASELINE " + base["name"], "setting": "-",
                              "label_accuracy": base["label_accuracy"],
                              "judgments_per_image": base["judgments_per_image"],
                              "expert_review_fraction": 0.0, "removal_precision": None,
                              "cost": base["cost"], "hours": None}]
    print("\n| run | setting | accuracy | judgments/image | expert review | "
          "removal precision | cost | hours |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['setting']} | {_pct(r['label_accuracy'])} | "
              f"{r['judgments_per_image']:.2f} | {_pct(r['expert_review_fraction'])} | "
              f"{_pct(r.get('removal_precision'))} | {r['cost']:.2f} | "
              f"{r['hours'] if r.get('hours') is not None else '-'} |")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


if __name__ == "__main__":
    main()
