"""Engine creation for SQLite (WAL, foreign keys) and PostgreSQL, with automatic migrations."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from cxrlabel.storage.group_commit import DEFAULT_MAX_BATCH, GroupCommitter
from cxrlabel.storage.locks import retry_transient

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
GROUP_COMMIT_ENV = "CXRLABEL_SQLITE_GROUP_COMMIT"
T = TypeVar("T")


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # DBAPI objects
    cursor = dbapi_connection.cursor()
    # WAL lets readers proceed during a write; NORMAL sync is durable under WAL for app crashes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


READ_ONLY_OPTION = "cxrlabel_read_only"


def _sqlite_begin_immediate(conn) -> None:
    if conn.get_execution_options().get(READ_ONLY_OPTION):
        # A read-only unit of work (Database.read_session): a deferred BEGIN takes no write
        # lock, so under WAL it reads a consistent snapshot beside the one writer.
        conn.exec_driver_sql("BEGIN")
        return
    # Take the write lock at BEGIN so two writers queue instead of failing on lock upgrade.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_db_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            make_sqlite_private(Path(parsed.database))
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        # Let SQLAlchemy, not pysqlite, emit BEGIN so our BEGIN IMMEDIATE is used.
        event.listen(
            engine, "connect", lambda c, r: setattr(c, "isolation_level", None), insert=True
        )
        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def make_sqlite_private(path: Path) -> None:
    """The database holds password hashes and labels: owner-only (0600). Created empty with
    that mode before SQLite opens it (an empty file is an empty database), so its -wal and
    -shm files, which SQLite creates with the main file's mode, are private too; an existing
    file (an older install, a restored copy) is tightened."""
    if not path.exists():
        with suppress(FileExistsError):  # another process created it first: tightened below
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for suffix in ("", "-wal", "-shm"):
        file = Path(f"{path}{suffix}")
        try:
            if file.stat().st_mode & 0o077:
                file.chmod(0o600)
        except (FileNotFoundError, PermissionError):
            pass  # not there, or not ours (a read-only copy): nothing to tighten


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(engine: Engine) -> None:
    """Apply all Alembic migrations (idempotent), reusing the engine's connection."""
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")


class Database:
    """An engine plus a session factory; the only object the rest of the app needs."""

    def __init__(
        self, url: str, *, auto_migrate: bool = True, group_commit: int | None = None
    ) -> None:
        self.url = url
        self.engine = create_db_engine(url)
        if auto_migrate:
            migrate(self.engine)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessionmaker = sessionmaker(
            self.engine.execution_options(**{READ_ONLY_OPTION: True}), expire_on_commit=False
        )
        # SQLite has one writer. Threads of this process queue for it on a lock (woken the
        # moment it is free) instead of in SQLite's busy handler, which polls with sleeps of up
        # to 100 ms: under a few dozen concurrent requests that polling left the server idle
        # while requests waited seconds (benchmarks/annotation_loop.py, docs/benchmarks.md).
        # Processes queue the same way on an flock of a lock file beside the database: the
        # workers of `serve --workers N`, or a CLI command beside the server.
        self._write_lock = threading.RLock() if self.is_sqlite else None
        self._write_depth = 0  # changed only by the thread holding _write_lock
        self._write_owner: int | None = None  # the thread holding _write_lock
        self._write_lock_file = _writer_lock_file(self.engine) if self.is_sqlite else None
        # Group commit (storage/group_commit.py) for the write units of ``write``: SQLite on
        # a file only (an in-memory database is one per thread: units must run in their own).
        batch = group_commit_batch() if group_commit is None else group_commit
        self.group_commit: GroupCommitter | None = (
            GroupCommitter(self.engine, self._writer, max_batch=batch)
            if batch > 0 and self._write_lock_file is not None
            else None
        )

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commits on success, rolls back on any error."""
        with self._writer(), self.sessionmaker() as session, session.begin():
            yield session

    def write(self, work: Callable[[Session], T]) -> T:
        """Run ``work(session)`` as one write unit and return what it returns, once committed.

        On SQLite with group commit on, the unit runs in the next group-committed batch
        (storage/group_commit.py): in its own fresh session inside a savepoint, so an exception
        in ``work`` rolls back only its own writes and is raised here; the return value comes
        back only after the batch's ``COMMIT``. ``work`` may run in another request's thread:
        it must take everything it needs as arguments and not touch ``request`` state; loaded
        ORM objects it returns are detached (load what the caller reads inside ``work``).
        Elsewhere (PostgreSQL, group commit off) it is ``with self.session() as s: work(s)``,
        run again after a deadlock or serialization failure (``retry_transient``: on PostgreSQL
        two pages graded side by side can, rarely, lock rows in opposite orders; the rolled-back
        attempt stored nothing), so ``work`` must not have effects outside the database."""
        if self.group_commit is None:

            def attempt() -> T:
                with self.session() as session:
                    return work(session)

            return retry_transient(attempt)
        if self._write_owner == threading.get_ident():
            # The leader of the batch would wait for this thread's write lock: a deadlock.
            raise RuntimeError("Database.write() inside an open write session")
        return self.group_commit.run(work)

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A read-only unit of work: on SQLite it neither takes nor waits for the write lock.
        Use it only for reads: it is never committed (closing it rolls back; loaded objects stay
        usable, detached)."""
        with self._read_sessionmaker() as session:
            yield session

    @contextmanager
    def _writer(self) -> Iterator[None]:
        if self._write_lock is None:
            yield
            return
        with self._write_lock:
            lock_file = self._write_lock_file if self._write_depth == 0 else None
            self._write_depth += 1
            self._write_owner = threading.get_ident()
            try:
                if lock_file is not None:
                    fcntl.flock(lock_file, fcntl.LOCK_EX)  # releases the GIL while it waits
                yield
            finally:
                if lock_file is not None:
                    fcntl.flock(lock_file, fcntl.LOCK_UN)
                self._write_depth -= 1
                if self._write_depth == 0:
                    self._write_owner = None

    def refresh_statistics(self, *tables: str) -> None:
        """PostgreSQL: ANALYZE after a bulk load, so the first queries on a new job get sane
        plans (before autovacuum's first pass a claim query can take seconds instead of
        milliseconds). SQLite: nothing; the engine's queries are written for SQLite without
        statistics, and ``sqlite_stat1`` could change their plans."""
        if self.is_sqlite:
            return
        with self.engine.connect() as conn:
            for table in tables:
                conn.exec_driver_sql(f'ANALYZE "{table}"')
            conn.commit()

    def dispose(self) -> None:
        self.engine.dispose()
        if self._write_lock_file is not None:
            self._write_lock_file.close()
            self._write_lock_file = None


def _writer_lock_file(engine: Engine) -> IO[bytes] | None:
    """SQLite on a file: ``<database>-writer.lock``, on which every process's writers queue
    (``flock``) before ``BEGIN IMMEDIATE``, so that writers of several server processes, or a
    CLI command beside the server, are woken by the kernel the moment the writer before them
    is done, not by SQLite's busy handler, which polls with sleeps of up to 100 ms."""
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return open(f"{database}-writer.lock", "ab")  # held for the engine's life


def group_commit_batch() -> int:
    """The largest group-commit batch from ``CXRLABEL_SQLITE_GROUP_COMMIT``: unset, ``1``,
    ``on``: the default (32); ``0``, ``off``: group commit off (one transaction per unit);
    a number from 2: that many units at most in one transaction."""
    raw = os.environ.get(GROUP_COMMIT_ENV, "").strip().lower()
    if raw in ("", "1", "on", "true", "yes"):
        return DEFAULT_MAX_BATCH
    if raw in ("0", "off", "false", "no"):
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(
            f"{GROUP_COMMIT_ENV}={raw!r}: use 0/off, 1/on, or the largest batch (a number)"
        ) from None
    if value < 0:
        raise ValueError(f"{GROUP_COMMIT_ENV} must not be negative (0 turns it off)")
    return value


def open_database(url: str) -> Database:
    return Database(url)
