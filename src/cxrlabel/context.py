"""Plumbing for CLI commands only (Typer, Rich): settings, database, the current job, clean
failures. The job store itself (``spec_from_job_row``, ``ensure_job``, the spec cache) is
``cxrlabel.jobstore``, shared with the web app and quality."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

import typer
from rich.console import Console
from sqlalchemy.orm import Session

from cxrlabel.config import DEFAULT_JOB, Settings
from cxrlabel.jobspec import JobSpec, JobSpecError, resolve_job_path
from cxrlabel.jobstore import ensure_job, find_job, job_names, spec_of
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import Job

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one clear line on stderr and exit; the CLI never shows a traceback for user errors."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@dataclass
class AppContext:
    settings: Settings
    _db: Database | None = None

    @property
    def db(self) -> Database:
        if self._db is None:
            try:
                self._db = Database(self.settings.database_url)
            except Exception as exc:  # connection refused, bad URL, locked file...
                fail(f"cannot open database {self.settings.database_url!r}: {exc}")
        return self._db


def app_context(ctx: typer.Context) -> AppContext:
    root = ctx.find_root()
    if not isinstance(root.obj, AppContext):
        root.obj = AppContext(Settings.from_env())
    return root.obj


def get_job(session: Session, name: str | None) -> tuple[Job, JobSpec]:
    """A stored job by name; when only the bundled default is asked for, create it on first use."""
    wanted = name or DEFAULT_JOB
    job = find_job(session, wanted)
    if job is not None:
        return job, spec_of(job)
    try:
        path = resolve_job_path(wanted)
    except JobSpecError:
        known = job_names(session)
        fail(f"no job named {wanted!r} (known: {', '.join(known) or 'none'})")
    try:
        return ensure_job(session, path)
    except JobSpecError as exc:
        fail(str(exc))
