"""CLI: ``cxrlabel backup -o FILE`` and ``cxrlabel restore FILE [--force]``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from cxrlabel.context import app_context, console, fail


def _progress_bar() -> tuple[Progress, Callable[[str, int, int], None]]:
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
    )
    tasks: dict[str, TaskID] = {}

    def advance(what: str, done: int, total: int) -> None:
        if what not in tasks:
            tasks[what] = bar.add_task(what, total=total)
        bar.update(tasks[what], completed=done, total=total)

    return bar, advance


def backup(
    ctx: typer.Context,
    output: Path = typer.Option(
        ..., "-o", "--output", help="Archive to write (.tar, or .tar.gz to compress)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite OUTPUT if it exists."),
) -> None:
    """Back up the database, renditions and keys of this installation into one archive.

    Safe while the server runs: the database is copied as one consistent snapshot (SQLite
    online backup, or pg_dump), then the files.
    """
    from cxrlabel.ops.backup import BackupError, create_backup

    settings = app_context(ctx).settings
    bar, advance = _progress_bar()
    try:
        with bar:
            manifest = create_backup(settings, output, overwrite=force, progress=advance)
    except BackupError as exc:
        fail(str(exc))
    counts = manifest["counts"]
    size = output.stat().st_size / 1e6
    console.print(
        f"wrote [bold]{output}[/] ({size:.1f} MB): {manifest['database']['backend']} database "
        f"with {counts.get('jobs', 0)} job(s), {counts.get('images', 0)} images, "
        f"{counts.get('judgments', 0)} judgments; {len(manifest['files']) - 1} files"
    )


def restore(
    ctx: typer.Context,
    archive: Path = typer.Argument(..., help="A backup written by 'cxrlabel backup'."),
    force: bool = typer.Option(
        False, "--force", help="Replace a non-empty data dir / database (stop the server first)."
    ),
) -> None:
    """Restore a backup into the data dir (and --db database); refuses to overwrite unless
    --force. Every checksum is verified before anything is replaced."""
    from cxrlabel.ops.backup import BackupError
    from cxrlabel.ops.restore import restore_backup

    settings = app_context(ctx).settings
    bar, advance = _progress_bar()
    try:
        with bar:
            summary = restore_backup(settings, archive, force=force, progress=advance)
    except BackupError as exc:
        fail(str(exc))
    counts = summary.counts
    console.print(
        f"restored [bold]{archive}[/] (made {summary.manifest['created_at']}) into "
        f"{summary.data_dir}: {counts.get('jobs', 0)} job(s), {counts.get('images', 0)} images, "
        f"{counts.get('judgments', 0)} judgments, {summary.files} files"
    )


def register(app: typer.Typer) -> None:
    app.command("backup")(backup)
    app.command("restore")(restore)
