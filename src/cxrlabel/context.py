"""Shared plumbing for CLI commands: settings, database, the current job, clean failures."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from sqlalchemy import select
from sqlalchemy.orm import Session

from cxrlabel.config import DEFAULT_JOB, Settings
from cxrlabel.jobspec import JobSpec, JobSpecError, load_job, parse_job, resolve_job_path
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import Job, utcnow
from cxrlabel.terminal import printable

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one clear line on stderr and exit; the CLI never shows a traceback for user errors."""
    # Escaped: messages quote file and user names, which must print as written, not as markup
    # or raw control characters (cxrlabel/terminal.py).
    err_console.print(f"[bold red]error:[/] {escape(printable(message))}", highlight=False,
                      soft_wrap=True)
    raise typer.Exit(code)


# Shown when a command that only reads or changes data is pointed at a data dir that is not there.
CREATING_COMMANDS = "`cxrlabel ingest PATH`, `cxrlabel demo` or `cxrlabel user add`"


@dataclass
class AppContext:
    settings: Settings
    _db: Database | None = None
    # Set by the commands that start an installation (ingest, demo, user add...): only they may
    # create the data dir and its database.
    may_create: bool = False

    @property
    def db(self) -> Database:
        if self._db is None:
            if not self.may_create:
                self.require_existing_data()
            try:
                self._db = Database(self.settings.database_url)
            except Exception as exc:  # connection refused, bad URL, locked file...
                fail(f"cannot open database {self.settings.database_url!r}: {exc}")
        return self._db

    def require_existing_data(self) -> None:
        """Refuse a data dir that does not exist (a typo would otherwise get a new, empty
        database). An explicit --db is the user's choice and is opened as given."""
        data_dir = self.settings.data_dir
        if self.settings.db_url is None and not data_dir.is_dir():
            fail(f"data dir {str(data_dir)!r} does not exist, so there is no cxrlabel data "
                 f"there; check --data-dir / CXRLABEL_DATA_DIR, or start one with "
                 f"{CREATING_COMMANDS}")


def app_context(ctx: typer.Context, *, creates_data: bool = False) -> AppContext:
    """The database and settings of this invocation (the root callback leaves only Settings).

    ``creates_data``: this command may start a new data dir and database; every other command
    refuses a data dir that does not exist.
    """
    root = ctx.find_root()
    if isinstance(root.obj, Settings):
        root.obj = AppContext(root.obj)
    elif not isinstance(root.obj, AppContext):
        root.obj = AppContext(Settings.from_env())
    root.obj.may_create = root.obj.may_create or creates_data
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
