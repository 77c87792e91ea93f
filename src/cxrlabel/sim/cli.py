"""``cxrlabel simulate`` and ``cxrlabel design-sweep``."""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import func, select

from cxrlabel.context import AppContext, app_context, console, err_console, fail
from cxrlabel.jobspec import JobSpec, JobSpecError, load_job, resolve_job_path
from cxrlabel.sim.baseline import BASELINE_NAME, run_baseline
from cxrlabel.sim.crowd import CrowdSpec, CrowdSpecError, load_crowd
from cxrlabel.sim.prepare import SimSetupError
from cxrlabel.sim.run import DEFAULT_GOLD_CLEAREST, SimOutcome, run_simulation, write_result
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import Image, Job


def _load_spec(job: str | None) -> tuple[JobSpec, str]:
    try:
        path = resolve_job_path(job)
        return load_job(path), path.read_text(encoding="utf-8")
    except JobSpecError as exc:
        fail(str(exc))


def _load_crowd(name: str) -> CrowdSpec:
    try:
        return load_crowd(name)
    except CrowdSpecError as exc:
        fail(str(exc))


@contextmanager
def _progress(enabled: bool):  # a context manager of a Rich Progress
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=not enabled,
        transient=True,
    )
    with progress:
        yield progress


def simulate_command(
    ctx: typer.Context,
    images: Path = typer.Option(
        ...,
        "--images",
        help="Folder or CSV manifest of images with reference labels "
        "(e.g. ../shared/data/kermany/manifest.csv).",
    ),
    job: str = typer.Option(
        None, "--job", help="Job file or bundled job name \\[default: pneumonia-pediatric]."
    ),
    crowd: str = typer.Option(
        "realistic", "--crowd", help="Crowd preset (realistic, good, hostile) or a crowd TOML file."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same result."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    limit: int = typer.Option(
        None, "--limit", min=1, help="Use a seeded random subset of N images."
    ),
    plots: Path = typer.Option(None, "--plots", help="Write PNG figures into this folder."),
    annotators: int = typer.Option(
        None, "--annotators", min=1, help="Most annotators who may arrive \\[default: the crowd's]."
    ),
    gold: int = typer.Option(
        None,
        "--gold",
        min=1,
        help="Gold bank size sampled from reference labels \\[default: ~4 %].",
    ),
    gold_clearest: float = typer.Option(
        DEFAULT_GOLD_CLEAREST,
        "--gold-clearest",
        min=0.01,
        max=1.0,
        help="Draw gold from the clearest fraction of each class only (by the cross-fitted "
        "pixel difficulty), as a designer picks clear teaching cases (1 = all).",
    ),
    model_scores: Path = typer.Option(
        None,
        "--model-scores",
        help="CSV file,p_pneumonia: model scores loaded into the images (for the job's "
        "model-assisted options).",
    ),
    gold_top_up: int = typer.Option(
        0,
        "--gold-top-up",
        min=0,
        help="Whenever N test questions have been retired by exposure, the simulated "
        "radiologist confirms N gold proposals from the crowd's agreement, as on the Gold "
        "proposals page (0 = off).",
    ),
    into_job: str = typer.Option(
        None,
        "--into-job",
        help="Simulate in this installation's own database (data dir / --db) on job NAME "
        "(a stored job, or a bundled job / job file, created on first use), so that "
        "report, export and train find its labels. The crowd keeps arriving until every "
        "image is finalised or reviewed. The job must have no crowd work yet.",
    ),
) -> None:
    """Simulate a crowd on a job through the real engines; report accuracy, cost and time.

    Runs in a fresh SQLite database under <data-dir>/simulation/ (or in --db, which must not
    hold this job yet) and writes the result to <data-dir>/simulation/<job>.json. With
    --into-job the simulation fills that job in the installation's own database instead.
    """
    crowd_spec = _load_crowd(crowd)
    if not images.exists():
        fail(f"{images}: no such file or folder")
    if model_scores is not None and not model_scores.is_file():
        fail(f"{model_scores}: no such file")
    if into_job is not None:
        if job is not None:
            fail("--into-job NAME uses that job's own settings; leave out --job")
        if gold_top_up:
            fail("--gold-top-up is for a fresh simulation; leave it out with --into-job")
        outcome, spec = _simulate_into_job(
            app_context(ctx, creates_data=True),
            into_job,
            images,
            crowd_spec,
            seed=seed,
            limit=limit,
            gold=gold,
            annotators=annotators,
            gold_clearest=gold_clearest,
            model_scores=model_scores,
            show_progress=not as_json,
        )
        _report(ctx, outcome, crowd_spec, spec, seed, plots, as_json)
        return
    app = app_context(ctx)
    spec, spec_toml = _load_spec(job)
    work_dir = app.settings.data_dir / "simulation" / f"work-{spec.name}"
    db = _simulation_db(app.settings.db_url, work_dir, spec.name)
    try:
        with _progress(not as_json) as progress:
            features = progress.add_task("difficulty features", total=None)
            crowd_task = progress.add_task("simulated crowd (images settled)", total=None)
            outcome = run_simulation(
                db,
                spec,
                spec_toml,
                images,
                data_dir=work_dir,
                crowd=crowd_spec,
                seed=seed,
                limit=limit,
                gold=gold,
                n_annotators=annotators,
                gold_clearest=gold_clearest,
                model_scores=model_scores,
                gold_top_up=gold_top_up,
                difficulty_progress=lambda n: progress.advance(features, n),
                progress=lambda done, total: progress.update(
                    crowd_task, completed=done, total=total
                ),
            )
    except (SimSetupError, CrowdSpecError) as exc:
        fail(str(exc))
    finally:
        db.dispose()
    _report(ctx, outcome, crowd_spec, spec, seed, plots, as_json)


def _simulate_into_job(
    app: AppContext,
    name: str,
    images: Path,
    crowd: CrowdSpec,
    *,
    seed: int,
    limit: int | None,
    gold: int | None,
    annotators: int | None,
    gold_clearest: float,
    model_scores: Path | None,
    show_progress: bool,
) -> tuple[SimOutcome, JobSpec]:
    """The simulation in the installation's own database, on a job without crowd work."""
    from cxrlabel.context import get_job
    from cxrlabel.sim.run import fill_job
    from cxrlabel.storage.models import ImageStatus, Judgment

    with app.db.session() as session:
        job_row, spec = get_job(session, name)
        judged = (
            session.scalar(
                select(func.count(Judgment.id)).where(
                    Judgment.job_id == job_row.id, Judgment.is_gold.is_(False)
                )
            )
            or 0
        )
        settled = (
            session.scalar(
                select(func.count(Image.id)).where(
                    Image.job_id == job_row.id,
                    Image.status != ImageStatus.NEEDS_JUDGMENTS,
                    Image.status.not_in(ImageStatus.NOT_WORK),
                )
            )
            or 0
        )
    if judged or settled:
        fail(
            f"job {job_row.name!r} already has crowd work ({judged} judgments); --into-job "
            "fills a job that has none (use another job, or a fresh data dir)"
        )
    try:
        with _progress(show_progress) as progress:
            crowd_task = progress.add_task("simulated crowd (images settled)", total=None)
            outcome = fill_job(
                app.db,
                job_row,
                spec,
                images,
                crowd,
                seed,
                annotators,
                data_dir=app.settings.data_dir,
                gold=gold,
                gold_clearest=gold_clearest,
                until_settled=True,
                limit=limit,
                model_scores=model_scores,
                progress=lambda done, total: progress.update(
                    crowd_task, completed=done, total=total
                ),
            )
    except (SimSetupError, CrowdSpecError) as exc:
        fail(str(exc))
    return outcome, spec


def _report(
    ctx: typer.Context,
    outcome: SimOutcome,
    crowd_spec: CrowdSpec,
    spec: JobSpec,
    seed: int,
    plots: Path | None,
    as_json: bool,
) -> None:
    app = app_context(ctx)
    result = outcome.result
    curve = _baseline(outcome, crowd_spec, spec, seed)
    result["baseline"] = {
        "name": BASELINE_NAME,
        "label_accuracy": curve.get(5),
        "judgments_per_image": 5.0,
        "majority_vote_by_k": {str(k): round(v, 4) for k, v in curve.items()},
    }
    path = write_result(result, app.settings.data_dir, spec.name)
    if plots:
        _plots(outcome, curve, plots)
    if as_json:
        typer.echo(json.dumps(result, sort_keys=True))
        return
    _print_result(result, path, plots)
    into = result.get("setup", {}).get("into_job")
    if into:
        console.print(
            f"labels are in job {into!r} of this data dir: cxrlabel report aggregated "
            f"--job {into} ..., cxrlabel export --job {into} -o DIR"
        )


def _simulation_db(db_url: str | None, work_dir: Path, job_name: str) -> Database:
    if db_url:
        db = Database(db_url)
        with db.session() as session:
            job = session.scalar(select(Job).where(Job.name == job_name))
            n = (
                session.scalar(
                    select(func.count()).select_from(Image).where(Image.job_id == job.id)
                )
                if job is not None
                else 0
            )
        if n:
            db.dispose()
            fail(
                f"--db already holds job {job_name!r} with {n} images; simulate into an empty "
                "database"
            )
        return db
    if work_dir.exists():
        shutil.rmtree(work_dir)  # a simulation always starts from nothing
    work_dir.mkdir(parents=True)
    return Database(f"sqlite:///{work_dir / 'simulation.sqlite3'}")


def _baseline(outcome: SimOutcome, crowd: CrowdSpec, spec: JobSpec, seed: int) -> dict[int, float]:
    if not outcome.work_ids:
        return {}
    return run_baseline(crowd, spec, outcome.truth, outcome.work_ids, k=5, seed=seed, k_max=7).curve


def _plots(outcome: SimOutcome, curve: dict[int, float], folder: Path) -> None:
    from cxrlabel.sim.plots import accuracy_vs_judgments, trust_by_persona

    accuracy_vs_judgments(
        outcome.result, outcome.accuracy_by_judgments, curve, folder / "accuracy_vs_judgments.png"
    )
    trust_by_persona(outcome.annotators, folder / "trust_by_persona.png")


def _fmt(value: Any, kind: str = "") -> str:
    if value is None:
        return "-"
    if kind == "%":
        return f"{value:.1%}"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _print_result(result: dict[str, Any], path: Path, plots: Path | None) -> None:
    table = Table(
        title=f"Simulation: job {result['job']}, {result['crowd']} crowd, seed {result['seed']}",
        show_header=True,
    )
    table.add_column("measure")
    table.add_column("adaptive job", justify="right")
    table.add_column("baseline (fixed 5, MV, no QC)", justify="right")
    base = result["baseline"]
    table.add_row(
        "label accuracy vs reference",
        _fmt(result["label_accuracy"], "%"),
        _fmt(base["label_accuracy"], "%"),
    )
    table.add_row("coverage (images with a final label)", _fmt(result["coverage"], "%"), "100.0%")
    table.add_row("judgments per image", _fmt(result["judgments_per_image"]), "5.00")
    table.add_row("expert review fraction", _fmt(result["expert_review_fraction"], "%"), "0.0%")
    table.add_row(
        "annotators removed (bad among them)",
        f"{result['annotators_removed']} ({result['bad_annotators_removed']})",
        "0",
    )
    table.add_row(
        "removal precision / recall",
        f"{_fmt(result['removal_precision'], '%')} / {_fmt(result['removal_recall'], '%')}",
        "-",
    )
    table.add_row(f"cost ({result['currency']})", _fmt(result["cost"]), "-")
    table.add_row("hours (first arrival to last page)", _fmt(result["hours"]), "-")
    console.print(table)
    console.print(
        f"images {result['images']} (+{result['gold_items']} gold), pages "
        f"{result['pages']} ({result['quiz_pages']} quiz, "
        f"{result.get('training_pages', 0)} training), annotators "
        f"{result['annotators_arrived']}, stopped: {result['stopped_by']}"
    )
    console.print(f"result written to {path}")
    if plots:
        console.print(f"figures written to {plots}/")


def design_sweep_command(
    ctx: typer.Context,
    images: Path = typer.Option(
        ..., "--images", help="Folder or CSV manifest with reference labels."
    ),
    job: str = typer.Option(None, "--job", help="Job file or bundled job name."),
    crowds: str = typer.Option(
        "realistic", "--crowds", help="Comma-separated crowd presets or TOML files."
    ),
    limit: int = typer.Option(600, "--limit", min=20, help="Images to sweep on (seeded subset)."),
    grid: str = typer.Option(
        "small", "--grid", help="small (9 settings) or full (48); ignored when --setting is given."
    ),
    setting: list[str] = typer.Option(
        None,
        "--setting",
        help="A setting to simulate (repeat for several): min,max,confidence,gold_per_page,"
        "min_accuracy,method[,quiz_length[,cant_tell_fraction]].",
    ),
    gold_clearest: float = typer.Option(
        1.0,
        "--gold-clearest",
        min=0.01,
        max=1.0,
        help="Draw gold from the clearest fraction of each class only \\[default: 1 = all].",
    ),
    model_scores: Path = typer.Option(
        None, "--model-scores", help="CSV file,p_pneumonia loaded into the images."
    ),
    seed: int = typer.Option(0, "--seed"),
    target: float = typer.Option(
        0.95,
        "--target",
        min=0.5,
        max=1.0,
        help="Accuracy the recommendation must reach on every crowd.",
    ),
    expert_cost: float = typer.Option(
        1.0, "--expert-cost", min=0.0, help="Cost of one expert review, in the job's currency."
    ),
    plots: Path = typer.Option(None, "--plots", help="Write the Pareto plot into this folder."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Sweep job settings over crowd mixes; show the accuracy-vs-cost Pareto front."""
    from cxrlabel.sim import sweep as sw

    app = app_context(ctx)
    spec, spec_toml = _load_spec(job)
    crowd_specs = [_load_crowd(name.strip()) for name in crowds.split(",") if name.strip()]
    if grid not in ("small", "full"):
        fail("--grid must be 'small' or 'full'")
    if not images.exists():
        fail(f"{images}: no such file or folder")
    if model_scores is not None and not model_scores.is_file():
        fail(f"{model_scores}: no such file")
    try:
        settings = [sw.parse_setting(text) for text in setting or []]
    except ValueError as exc:
        fail(str(exc))
    if not settings:
        settings = sw.small_grid(sw.setting_of(spec)) if grid == "small" else sw.full_grid()
    folder = Path(tempfile.mkdtemp(prefix="cxrlabel-sweep-"))
    rows: list[dict[str, Any]] = []
    try:
        with _progress(not as_json) as progress:
            features = progress.add_task("ingest + difficulty", total=None)
            template = sw.build_template(
                spec,
                spec_toml,
                images,
                folder,
                limit=limit,
                seed=seed,
                progress=lambda n: progress.advance(features, n),
                gold_clearest=gold_clearest,
                model_scores=model_scores,
            )
            runs = progress.add_task("simulated jobs", total=len(settings) * len(crowd_specs))
            rows = sw.sweep(
                template,
                folder,
                spec,
                settings,
                crowd_specs,
                seed=seed,
                expert_cost=expert_cost,
                on_run=lambda row: _run_done(progress, runs, row, as_json),
            )
    except (SimSetupError, JobSpecError) as exc:
        fail(str(exc))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    summary = sw.summarise_settings(rows)
    for row in summary:
        row["gold_clearest_fraction"] = gold_clearest
    front = sw.pareto(summary)
    best, why = sw.recommend(summary, target)
    document = {
        "job": spec.name,
        "images": limit,
        "crowds": [c.name for c in crowd_specs],
        "seed": seed,
        "expert_cost": expert_cost,
        "gold_clearest_fraction": gold_clearest,
        "setup": template.setup,
        "runs": rows,
        "settings": summary,
        "pareto_front": [r["setting"] for r in front],
        "recommended": best,
        "reason": why,
    }
    out = app.settings.data_dir / "simulation" / f"{spec.name}-sweep.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if plots:
        from cxrlabel.sim.plots import pareto_front

        pareto_front(rows, front, best, plots / "pareto_front.png")
    if as_json:
        typer.echo(json.dumps(document, sort_keys=True))
        return
    _print_sweep(summary, front, best, why, out)


def _run_done(progress: Progress, task: Any, row: dict[str, Any], quiet: bool) -> None:
    """Advance the bar and, for people watching a long sweep, show the run's headline."""
    progress.advance(task)
    if not quiet:
        err_console.print(
            f"{row['setting']} [{row['crowd']}]: accuracy {_fmt(row['label_accuracy'], '%')}, "
            f"{_fmt(row['judgments_per_image'])} judgments/image, review "
            f"{_fmt(row['expert_review_fraction'], '%')}, crowd cost/image "
            f"{row['crowd_cost_per_image']:.3f}"
        )


def _print_sweep(
    summary: list[dict[str, Any]],
    front: list[dict[str, Any]],
    best: dict[str, Any] | None,
    why: str,
    out: Path,
) -> None:
    on_front = {r["setting"] for r in front}
    table = Table(title="Design sweep (mean over crowds; * = on the Pareto front)")
    for column in (
        "setting",
        "accuracy",
        "worst crowd",
        "judgments/image",
        "expert review",
        "crowd cost/image",
        "cost/image",
    ):
        table.add_column(column, justify="left" if column == "setting" else "right")
    for row in sorted(summary, key=lambda r: r["cost_per_image"]):
        mark = "* " if row["setting"] in on_front else "  "
        table.add_row(
            mark + row["setting"],
            _fmt(row["label_accuracy"], "%"),
            _fmt(row["worst_accuracy"], "%"),
            _fmt(row["judgments_per_image"]),
            _fmt(row["expert_review_fraction"], "%"),
            f"{row.get('crowd_cost_per_image', 0.0):.3f}",
            f"{row['cost_per_image']:.3f}",
        )
    console.print(table)
    if best:
        console.print(f"[bold]recommended:[/] {best['setting']} - {why}")
    console.print(f"sweep written to {out}")


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate_command)
    app.command("design-sweep")(design_sweep_command)
