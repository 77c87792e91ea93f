"""Plumbing for CLI commands only (Typer, Rich): settings, database, the current job, clean
failures. The job store itself (``spec_from_job_row``, ``ensure_job``, the spec cache) is
``cxrlabel.jobstore``, shared with the web app and quality."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from sqlalchemy.orm import Session

from cxrlabel.config import DEFAULT_JOB, Settings
from cxrlabel.jobspec import JobSpec, JobSpecError, resolve_job_path
from cxrlabel.jobstore import ensure_job, find_job, job_names, spec_of
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import Job
from cxrlabel.terminal import printable

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one clear line on stderr and exit; the CLI never shows a traceback for user errors."""
    # Escaped: messages quote file and user names, which must print as written, not as markup
    # or raw control characters (cxrlabel/terminal.py).
    err_console.print(
        f"[bold red]error:[/] {escape(printable(message))}", highlight=False, soft_wrap=True
    )
    raise typer.Exit(code)


# Shown when a command that only reads or changes data is pointed at a data dir that is not there.
CREATING_COMMANDS = (
    "`cxrlabel job create NAME`, `cxrlabel ingest PATH`, `cxrlabel demo` or `cxrlabel user add`"
)


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
            fail(
                f"data dir {str(data_dir)!r} does not exist, so there is no cxrlabel data "
                f"there; check --data-dir / CXRLABEL_DATA_DIR, or start one with "
                f"{CREATING_COMMANDS}"
            )


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
        fail(
            f"no job named {wanted!r} (known: {', '.join(known) or 'none'}); create it with "
            f"`cxrlabel job create {wanted}` (add --from FILE.toml for other settings)"
        )
    try:
        return ensure_job(session, path)
    except JobSpecError as exc:
        fail(str(exc))
