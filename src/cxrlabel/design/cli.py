"""``cxrlabel preview | proposal | estimate | gold ...``: job design deliverables on the CLI."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from cxrlabel.context import app_context, console, fail, get_job
from cxrlabel.design import goldbank, goldcheck, goldseed
from cxrlabel.design.estimate import (
    DEFAULT_ANNOTATORS,
    DEFAULT_HOURS_PER_ANNOTATOR_PER_DAY,
    estimate,
    inputs_from_spec,
)
from cxrlabel.design.exposure import revealed_counts
from cxrlabel.jobspec import resolve_job_path

if TYPE_CHECKING:  # kept out of the CLI's start-up (benchmarks/cli_startup.py)
    from sqlalchemy.orm import Session

    from cxrlabel.jobspec import JobSpec
    from cxrlabel.storage.models import Job

JOB_HELP = "Job name (or job file) \\[default: pneumonia-pediatric]."

T = TypeVar("T")

# Options that several commands share, defined once.
JobOption = Annotated[str | None, typer.Option("--job", help=JOB_HELP)]
FromReferenceOption = Annotated[
    int,
    typer.Option(
        "--from-reference",
        min=1,
        help="How many images with a reference label to draw, balanced per class.",
    ),
]
SeedOption = Annotated[int, typer.Option("--seed", help="Random seed (same seed, same sample).")]
ClearestOption = Annotated[
    float,
    typer.Option(
        "--clearest",
        min=0.01,
        max=1.0,
        help="Draw only from this clearest fraction of each class (e.g. 0.7), clarity read "
        "from the images' model scores (`cxrlabel score` first); for gold without model "
        "scores, from the crowd's agreement on finalised images. Clear teaching "
        "cases make fairer test questions and training cases; 1.0 = all images.",
    ),
]

gold_app = typer.Typer(
    help="The test-question (gold) bank: import, export, list, check, sample.",
    no_args_is_help=True,
)
job_app = typer.Typer(help="Jobs: create a named job for real data.", no_args_is_help=True)


@job_app.command("create")
def job_create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The new job's name (letters, digits, - and _)."),
    from_file: Path = typer.Option(
        None,
        "--from",
        help="Job file (TOML) to copy the settings "
        "from \\[default: the bundled pneumonia-pediatric job].",
    ),
) -> None:
    """Create an empty job NAME (then `cxrlabel ingest FOLDER --job NAME`). Real images get
    their own job, so the demo's synthetic phantoms never mix with them."""
    from sqlalchemy import select

    from cxrlabel.design.jobfile import JobFileError, renamed_job_toml
    from cxrlabel.storage.models import Job

    source = from_file or resolve_job_path(None)
    try:
        text = renamed_job_toml(source, name)
    except JobFileError as exc:
        fail(str(exc))
    app = app_context(ctx, creates_data=True)  # the first step for real data
    with app.db.session() as session:
        if session.scalar(select(Job.id).where(Job.name == name)) is not None:
            fail(f"a job named {name!r} already exists")
        session.add(
            Job(name=name, spec_toml=text, spec_sha256=hashlib.sha256(text.encode()).hexdigest())
        )
    console.print(
        f"Created job [bold]{name}[/] from {source}. Next: cxrlabel ingest FOLDER --job {name}"
    )


def preview_command(
    ctx: typer.Context,
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the HTML file."),
    job_name: JobOption = None,
    gold_examples: int = typer.Option(
        6, "--gold-examples", min=1, help="How many test questions to show with answers."
    ),
) -> None:
    """Write the job Preview: one self-contained HTML file (instructions, work page, example
    test questions) that opens offline and makes no request."""
    from cxrlabel.design.preview import render_preview

    app = app_context(ctx)
    with app.db.session() as session:
        job, spec = get_job(session, job_name)
        html = render_preview(spec, session, job, app.settings.data_dir, gold_examples)
    _write(output, html)
    console.print(
        f"preview of job [bold]{spec.name}[/] written to {output} "
        f"({len(html) / 1e6:.1f} MB, self-contained)"
    )


def proposal_command(
    ctx: typer.Context,
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the document."),
    job_name: JobOption = None,
    fmt: str = typer.Option(
        None,
        "--format",
        "-f",
        help="html, md or pdf \\[default: from the output's suffix (.md, .pdf), else html].",
    ),
    simulation: Path = typer.Option(
        None,
        "--simulation",
        help="Simulation result JSON \\[default: <data-dir>/simulation/<job>.json if present].",
    ),
    images: int = typer.Option(
        None, "--images", min=1, help="Images to plan for \\[default: the job's work images]."
    ),
    annotators: int = typer.Option(
        DEFAULT_ANNOTATORS, "--annotators", min=1, help="Annotator pool size for the estimate."
    ),
) -> None:
    """Write the job design Proposal (HTML, Markdown or PDF) from the job file and live data."""
    from cxrlabel.design import proposal as prop

    try:
        fmt = prop.output_format(output, fmt)
    except prop.ProposalError as exc:
        fail(str(exc))
    app = app_context(ctx)
    with app.db.session() as session:
        job, spec = get_job(session, job_name)
        default_sim = prop.default_simulation_path(app.settings.data_dir, spec.name)
        sim_path = simulation or default_sim
        sim = None
        if simulation is not None or default_sim.is_file():
            try:
                sim = prop.load_simulation(sim_path)
            except prop.ProposalError as exc:
                fail(str(exc))
        document = prop.build_proposal(
            spec,
            session,
            job,
            app.settings.data_dir,
            simulation=sim,
            simulation_source=str(sim_path),
            images=images,
            annotators=annotators,
        )
    if fmt == "md":
        _write(output, prop.render_markdown(document, output))
    elif fmt == "html":
        _write(output, prop.render_html(document))
    else:
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            prop.render_pdf(prop.render_html(document), output)
        except prop.ProposalError as exc:
            fail(str(exc))
    console.print(
        f"proposal for job [bold]{spec.name}[/] written to {output}"
        + ("" if sim else " (no simulation: accuracy section says 'not computed')")
    )


def estimate_command(
    ctx: typer.Context,
    job_name: JobOption = None,
    images: int = typer.Option(
        None, "--images", min=0, help="Images to label \\[default: the job's work images]."
    ),
    judgments_per_image: float = typer.Option(
        None,
        "--judgments-per-image",
        min=0.01,
        help="Expected trusted judgments per image \\[default: judgments.min, the cheapest case].",
    ),
    annotators: int = typer.Option(
        DEFAULT_ANNOTATORS, "--annotators", min=1, help="Annotator pool size."
    ),
    hours_per_day: float = typer.Option(
        DEFAULT_HOURS_PER_ANNOTATOR_PER_DAY,
        "--hours-per-day",
        min=0.1,
        help="Hours each annotator works a day.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the estimate as JSON."),
) -> None:
    """Cost and calendar time of labeling N images with this job's settings."""
    from sqlalchemy import func, select

    from cxrlabel.storage.models import Image, ImageStatus

    app = app_context(ctx)
    with app.db.session() as session:
        job, spec = get_job(session, job_name)
        if images is None:
            images = (
                session.scalar(
                    select(func.count())
                    .select_from(Image)
                    .where(Image.job_id == job.id, Image.status.not_in(ImageStatus.NOT_WORK))
                )
                or 0
            )
    if images == 0:
        fail(f"job {spec.name} has no work images yet: pass --images N")
    inputs = inputs_from_spec(spec, images, judgments_per_image, annotators, hours_per_day)
    result = estimate(inputs)
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
        return
    table = Table(title=f"Estimate for job {spec.name}", show_header=False)
    rows = [
        ("images", f"{images:,}"),
        ("judgments per image", f"{inputs.judgments_per_image:.2f}"),
        ("work judgments", f"{result.work_judgments:,}"),
        ("work pages", f"{result.work_pages:,}"),
        ("test questions on work pages", f"{result.gold_judgments:,}"),
        ("quiz pages", f"{result.quiz_pages:,}"),
        ("overhead (gold + quiz)", f"{result.overhead_fraction:.1%}"),
        ("cost", f"{result.cost:,.2f} {inputs.currency} ({result.cost_per_image:.3f}/image)"),
        ("annotator-hours", f"{result.annotator_hours:,.1f}"),
        ("pages per annotator", f"{result.pages_per_annotator:,.0f}"),
        (
            "calendar days",
            f"{result.calendar_days:.1f} ({annotators} annotators, {hours_per_day:g} h/day)",
        ),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


# --- gold -----------------------------------------------------------------------------------


@gold_app.command("import")
def gold_import(
    ctx: typer.Context,
    file: Path = typer.Argument(
        ..., help="CSV: image, accepted_answers (;-separated), reason, difficulty."
    ),
    job_name: JobOption = None,
) -> None:
    """Make the CSV's images test questions. One bad row imports nothing."""
    app = app_context(ctx)
    with app.db.session() as session:
        job, spec = get_job(session, job_name)
        try:
            summary = goldbank.import_gold_csv(session, job, spec, file)
        except goldbank.GoldImportError as exc:
            fail(str(exc))
    kept = (
        f" ({len(summary.kept_retired)} kept retired: switched off before, so still inactive)"
        if summary.kept_retired
        else ""
    )
    console.print(
        f"gold bank of job [bold]{spec.name}[/]: {summary.created} added, "
        f"{summary.updated} updated{kept}. Run `cxrlabel gold check` next."
    )


@gold_app.command("export")
def gold_export(
    ctx: typer.Context,
    output: Path = typer.Option(None, "--output", "-o", help="CSV file \\[default: stdout]."),
    job_name: JobOption = None,
) -> None:
    """Write the bank as CSV (re-importable; the image column is the source sha256)."""
    app = app_context(ctx)
    with app.db.session() as session:
        job, _ = get_job(session, job_name)
        text = goldbank.export_gold_csv(session, job)
    if output is None:
        typer.echo(text, nl=False)
    else:
        _write(output, text)


@gold_app.command("list")
def gold_list(
    ctx: typer.Context,
    job_name: JobOption = None,
) -> None:
    """The test questions with their answers, reasons and how often annotators miss them."""
    app = app_context(ctx)
    with app.db.session() as session:
        job, spec = get_job(session, job_name)
        rows = goldbank.gold_rows(session, job)
        revealed = revealed_counts(session, job)
    table = Table(title=f"Gold bank of job {spec.name} ({len(rows)} items)")
    table.add_column("source file", no_wrap=True)
    for column in (
        "answers",
        "difficulty",
        "reason",
        "seen",
        "missed",
        "revealed to",
        "contests",
        "active",
    ):
        table.add_column(column, overflow="fold")
    for r in rows:
        rate = f"{r.missed} ({r.miss_rate:.0%})" if r.miss_rate is not None else "0"
        table.add_row(
            Path(r.image.source_path).name,
            ";".join(r.gold.accepted_answers),
            r.gold.difficulty,
            (r.gold.reason[:80] + "…")
            if len(r.gold.reason) > 80
            else r.gold.reason or "[red](none)[/]",
            str(r.seen),
            rate,
            str(revealed.get(r.image.id, 0)),
            str(r.contests),
            "yes" if r.gold.active else "no",
        )
    console.print(table)


@gold_app.command("check")
def gold_check(
    ctx: typer.Context,
    job_name: JobOption = None,
    annotators: int = typer.Option(
        None,
        "--annotators",
        min=1,
        help="Planned pool size \\[default: judge by the per-annotator cap].",
    ),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 when there is any warning."),
) -> None:
    """Warn about class imbalance, too few gold, missing reasons, gold judged as work and
    near-duplicates."""
    app = app_context(ctx)
    with app.db.session() as session:
        job, spec = get_job(session, job_name)
        report = goldcheck.check_gold(
            session, job, spec, annotators=annotators, data_dir=app.settings.data_dir
        )
    balance = ", ".join(f"{k} {v}" for k, v in sorted(report.by_label.items())) or "none"
    expected = ", ".join(f"{k} {v:.0%}" for k, v in spec.quality.expected_prevalence.items())
    console.print(
        f"[bold]{report.n_gold}[/] active gold in job {spec.name}: {balance}"
        + (f" (expected in work: {expected})" if expected else "")
    )
    bound = "unlimited" if math.isinf(report.pages_bound) else f"{report.pages_bound:.0f}"
    console.print(
        f"pages one annotator can do before running out of unseen gold: [bold]{bound}[/] "
        f"(({report.n_gold} gold - {spec.gold.quiz_length} quiz) / {spec.gold.per_page} per "
        f"page); planned: {report.planned_pages_per_annotator:.0f}"
    )
    exposure = report.exposure
    if exposure is not None:
        limit = (
            f"retired once shown to {exposure.limit} annotators"
            if exposure.limit
            else "never retired (gold.retire_after_reveals = 0)"
        )
        console.print(
            f"exposure: answers shown to at most [bold]{exposure.max_revealed}[/] annotators per "
            f"item ({len(exposure.revealed)} items shown to anyone); items are {limit}; "
            f"{exposure.retired_revealed} retired so far"
        )
    for warning in report.warnings:
        console.print(
            f"[yellow]warning[/] {escape(f'[{warning.code}]')} {escape(warning.message)}",
            highlight=False,
        )
    if not report.warnings:
        console.print("[green]no problems found[/]")
    if strict and report.warnings:
        raise typer.Exit(1)


@gold_app.command("sample")
def gold_sample(
    ctx: typer.Context,
    from_reference: Annotated[
        int | None,
        typer.Option(
            "--from-reference",
            min=1,
            help="How many never-judged images with a reference label to draw, balanced per class.",
        ),
    ] = None,
    from_crowd: Annotated[
        int | None,
        typer.Option(
            "--from-crowd",
            min=1,
            help="How many finalised work images the crowd agreed on to propose as gold, "
            "balanced per crowd label (an expert confirms them: `cxrlabel quality "
            "confirm-gold`).",
        ),
    ] = None,
    job_name: JobOption = None,
    seed: SeedOption = 0,
    clearest: ClearestOption = 1.0,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Where to write the crowd proposals (CSV; never overwritten) "
            "\\[default: gold-proposals-JOB.csv].",
        ),
    ] = None,
) -> None:
    """Draw test questions from reference labels (e.g. Kermany), balanced per class. They
    stay inactive until an expert's reason replaces the placeholder (gold export / import).
    With --from-crowd, or --clearest and no model scores, propose the clearest images the crowd
    finalised instead, for an expert to confirm."""
    if (from_reference is None) == (from_crowd is None):
        fail("give one of --from-reference N or --from-crowd N")
    app = app_context(ctx)
    with app.db.session() as session:
        job, spec = get_job(session, job_name)
        if from_crowd is None and (clearest >= 1.0 or goldseed.has_model_scores(session, job)):
            assert from_reference is not None
            summary, per_label = _or_fail(
                lambda: goldseed.sample_from_reference(
                    session,
                    job,
                    spec,
                    from_reference,
                    seed,
                    clearest_fraction=clearest,
                    needs_reasons=True,
                )
            )
            _print_reference_sample(spec.name, summary, per_label, from_reference)
            return
        if from_crowd is None:
            console.print(
                "no image of this job has a model score: --clearest reads clarity from the "
                "crowd's agreement on finalised images instead"
            )
        from cxrlabel.design.crowdgold import propose_to_file

        n = from_crowd or from_reference or 0
        path = output or Path(f"gold-proposals-{spec.name}.csv")
        for line in _or_fail(lambda: propose_to_file(session, job, spec, n, seed, clearest, path)):
            console.print(escape(line))  # a path may hold "[...]", which Rich would eat


def _print_reference_sample(
    job_name: str, summary: goldbank.ImportSummary, per_label: dict[str, int], wanted: int
) -> None:
    counts = _sampled_per_class(job_name, per_label)
    console.print(
        f"{summary.created} gold sampled from reference labels ({counts}). They "
        "stay [bold]inactive[/] (never shown) until each has an expert's reason: "
        f"cxrlabel gold export --job {job_name} -o FILE.csv, write the reasons, "
        "cxrlabel gold import FILE.csv."
    )
    if summary.created < wanted:
        console.print(
            f"[yellow]warning[/] only {summary.created} of {wanted} found "
            "(one per patient, no near-duplicates, never judged)"
        )


def _or_fail(draw: Callable[[], T]) -> T:
    """``draw`` with its ValueError (a bad setting, nothing to draw from) as a clear CLI
    error; the caller's transaction is rolled back."""
    try:
        return draw()
    except ValueError as exc:
        fail(escape(str(exc)))


def _draw_from_reference(
    ctx: typer.Context, job_name: str | None, draw: Callable[[Session, Job, JobSpec], T]
) -> tuple[JobSpec, T]:
    """``draw`` (a sample from reference labels) in one transaction; its ValueError (a bad
    setting, no model scores for ``--clearest``) is a clear CLI error."""
    app = app_context(ctx)
    with app.db.session() as session:
        job, spec = get_job(session, job_name)
        return spec, _or_fail(lambda: draw(session, job, spec))


def _sampled_per_class(job_name: str, per_label: dict[str, int]) -> str:
    """Per class ("NORMAL 3, PNEUMONIA 5") of a sample from reference labels; none: an error."""
    if not sum(per_label.values()):
        fail(f"job {job_name} has no unjudged work image with a reference label to sample")
    return ", ".join(f"{k} {v}" for k, v in sorted(per_label.items()))


training_app = typer.Typer(
    help="The training pool shown before the quiz (never test questions): sample, list.",
    no_args_is_help=True,
)


@training_app.command("sample")
def training_sample(
    ctx: typer.Context,
    from_reference: FromReferenceOption,
    job_name: JobOption = None,
    seed: SeedOption = 0,
    clearest: ClearestOption = 1.0,
) -> None:
    """Add training cases from reference labels: never-judged work images, never gold (their
    answers are shown to every newcomer). Reasons are a generic template: replace them with
    an expert's."""
    from cxrlabel.design.trainingpool import sample_training

    spec, per_label = _draw_from_reference(
        ctx,
        job_name,
        lambda session, job, spec: sample_training(
            session, job, spec, from_reference, seed, clearest_fraction=clearest
        ),
    )
    counts = _sampled_per_class(spec.name, per_label)
    console.print(f"{sum(per_label.values())} training cases sampled ({counts}).")
    if not spec.training.enabled:
        console.print(
            "[yellow]warning[/] training is off in this job: set [training] "
            "enabled = true in the job file to show them"
        )


@training_app.command("list")
def training_list(
    ctx: typer.Context,
    job_name: JobOption = None,
) -> None:
    """The training pool: image, answer, reason."""
    from sqlalchemy import select

    from cxrlabel.storage.models import Image, TrainingItem

    app = app_context(ctx)
    table = Table("image", "answer", "reason")
    with app.db.session() as session:
        job, _spec = get_job(session, job_name)
        for public_id, answer, reason in session.execute(
            select(Image.public_id, TrainingItem.answer, TrainingItem.reason)
            .join(Image, Image.id == TrainingItem.image_id)
            .where(TrainingItem.job_id == job.id, TrainingItem.active.is_(True))
            .order_by(TrainingItem.id)
        ):
            table.add_row(public_id, answer, escape(reason))
    console.print(table)


# --- plumbing -------------------------------------------------------------------------------


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror}")


def register(app: typer.Typer) -> None:
    app.command("preview")(preview_command)
    app.command("proposal")(proposal_command)
    app.command("estimate")(estimate_command)
    app.add_typer(gold_app, name="gold")
    app.add_typer(training_app, name="training")
    app.add_typer(job_app, name="job")
