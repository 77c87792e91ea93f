"""``cxrlabel report full|aggregated|contributors|gold|qa`` and ``cxrlabel export``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cxrlabel.context import app_context, console, err_console, fail, get_job
from cxrlabel.results.export import EXPORT_FORMATS, ExportError, ExportOptions, run_export
from cxrlabel.results.reports import FORMATS, build_report, write_table
from cxrlabel.results.splits import SplitError, parse_ratios

report_app = typer.Typer(
    help="Reports on a job: full (per judgment), aggregated (per image), contributors, gold, "
    "and qa (an HTML page of plots).",
    no_args_is_help=True,
)

JobOption = typer.Option(None, "--job", "-j", help="Job name \\[default: pneumonia-pediatric].")
OutOption = typer.Option(..., "--output", "-o", help="File to write.")
FormatOption = typer.Option("csv", "--format", "-f", help=f"One of: {', '.join(FORMATS)}.")


def _table_report(
    ctx: typer.Context, kind: str, job_name: str | None, fmt: str, output: Path
) -> None:
    if fmt not in FORMATS:
        fail(f"unknown --format {fmt!r}; use one of {', '.join(FORMATS)}")
    app = app_context(ctx)
    with app.db.session() as session:
        job, spec = get_job(session, job_name)
        table = build_report(kind, session, job, spec)
    try:
        write_table(table, fmt, output)
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror or exc}")
    console.print(f"{kind} report: {len(table.rows)} rows -> {output}")


@report_app.command("full")
def report_full(
    ctx: typer.Context, output: Path = OutOption, fmt: str = FormatOption, job: str = JobOption
) -> None:
    """One row per judgment (annotators by pseudonym)."""
    _table_report(ctx, "full", job, fmt, output)


@report_app.command("aggregated")
def report_aggregated(
    ctx: typer.Context, output: Path = OutOption, fmt: str = FormatOption, job: str = JobOption
) -> None:
    """One row per image: label, confidence, probabilities, agreement, status, expert label."""
    _table_report(ctx, "aggregated", job, fmt, output)


@report_app.command("contributors")
def report_contributors(
    ctx: typer.Context, output: Path = OutOption, fmt: str = FormatOption, job: str = JobOption
) -> None:
    """One row per annotator: trust, judgments, gold record, speed trips, state."""
    _table_report(ctx, "contributors", job, fmt, output)


@report_app.command("gold")
def report_gold(
    ctx: typer.Context, output: Path = OutOption, fmt: str = FormatOption, job: str = JobOption
) -> None:
    """One row per gold item: accepted answers, times shown, % missed, contests."""
    _table_report(ctx, "gold", job, fmt, output)


@report_app.command("qa")
def report_qa(ctx: typer.Context, output: Path = OutOption, job: str = JobOption) -> None:
    """A self-contained HTML page of QA plots (no network requests)."""
    from cxrlabel.results.qa import collect_qa
    from cxrlabel.results.qa_figures import render_qa_html

    app = app_context(ctx)
    with console.status("drawing QA figures..."), app.db.session() as session:
        job_row, spec = get_job(session, job)
        html = render_qa_html(collect_qa(session, job_row, spec))
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(html, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror or exc}")
    console.print(f"QA report -> {output} ({len(html) // 1024} KiB)")


def export_command(
    ctx: typer.Context,
    output: Path = typer.Option(..., "--output", "-o", help="Folder to create."),
    fmt: str = typer.Option(
        "imagefolder", "--format", "-f", help=f"One of: {', '.join(EXPORT_FORMATS)}."
    ),
    min_confidence: float = typer.Option(
        0.0, "--min-confidence", help="Leave out crowd labels less confident than this."
    ),
    include_review: bool = typer.Option(
        False, "--include-review", help="Also export images waiting for expert review."
    ),
    size: int = typer.Option(None, "--size", help="Longest image side in px (only shrinks)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split assignment."),
    ratios: str = typer.Option("0.8,0.1,0.1", "--ratios", help="train,validation,test."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing export."),
    no_source: bool = typer.Option(
        False,
        "--no-source",
        help="Leave out the admin-only `source` column (original paths, "
        "DICOM UIDs): for a copy shared outside the hospital.",
    ),
    job: str = JobOption,
) -> None:
    """Export the labelled images as an ML dataset with patient-aware train/validation/test
    splits and a datasheet (README.md)."""
    try:
        opts = ExportOptions(
            format=fmt,
            min_confidence=min_confidence,
            include_review=include_review,
            size=size,
            seed=seed,
            ratios=parse_ratios(ratios),
            overwrite=overwrite,
            include_source=not no_source,
        )
        opts.check()
    except (ExportError, SplitError) as exc:
        fail(str(exc))
    app = app_context(ctx)
    progress = Progress(
        TextColumn("exporting images"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )
    task = progress.add_task("export", total=None)
    try:
        with progress, app.db.session() as session:
            job_row, spec = get_job(session, job)
            result = run_export(
                session,
                job_row,
                spec,
                output,
                app.settings.data_dir,
                opts,
                on_start=lambda n: progress.update(task, total=n),
                on_image=lambda: progress.advance(task),
            )
    except ExportError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write the export to {output}: {exc.strerror or exc}")
    sizes = result.split_sizes()
    console.print(
        f"exported {len(result.records)} images to {output} ("
        + ", ".join(f"{k} {v}" for k, v in sizes.items())
        + ")"
    )
    for why, n in sorted(result.skipped.items()):
        console.print(f"  left out {n} {why}")
    for public_id, why in result.failed:
        err_console.print(f"[yellow]warning:[/] {public_id}: {why}", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(report_app, name="report")
    app.command("export")(export_command)
