"""Shared plumbing for CLI commands: settings, database, the current job, clean failures."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from sqlalchemy import select
from sqlalchemy.orm import Session

from cxrlabel.config import DEFAULT_JOB, Settings
from cxrlabel.jobspec import JobSpec, JobSpecError, load_job, parse_job, resolve_job_path
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import Job, utcnow

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
    """The database and settings of this invocation; the root callback leaves only Settings."""
    root = ctx.find_root()
    if isinstance(root.obj, Settings):
        root.obj = AppContext(root.obj)
    elif not isinstance(root.obj, AppContext):
        root.obj = AppContext(Settings.from_env())
    return root.obj


def spec_from_job_row(job: Job) -> JobSpec:
    return parse_job(job.spec_toml, f"job {job.name} (stored)", _job_base_dir(job.name))


def _job_base_dir(name: str) -> Path:
    try:
        return resolve_job_path(name).parent
    except JobSpecError:
        return Path(".")


def ensure_job(session: Session, spec_path: Path) -> tuple[Job, JobSpec]:
    """Create the job from its file, or update the stored spec when the file changed."""
    spec = load_job(spec_path)
    text = spec_path.read_text(encoding="utf-8")
    digest = hashlib.sha256(text.encode()).hexdigest()
    job = session.scalar(select(Job).where(Job.name == spec.name))
    if job is None:
        job = Job(name=spec.name, spec_toml=text, spec_sha256=digest)
        session.add(job)
        session.flush()
    elif job.spec_sha256 != digest:
        job.spec_toml, job.spec_sha256, job.updated_at = text, digest, utcnow()
    return job, spec


def get_job(session: Session, name: str | None) -> tuple[Job, JobSpec]:
    """A stored job by name; when only the bundled default is asked for, create it on first use."""
    wanted = name or DEFAULT_JOB
    job = session.scalar(select(Job).where(Job.name == wanted))
    if job is not None:
        return job, spec_from_job_row(job)
    try:
        path = resolve_job_path(wanted)
    except JobSpecError:
        known = session.scalars(select(Job.name)).all()
        fail(f"no job named {wanted!r} (known: {', '.join(known) or 'none'})")
    try:
        return ensure_job(session, path)
    except JobSpecError as exc:
        fail(str(exc))
