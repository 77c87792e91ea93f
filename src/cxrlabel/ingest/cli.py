"""``cxrlabel ingest PATH [--job NAME]``: a thin layer over :func:`pipeline.ingest`."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.table import Table

from cxrlabel.context import app_context, console, err_console, fail, get_job
from cxrlabel.ingest.pipeline import IngestBusy, IngestSummary, ingest
from cxrlabel.ingest.sources import SourceError

LISTED_PER_KIND = 20  # the rest is in the ingest_issues table


def register(app: typer.Typer) -> None:
    @app.command("ingest")
    def ingest_command(
        ctx: typer.Context,
        path: Path = typer.Argument(
            ..., help="A folder (searched recursively; split/CLASS/file keeps CLASS as the "
            "reference label), a CSV manifest (path[,label][,patient_id]) or one image file."),
        job: str = typer.Option(None, "--job", help="Job name [default: pneumonia-pediatric]."),
        workers: int = typer.Option(
            min(2, os.cpu_count() or 1), "--workers", min=0,
            help="Worker processes for decoding (0 = decode in this process)."),
    ) -> None:
        """Add images to a job: safe decode, DICOM de-identification, renditions, dedup."""
        app_ctx = app_context(ctx)
        settings = app_ctx.settings
        with app_ctx.db.session() as session:
            job_row, spec = get_job(session, job)
        try:
            summary = ingest(app_ctx.db, settings.data_dir, job_row, spec, path,
                             workers=workers, console=err_console)
        except SourceError as exc:
            fail(str(exc))
        except IngestBusy as exc:
            fail(str(exc))
        print_summary(summary)


def print_summary(summary: IngestSummary) -> None:
    console.print(f"Ingest of {summary.source}: {summary.total} file(s) in "
                  f"{summary.seconds:.1f} s", highlight=False, soft_wrap=True)
    table = Table()
    table.add_column("outcome")
    table.add_column("files", justify="right")
    table.add_row("ingested", str(summary.ingested))
    table.add_row("already present", str(summary.already_present))
    table.add_row("exact duplicates (skipped)", str(len(summary.exact_duplicates)))
    table.add_row("near duplicates (skipped)", str(len(summary.near_duplicates)))
    table.add_row("failed (skipped)", str(len(summary.failed)),
                  style="red" if summary.failed else None)
    table.add_row("total", str(summary.total), style="bold")
    console.print(table)
    for title, records in (("Failed", summary.failed),
                           ("Exact duplicates", summary.exact_duplicates),
                           ("Near duplicates", summary.near_duplicates)):
        if records:
            _print_issues(title, records)
    if summary.burned_in:
        console.print(f"[yellow]warning:[/] {len(summary.burned_in)} DICOM image(s) may have "
                      "burned-in annotations (text in the pixels, possibly identifying); check "
                      "them before annotators see them (Image.burned_in_annotation):")
        for path in summary.burned_in[:LISTED_PER_KIND]:
            console.print(f"  {path}", highlight=False)
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
        table.add_row(record.source_path, reason)
    if len(records) > LISTED_PER_KIND:
        table.add_row(f"... and {len(records) - LISTED_PER_KIND} more", "(see ingest_issues)")
    console.print(table)
