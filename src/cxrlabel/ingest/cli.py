"""``cxrlabel ingest PATH [--job NAME]``: a thin layer over :func:`pipeline.ingest`."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import typer
from rich.table import Table

from cxrlabel.context import app_context, console, err_console, fail, get_job
from cxrlabel.ingest.dicomweb import (
    DicomWebClient,
    DicomWebQuery,
    discover_dicomweb,
    is_dicomweb,
)
from cxrlabel.ingest.pipeline import IngestBusy, IngestSummary, ingest
from cxrlabel.ingest.sources import SourceError, require_exists
from cxrlabel.terminal import plain

LISTED_PER_KIND = 20  # the rest is in the ingest_issues table


held_app = typer.Typer(
    help="Images held for review (burned-in text in DICOM pixels).", no_args_is_help=True
)


@held_app.command("list")
def held_list(ctx: typer.Context, job: str = typer.Option(None, "--job", help="Job name.")) -> None:
    """List the images held for review (not served, never gold) with their source files."""
    from cxrlabel.ingest.held import held_images

    with app_context(ctx).db.session() as s:
        job_row, _spec = get_job(s, job)
        rows = held_images(s, job_row)
        table = Table(title=f"{len(rows)} held image(s)", title_justify="left")
        table.add_column("public id")
        table.add_column("source file", overflow="fold")
        for image in rows:
            table.add_row(plain(image.public_id), plain(image.source_path))
    console.print(table)


@held_app.command("release")
def held_release(
    ctx: typer.Context,
    images: list[str] = typer.Argument(None, help="Public ids or source paths to release."),
    all_held: bool = typer.Option(False, "--all", help="Release every held image of the job."),
    job: str = typer.Option(None, "--job", help="Job name."),
) -> None:
    """Release held images to annotators, after checking their burned-in text."""
    from cxrlabel.ingest.held import HeldError, release_held

    if not images and not all_held:
        fail("name the images to release (public id or source path), or pass --all")
    try:
        with app_context(ctx).db.session() as s:
            job_row, _spec = get_job(s, job)
            released = len(release_held(s, job_row, images or [], release_all=all_held))
    except HeldError as exc:
        fail(str(exc))
    console.print(f"released {released} image(s) to the work queue", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(held_app, name="held")

    @app.command("ingest")
    def ingest_command(
        ctx: typer.Context,
        path: str = typer.Argument(
            ...,
            help="A folder (searched recursively; split/CLASS/file keeps CLASS as the "
            "reference label), a CSV manifest (path[,label][,patient_id]), one image file, or "
            "a PACS: dicomweb+http://HOST:PORT/PATH (QIDO-RS + WADO-RS; re-runs fetch only "
            "new instances).",
        ),
        job: str = typer.Option(None, "--job", help="Job name \\[default: pneumonia-pediatric]."),
        workers: int = typer.Option(
            min(2, os.cpu_count() or 1),
            "--workers",
            min=0,
            help="Worker processes for decoding (0 = decode in this process).",
        ),
        since: datetime = typer.Option(
            None, "--since", formats=["%Y-%m-%d"], help="DICOMweb: studies on or after this date."
        ),
        until: datetime = typer.Option(
            None, "--until", formats=["%Y-%m-%d"], help="DICOMweb: studies on or before this date."
        ),
        modality: str = typer.Option(
            None, "--modality", help="DICOMweb: only series of this modality (CR, DX)."
        ),
        study: str = typer.Option(None, "--study", help="DICOMweb: one StudyInstanceUID."),
    ) -> None:
        """Add images to a job: safe decode, DICOM de-identification, renditions, dedup."""
        query = DicomWebQuery(since and since.date(), until and until.date(), modality, study)
        try:  # before the data dir is opened: a refused source must not start an installation
            _check_source(path, query)
        except SourceError as exc:
            fail(str(exc))
        app_ctx = app_context(ctx, creates_data=True)
        settings = app_ctx.settings
        with app_ctx.db.session() as session:
            job_row, spec = get_job(session, job)
        try:
            summary = _run(app_ctx.db, settings.data_dir, job_row, spec, path, query, workers)
        except SourceError as exc:
            fail(str(exc))
        except IngestBusy as exc:
            fail(str(exc))
        print_summary(summary)
        problem = summary.nothing_usable()
        if summary.total and problem:  # e.g. a text file, a folder of unreadable files
            fail(f"{problem} (reasons above)", code=1)


def _check_source(path: str, query: DicomWebQuery) -> None:
    if is_dicomweb(path):
        return
    if query != DicomWebQuery():
        raise SourceError(
            "--since/--until/--modality/--study apply to a dicomweb+http:// source only"
        )
    require_exists(Path(path))


def _run(
    db, data_dir: Path, job_row, spec, path: str, query: DicomWebQuery, workers: int
) -> IngestSummary:
    if not is_dicomweb(path):
        return ingest(db, data_dir, job_row, spec, Path(path), workers=workers, console=err_console)
    client = DicomWebClient.from_source(path)
    try:
        err_console.print(f"searching {client.base_url} (QIDO-RS) ...", highlight=False)
        items = discover_dicomweb(client, query)
        err_console.print(
            f"{len(items)} instance(s) selected; fetching the new ones (WADO-RS)", highlight=False
        )
        summary = ingest(
            db, data_dir, job_row, spec, path, workers=workers, console=err_console, items=items
        )
    finally:
        client.close()
    console.print(
        f"downloaded {client.retrieved} instance(s); {summary.already_present} "
        "pulled before were not fetched again",
        highlight=False,
    )
    return summary


def print_summary(summary: IngestSummary) -> None:
    # File names are printed as Text (never parsed as markup, control characters escaped).
    console.print(
        plain(f"Ingest of {summary.source}: {summary.total} file(s) in {summary.seconds:.1f} s"),
        highlight=False,
        soft_wrap=True,
    )
    table = Table()
    table.add_column("outcome")
    table.add_column("files", justify="right")
    table.add_row("ingested", str(summary.ingested))
    table.add_row("already present", str(summary.already_present))
    table.add_row("exact duplicates (skipped)", str(len(summary.exact_duplicates)))
    table.add_row("near duplicates (skipped)", str(len(summary.near_duplicates)))
    table.add_row(
        "failed (skipped)", str(len(summary.failed)), style="red" if summary.failed else None
    )
    table.add_row("total", str(summary.total), style="bold")
    console.print(table)
    for title, records in (
        ("Failed", summary.failed),
        ("Exact duplicates", summary.exact_duplicates),
        ("Near duplicates", summary.near_duplicates),
    ):
        if records:
            _print_issues(title, records)
    if summary.burned_in:
        console.print(
            f"[yellow]warning:[/] {len(summary.burned_in)} DICOM image(s) may have "
            "burned-in annotations (text in the pixels, possibly identifying): held "
            "for review, not served and never gold; check them, then `cxrlabel held "
            "release` (list: `cxrlabel held list`):"
        )
        for path in summary.burned_in[:LISTED_PER_KIND]:
            console.print(plain(f"  {path}"), highlight=False)
    if summary.swept_orphans:
        console.print(f"removed {summary.swept_orphans} leftover file(s) of an interrupted run")


def _print_issues(title: str, records: list) -> None:
    table = Table(title=title, title_justify="left")
    table.add_column("file", overflow="fold")
    table.add_column("reason", overflow="fold")
    for record in records[:LISTED_PER_KIND]:
        reason = record.reason
        if record.duplicate_of_path:
            reason += f" -> {record.duplicate_of_path}"
        table.add_row(plain(record.source_path), plain(reason))
    if len(records) > LISTED_PER_KIND:
        table.add_row(f"... and {len(records) - LISTED_PER_KIND} more", "(see ingest_issues)")
    console.print(table)
