"""Backup of a whole installation: database, renditions, keys, in one tar archive.

Archive layout (format ``cxrlabel-backup``, version 1)::

    manifest.json          versions, database kind and schema revision, row counts, and the
                           size + SHA-256 of every other member
    db/cxrlabel.sqlite3    SQLite: a consistent copy made with the online backup API
    db/cxrlabel.pgdump     PostgreSQL: ``pg_dump --format=custom``
    renditions/...         the images annotators see (the database stores paths relative to
                           the data dir, so a restore may go to another folder)
    secret_key             the session-signing key (restored sessions stay valid)
    secrets/...            the DICOM pseudonym salt (re-ingest keeps the same patient ids)

Why this order: the database is copied *first*, then the files. Ingest writes an image's
files before it commits its row, and nothing deletes a committed image's files, so every
rendition the copied database refers to is already on disk when the files are archived; a
backup taken while annotators work is consistent (files of images ingested during the backup
may be included without a row, which is harmless).

Restoring an archive, and checking one before anything is replaced, is in
:mod:`cxrlabel.ops.restore`; this module holds the archive format, the helpers both sides
share and backup creation.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import create_engine, func, inspect, select, text
from sqlalchemy.engine import make_url

from cxrlabel import __version__
from cxrlabel.config import Settings

FORMAT = "cxrlabel-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SQLITE_MEMBER = "db/cxrlabel.sqlite3"
PGDUMP_MEMBER = "db/cxrlabel.pgdump"
# What a backup holds from the data dir, besides the database (paths relative to it).
DATA_ITEMS = ("renditions", "secret_key", "secrets")
ALLOWED_TOP = {"db", *DATA_ITEMS}
COUNTED_TABLES = (
    "jobs",
    "images",
    "gold_items",
    "users",
    "pages",
    "submissions",
    "judgments",
    "audit_log",
)
CHUNK = 1 << 20

Progress = Callable[[str, int, int], None]  # (what, done, total)


class BackupError(Exception):
    """A backup or restore that cannot go ahead; the message says why in one sentence."""


# --- helpers ------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def pg_binary(name: str) -> str:
    """``pg_dump`` / ``pg_restore``: the newest in /usr/lib/postgresql/*/bin, else on PATH
    (a newer client can dump an older server, not the other way round)."""

    def major(p: Path) -> int:
        try:
            return int(p.parts[-3].split(".")[0])
        except ValueError:
            return 0

    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=major)
    if candidates:
        return str(candidates[-1])
    found = shutil.which(name)
    if found is None:
        raise BackupError(
            f"{name} not found: install the PostgreSQL client tools "
            f"(apt-get install postgresql-client)"
        )
    return found


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL (``postgresql+psycopg://...``) as a libpq connection URI."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def backend_of(url: str) -> str:
    name = make_url(url).get_backend_name()
    if name not in ("sqlite", "postgresql"):
        raise BackupError(f"backups support SQLite and PostgreSQL, not {name}")
    return name


def sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError("an in-memory SQLite database cannot be backed up or restored")
    return Path(database)


def database_facts(url: str) -> dict[str, Any]:
    """Schema revision and row counts, read through SQLAlchemy (no migration is run)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            revision = None
            if "alembic_version" in tables:
                revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            counts = {}
            for table in COUNTED_TABLES:
                if table in tables:
                    counts[table] = int(
                        conn.execute(select(func.count()).select_from(text(table))).scalar() or 0
                    )
            server = None
            if engine.dialect.name == "postgresql":
                server = conn.execute(text("SHOW server_version")).scalar()
            else:
                server = sqlite3.sqlite_version
    finally:
        engine.dispose()
    return {"alembic_revision": revision, "counts": counts, "server_version": server}


def _data_files(data_dir: Path) -> Iterator[tuple[str, Path]]:
    """(archive name, path) of every regular file a backup takes from the data dir."""
    for item in DATA_ITEMS:
        path = data_dir / item
        if path.is_file():
            yield item, path
        elif path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink()):
                yield file.relative_to(data_dir).as_posix(), file


# --- backup -------------------------------------------------------------------------------------


def _dump_sqlite(url: str, target: Path) -> None:
    source = sqlite_path(url)
    if not source.is_file():
        raise BackupError(f"the SQLite database {source} does not exist")
    src = sqlite3.connect(source, timeout=60)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)  # a consistent snapshot, even while the server writes
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        if dst.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
            raise BackupError("the copied SQLite database failed its integrity check")
    finally:
        dst.close()
        src.close()


def _first(cursor: Any) -> Any:
    """The first column of a query's one row (each query here returns exactly one)."""
    row = cursor.fetchone()
    if row is None:
        raise RuntimeError("the database returned no row")
    return row[0]


def _dump_postgres_snapshot(url: str, target: Path) -> tuple[str, dict[str, Any]]:
    """pg_dump and the manifest's counts from one exported snapshot, so they always agree."""
    import psycopg

    with psycopg.connect(libpq_url(url)) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        snapshot = _first(conn.execute("SELECT pg_export_snapshot()"))
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
        }
        counts = {
            t: int(_first(conn.execute(f'SELECT count(*) FROM "{t}"')))
            for t in COUNTED_TABLES
            if t in tables
        }
        revision = (
            _first(conn.execute("SELECT version_num FROM alembic_version"))
            if "alembic_version" in tables
            else None
        )
        server = _first(conn.execute("SHOW server_version"))
        tool = _dump_postgres(url, target, snapshot)  # while the snapshot's transaction is open
        conn.rollback()
    return tool, {"alembic_revision": revision, "counts": counts, "server_version": server}


def _dump_postgres(url: str, target: Path, snapshot: str | None = None) -> str:
    tool = pg_binary("pg_dump")
    proc = subprocess.run(
        [
            tool,
            "--format=custom",
            "--no-owner",
            "--no-privileges",
            "--file",
            str(target),
            *(["--snapshot", snapshot] if snapshot else []),
            "--dbname",
            libpq_url(url),
        ],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if proc.returncode != 0:
        raise BackupError(f"pg_dump failed: {proc.stderr.strip().splitlines()[-1:] or proc}")
    version = subprocess.run(
        [tool, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return version


def create_backup(
    settings: Settings, out: Path, *, overwrite: bool = False, progress: Progress | None = None
) -> dict[str, Any]:
    """Write a backup archive of ``settings``' database and data dir to ``out``.

    ``out`` ending in ``.gz``/``.tgz`` is gzip-compressed (renditions are JPEG already, so
    this mostly shrinks the database). Returns the manifest.
    """
    url = settings.database_url
    backend = backend_of(url)
    out = Path(out)
    if out.exists() and not overwrite:
        raise BackupError(f"{out} already exists (choose another name or pass --force)")
    data_dir = settings.data_dir.resolve()
    if out.resolve().is_relative_to(data_dir / "renditions"):
        raise BackupError("write the backup outside the renditions folder")
    if backend == "sqlite" and not sqlite_path(url).is_file():
        raise BackupError(
            f"the SQLite database {sqlite_path(url)} does not exist (wrong --data-dir?)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".cxrlabel-backup-", dir=out.parent) as tmp:
        staged = Path(tmp)
        db_member = SQLITE_MEMBER if backend == "sqlite" else PGDUMP_MEMBER
        db_file = staged / Path(db_member).name
        # The counts must describe the very snapshot that is dumped, not the live database a
        # moment earlier or later: annotators may be submitting while the backup runs.
        try:
            if backend == "sqlite":
                _dump_sqlite(url, db_file)
                tool = f"sqlite3 online backup (SQLite {sqlite3.sqlite_version})"
                facts = database_facts(f"sqlite:///{db_file}")
            else:
                tool, facts = _dump_postgres_snapshot(url, db_file)
        except BackupError:
            raise
        except Exception as exc:  # unreachable server, bad credentials...
            raise BackupError(f"cannot read the database: {exc}") from None
        # Files after the database: see the module docstring.
        members = [(db_member, db_file), *_data_files(data_dir)]
        files = []
        for n, (name, path) in enumerate(members):
            files.append({"path": name, "size": path.stat().st_size, "sha256": sha256_file(path)})
            if progress:
                progress("checksums", n + 1, len(members))
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "cxrlabel_version": __version__,
            "python": platform.python_version(),
            "database": {
                "backend": backend,
                "member": db_member,
                "tool": tool,
                "alembic_revision": facts["alembic_revision"],
                "server_version": facts["server_version"],
            },
            "counts": facts["counts"],
            "secret_key_from_env": bool(os.environ.get("CXRLABEL_SECRET_KEY")),
            "files": files,
        }
        partial = staged / "archive.part"
        mode: Literal["w:gz", "w"] = "w:gz" if out.name.endswith((".gz", ".tgz")) else "w"
        with tarfile.open(partial, mode) as tar:
            blob = json.dumps(manifest, indent=2).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime, info.mode = len(blob), int(datetime.now(UTC).timestamp()), 0o600
            tar.addfile(info, io.BytesIO(blob))
            for n, ((name, path), entry) in enumerate(zip(members, files, strict=True)):
                info = tar.gettarinfo(str(path), arcname=name)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if info.size != entry["size"]:
                    raise BackupError(f"{name} changed while it was being backed up; run again")
                with path.open("rb") as fh:
                    tar.addfile(info, fh)
                if progress:
                    progress("archive", n + 1, len(members))
        os.chmod(partial, 0o600)  # it holds the secret key and the labels
        os.replace(partial, out)
    return manifest
