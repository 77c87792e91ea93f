"""Simulated crowd on the shared Kermany images: accuracy, cost and quality control of the
adaptive job, next to a no-quality-control baseline computed in the same run.

What runs:
  1. ingest every image once (real ingest pipeline) into a template SQLite database, sample
     the gold bank from reference labels, derive the cross-fitted difficulty;
  2. adaptive job, as the bundled job file sets it, driven through the real assignment,
     submission and quality engines by the `realistic` crowd (in-process, simulated clock);
  3. adaptive job with tuned settings (``--tuned``, repeatable, e.g. the design sweep's
     recommendation; ``--skip-written`` runs only these), on the same template, crowd and seed;
  4. BASELINE: fixed 5 judgments per image, plain majority vote, no quiz, no gold, no removal,
     no expert - a plain NumPy computation with the same crowd mix, answer model, truth and
     difficulty (``cxrlabel.sim.baseline``), plus its accuracy for k = 1..9.
Figures: label accuracy vs the expert (reference) labels, judgments per image, expert-review
fraction, removed-annotator precision/recall, cost, simulated hours, and where the wall time
goes (assignment vs submission+quality vs the simulator itself).

    python benchmarks/simulation.py [--limit N] [--seed 0] [--crowd realistic]
        [--tuned "2,5,0.8,1,0.65,trust[,quiz[,cant_tell]][+section.field=value][@F]"]...
        [--skip-written] [--gold-clearest 0.7] [--model-scores oof.csv]
        [--workdir /tmp/sim2/full] [--expert-cost 1.0] [--json out.json] [--profile]

``--gold-clearest F`` draws the gold bank from the clearest F of each class (cross-fitted
pixel difficulty; ``@F`` after a --tuned setting sets it for that run only; the images are
ingested once and each gold policy gets its own copy). ``--model-scores`` loads per-image
model scores for model-assisted options (``+section.field=value`` in a setting).
``--workdir`` keeps the ingested template, so a later invocation with the same images and
seed skips the ~7 min setup.
Cost is reported twice: the crowd's pay (what the baseline is compared on) and crowd pay plus
``--expert-cost`` per expert-reviewed image (the baseline has no expert).
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import json
import os
import pstats
import shutil
import tempfile
import time
from pathlib import Path

from cxrlabel.config import shared_data_dir
from cxrlabel.jobspec import JobSpec, load_job, resolve_job_path
from cxrlabel.sim.baseline import BASELINE_NAME, run_baseline
from cxrlabel.sim.crowd import CrowdSpec, load_crowd
from cxrlabel.sim.prepare import default_gold_size
from cxrlabel.sim.scores import load_model_scores
from cxrlabel.sim.sweep import (
    DEFAULT_EXPERT_COST,
    Template,
    apply_setting,
    build_template,
    load_template,
    parse_setting,
    save_template,
    setting_of,
    simulate_copy,
    with_gold,
)
from cxrlabel.storage.db import Database

KEYS = (
    "label_accuracy",
    "accuracy_finalised",
    "accuracy_expert",
    "coverage",
    "judgments_per_image",
    "trusted_judgments_per_image",
    "tainted_judgments",
    "expert_review_fraction",
    "expert_reviews",
    "annotators_arrived",
    "annotators_removed",
    "bad_annotators_removed",
    "bad_annotators",
    "removal_precision",
    "removal_recall",
    "pages",
    "quiz_pages",
    "cost",
    "cost_quiz_unpaid",
    "hours",
    "expert_hours",
    "stopped_by",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--images", type=Path, default=shared_data_dir() / "kermany" / "manifest.csv"
    )
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crowd", default="realistic")
    parser.add_argument(
        "--tuned",
        action="append",
        default=[],
        help="min,max,confidence,gold_per_page,min_accuracy,method"
        "[,quiz_length[,cant_tell_fraction]][+section.field=value] "
        "(repeatable)",
    )
    parser.add_argument(
        "--skip-written",
        action="store_true",
        help="do not run the job file as written (only --tuned settings)",
    )
    parser.add_argument(
        "--gold-clearest",
        type=float,
        default=1.0,
        help="draw gold from the clearest fraction of each class (default 1)",
    )
    parser.add_argument(
        "--model-scores",
        type=Path,
        default=None,
        help="CSV file,p_pneumonia loaded into Image.model_score",
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep (and reuse) the ingested template here"
    )
    parser.add_argument(
        "--expert-cost",
        type=float,
        default=DEFAULT_EXPERT_COST,
        help="cost of one expert review, for the cost-with-expert column",
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile the first adaptive run; print the top cxrlabel calls",
    )
    args = parser.parse_args()

    path = resolve_job_path("pneumonia-pediatric")
    spec, spec_toml = load_job(path), path.read_text(encoding="utf-8")
    crowd = load_crowd(args.crowd)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        _run(args, spec, spec_toml, crowd, args.workdir)
        return
    folder = Path(tempfile.mkdtemp(prefix="cxrlabel-bench-sim-"))
    try:
        _run(args, spec, spec_toml, crowd, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _base_template(
    args: argparse.Namespace, spec: JobSpec, spec_toml: str, folder: Path
) -> Template:
    """Images ingested once, truth derived, model scores loaded; no gold yet."""
    params = {
        "images": str(args.images),
        "limit": args.limit,
        "seed": args.seed,
        "job_sha": hashlib.sha256(spec_toml.encode()).hexdigest(),
    }
    if args.workdir is not None:
        found = load_template(folder / "template.sqlite3", params)
        if found is not None:
            print(f"reusing the ingested template in {folder}", flush=True)
            return found
        for stale in folder.glob("template*"):
            stale.unlink()
    template = build_template(
        spec, spec_toml, args.images, folder, limit=args.limit, seed=args.seed, sample_gold=False
    )
    if args.workdir is not None:
        save_template(template, params)
    return template


def _gold_template(
    base: Template, spec: JobSpec, folder: Path, args: argparse.Namespace, clearest: float
) -> Template:
    """The base template with a gold bank (~4 % of the images) drawn by ``clearest``, and
    the model scores when given."""
    n_gold = default_gold_size(len(base.truth.label), spec)
    scores = str(args.model_scores) if args.model_scores else None
    path = folder / f"template-gold{clearest:g}{'-scores' if scores else ''}.sqlite3"
    params = {
        "base": base.setup,
        "n_gold": n_gold,
        "seed": args.seed,
        "clearest": clearest,
        "model_scores": scores,
    }
    found = load_template(path, params) if args.workdir is not None else None
    if found is not None:
        return found
    template = with_gold(base, path, spec, n_gold=n_gold, seed=args.seed, gold_clearest=clearest)
    if args.model_scores is not None:
        db = Database(f"sqlite:///{path}")
        try:
            template.setup["model_scores"] = load_model_scores(db, base.job_id, args.model_scores)
        finally:
            db.dispose()
    save_template(template, params)
    return template


def _split_run(text: str, default: float) -> tuple[str, float]:
    """``SETTING[@F]``: the setting and the gold policy (clearest fraction) of one run."""
    setting, _sep, clearest = text.partition("@")
    return setting, float(clearest) if clearest else default


def _run(
    args: argparse.Namespace, spec: JobSpec, spec_toml: str, crowd: CrowdSpec, folder: Path
) -> None:
    t0 = time.perf_counter()
    base = _base_template(args, spec, spec_toml, folder)
    setup_s = time.perf_counter() - t0
    print(f"setup (ingest + difficulty): {setup_s:.0f} s; {base.setup}", flush=True)

    settings = (
        [] if args.skip_written else [("job file as written", setting_of(spec), args.gold_clearest)]
    )
    for i, text in enumerate(args.tuned, start=1):
        setting_text, clearest = _split_run(text, args.gold_clearest)
        settings.append(
            (
                f"tuned {i}" if len(args.tuned) > 1 else "tuned",
                parse_setting(setting_text),
                clearest,
            )
        )
    report: dict = {
        "images_source": str(args.images),
        "crowd": crowd.name,
        "seed": args.seed,
        "expert_cost": args.expert_cost,
        "setup": base.setup,
        "setup_seconds": round(setup_s, 1),
        "load_average_start": os.getloadavg(),
        "runs": [],
        "baselines": {},
    }
    templates: dict[float, Template] = {}
    for i, (name, setting, clearest) in enumerate(settings):
        if clearest not in templates:
            templates[clearest] = _gold_template(base, spec, folder, args, clearest)
        template = templates[clearest]
        run_spec = apply_setting(spec, setting)
        profiler = cProfile.Profile() if args.profile and i == 0 else None
        t0 = time.perf_counter()
        if profiler:
            profiler.enable()
        outcome = simulate_copy(template, folder, run_spec, crowd, args.seed)
        if profiler:
            profiler.disable()
        wall = time.perf_counter() - t0
        timings = {k: round(v, 1) for k, v in outcome.record.timings.items()}
        result = outcome.result
        row = {
            "name": name,
            "setting": setting.key,
            "gold_clearest": clearest,
            "gold_mean_difficulty": template.setup.get("gold_mean_difficulty"),
            "wall_seconds": round(wall, 1),
            "timings_seconds": timings,
            "load_average_end": os.getloadavg(),
            "ms_per_page": round(1000 * wall / max(result["pages"], 1), 1),
            **{k: result.get(k) for k in KEYS},
            "cost_with_expert": round(
                result["cost"] + args.expert_cost * (result["expert_reviews"] or 0), 2
            ),
        }
        report["runs"].append(row)
        print(json.dumps(row), flush=True)
        if profiler:
            report["profile"] = _profile_text(profiler)
            print(report["profile"], flush=True)
        if clearest not in report["baselines"]:  # on this gold policy's work images
            report["baselines"][clearest] = _baseline(
                crowd, spec, template, outcome.work_ids, args.seed
            )
            print(json.dumps(report["baselines"][clearest]), flush=True)
    report["baseline"] = next(iter(report["baselines"].values()))
    _print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def _baseline(
    crowd: CrowdSpec, spec: JobSpec, template: Template, work_ids: list[int], seed: int
) -> dict:
    base = run_baseline(crowd, spec, template.truth, work_ids, k=5, seed=seed)
    return {
        "name": BASELINE_NAME,
        "gold_clearest": template.setup["gold_clearest_fraction"],
        "images": len(work_ids),
        "label_accuracy": base.label_accuracy,
        "judgments_per_image": base.judgments_per_image,
        "cost": base.cost,
        "cost_with_expert": base.cost,
        "pages": base.pages,
        "majority_vote_by_k": {k: round(v, 4) for k, v in base.curve.items()},
    }


def _profile_text(profiler: cProfile.Profile, limit: int = 25) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).sort_stats("cumulative")
    stats.print_stats(r"cxrlabel", limit)
    return out.getvalue()


def _print_table(report: dict) -> None:
    rows = list(report["runs"])
    for clearest, base in report["baselines"].items():
        rows.append(
            {
                "name": "BASELINE " + base["name"],
                "setting": "-",
                "gold_clearest": clearest,
                "label_accuracy": base["label_accuracy"],
                "judgments_per_image": base["judgments_per_image"],
                "expert_review_fraction": 0.0,
                "removal_precision": None,
                "cost": base["cost"],
                "cost_quiz_unpaid": base["cost"],
                "cost_with_expert": base["cost"],
                "hours": None,
            }
        )
    print(
        f"\nexpert read priced at {report['expert_cost']:.2f}; gold = clearest fraction of "
        "each class the gold bank was drawn from (the baseline is computed on that run's "
        "work images)"
    )
    print(
        "| run | setting | gold | accuracy (crowd-settled / expert) | judgments/image | "
        "expert review | removal precision | crowd cost (quiz unpaid) | with expert | hours |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        split = (
            f" ({_pct(r.get('accuracy_finalised'))} / {_pct(r.get('accuracy_expert'))})"
            if r.get("accuracy_finalised") is not None
            else ""
        )
        print(
            f"| {r['name']} | {r['setting']} | {r['gold_clearest']:g} | "
            f"{_pct(r['label_accuracy'])}{split} | "
            f"{r['judgments_per_image']:.2f} | {_pct(r['expert_review_fraction'])} | "
            f"{_pct(r.get('removal_precision'))} | {r['cost']:.2f} "
            f"({r['cost_quiz_unpaid']:.2f}) | {r['cost_with_expert']:.2f} | "
            f"{r['hours'] if r.get('hours') is not None else '-'} |"
        )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


if __name__ == "__main__":
    main()
