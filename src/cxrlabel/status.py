"""``cxrlabel status``: what is in the data dir, as a table or as stable JSON.

JSON keys (stable; documented in docs/cli.md):
``images`` (int), ``images_by_status`` ({status: n}), ``images_by_reference_label``
({label: n}, ``"none"`` for unlabeled), ``skipped_duplicates`` (int), ``duplicates_by_kind``
({exact_duplicate, near_duplicate}), ``failed`` (int), ``gold`` (int), ``judgments``
({total, trusted, tainted, gold}), ``annotators`` ({status: n}), ``review_queue`` (int),
``jobs`` ([names]).
"""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cxrlabel.context import app_context, console, fail
from cxrlabel.storage.models import (
    AnnotatorState,
    GoldItem,
    Image,
    ImageStatus,
    IngestIssue,
    Job,
    Judgment,
)


def _grouped(session: Session, column, where: list) -> dict[str, int]:
    stmt = select(column, func.count()).select_from(column.class_).where(*where).group_by(column)
    return {str(key) if key is not None else "none": n for key, n in session.execute(stmt)}


def collect_status(session: Session, job_name: str | None = None) -> dict[str, Any]:
    jobs = session.scalars(select(Job).order_by(Job.id)).all()
    if job_name is not None:
        jobs = [j for j in jobs if j.name == job_name]
        if not jobs:
            raise LookupError(job_name)
    ids = [j.id for j in jobs]
    img = [Image.job_id.in_(ids)]
    issues = _grouped(session, IngestIssue.kind, [IngestIssue.job_id.in_(ids)])
    jdg = [Judgment.job_id.in_(ids)]
    count = lambda stmt: session.scalar(stmt) or 0  # noqa: E731
    judgments = {
        "total": count(select(func.count(Judgment.id)).where(*jdg)),
        "trusted": count(
            select(func.count(Judgment.id)).where(*jdg, ~Judgment.tainted, ~Judgment.is_gold)
        ),
        "tainted": count(select(func.count(Judgment.id)).where(*jdg, Judgment.tainted)),
        "gold": count(select(func.count(Judgment.id)).where(*jdg, Judgment.is_gold)),
    }
    by_status = _grouped(session, Image.status, img)
    return {
        "jobs": [j.name for j in jobs],
        "images": sum(by_status.values()),
        "images_by_status": by_status,
        "images_by_reference_label": _grouped(session, Image.reference_label, img),
        "skipped_duplicates": issues.get("exact_duplicate", 0) + issues.get("near_duplicate", 0),
        "duplicates_by_kind": {k: issues.get(k, 0) for k in ("exact_duplicate", "near_duplicate")},
        "failed": issues.get("failed", 0),
        "gold": count(
            select(func.count(GoldItem.id)).where(GoldItem.job_id.in_(ids), GoldItem.active)
        ),
        # retired after too many reveals (design/exposure.py) or switched off
        "gold_inactive": count(
            select(func.count(GoldItem.id)).where(
                GoldItem.job_id.in_(ids), GoldItem.active.is_(False)
            )
        ),
        "judgments": judgments,
        "annotators": _grouped(session, AnnotatorState.status, [AnnotatorState.job_id.in_(ids)]),
        "review_queue": by_status.get(ImageStatus.NEEDS_REVIEW, 0),
    }


def _print_table(status: dict[str, Any]) -> None:
    table = Table(title=f"cxrlabel status — {', '.join(status['jobs']) or 'no jobs yet'}")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("images", str(status["images"]))
    for key, n in sorted(status["images_by_status"].items()):
        table.add_row(f"  status {key}", str(n))
    for key, n in sorted(status["images_by_reference_label"].items()):
        table.add_row(f"  reference label {key}", str(n))
    table.add_row("duplicates skipped", str(status["skipped_duplicates"]))
    table.add_row("files failed", str(status["failed"]))
    table.add_row("gold items", str(status["gold"]))
    for key, n in status["judgments"].items():
        table.add_row(f"judgments {key}", str(n))
    for key, n in sorted(status["annotators"].items()):
        table.add_row(f"annotators {key}", str(n))
    table.add_row("expert review queue", str(status["review_queue"]))
    console.print(table)


def status_command(
    ctx: typer.Context,
    job: str = typer.Option(None, "--job", help="Only this job \\[default: all jobs]."),
    as_json: bool = typer.Option(False, "--json", help="Emit one JSON object (stable keys)."),
) -> None:
    """Counts of images, duplicates, failures, judgments and annotators."""
    app = app_context(ctx)
    with app.db.session() as session:
        try:
            status = collect_status(session, job)
        except LookupError:
            fail(f"no job named {job!r}")
    if as_json:
        typer.echo(json.dumps(status, indent=2, sort_keys=True))
    else:
        _print_table(status)


def register(app: typer.Typer) -> None:
    app.command("status")(status_command)
