"""Restore of a backup archive made by :mod:`cxrlabel.ops.backup`, and the checks before it.

Restore refuses a non-empty data dir (or a PostgreSQL database that already holds a job)
unless ``force``, checks every checksum, the staged database's soundness, schema revision and
row counts before touching the target, refuses archives that are not cxrlabel backups with
one clear sentence, and leaves the database and secrets owner-only (0600/0700).

Nothing in the target is touched until the whole archive is extracted to a staging folder
next to the data dir and has passed every check.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import create_engine, inspect, text

from cxrlabel.config import Settings
from cxrlabel.ops.backup import (
    ALLOWED_TOP,
    CHUNK,
    DATA_ITEMS,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    BackupError,
    Progress,
    backend_of,
    database_facts,
    libpq_url,
    pg_binary,
    sha256_file,
    sqlite_path,
)


@dataclass
class RestoreSummary:
    manifest: dict[str, Any]
    data_dir: Path
    database_url: str
    files: int
    counts: dict[str, int]


# --- reading and checking an archive ------------------------------------------------------------


def _open_tar(archive: Path) -> tarfile.TarFile:
    if not archive.is_file():
        raise BackupError(f"{archive} does not exist or is not a file")
    try:
        return tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BackupError(
            f"{archive} is not a cxrlabel backup (not a readable tar archive: {exc})"
        ) from None


def _check_manifest(manifest: Any, archive: Path) -> dict[str, Any]:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{archive} is not a cxrlabel backup (its manifest is of another format)")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BackupError(
            f"{archive} was made by a newer cxrlabel (backup format {version}); "
            f"upgrade cxrlabel to restore it"
        )
    db = manifest.get("database")
    files = manifest.get("files")
    if (
        not isinstance(db, dict)
        or db.get("backend") not in ("sqlite", "postgresql")
        or not isinstance(files, list)
        or not all(isinstance(f, dict) and {"path", "size", "sha256"} <= set(f) for f in files)
    ):
        raise BackupError(f"{archive} has a damaged manifest (missing database or file list)")
    for entry in files:
        _check_member_name(str(entry["path"]), archive)
    if db.get("member") not in {f["path"] for f in files}:
        raise BackupError(f"{archive} has a damaged manifest (no database dump listed)")
    return manifest


def _check_member_name(name: str, archive: Path) -> None:
    path = PurePosixPath(name)
    if (
        path.is_absolute()
        or ".." in path.parts
        or not path.parts
        or path.parts[0] not in ALLOWED_TOP
    ):
        raise BackupError(f"{archive} is not a cxrlabel backup (unexpected member {name!r})")


def read_manifest(archive: Path) -> dict[str, Any]:
    """The manifest of a backup archive, checked for shape (not yet the checksums)."""
    archive = Path(archive)
    with _open_tar(archive) as tar:
        try:
            member = tar.getmember(MANIFEST)
            fh = tar.extractfile(member)
            raw = fh.read(16 * CHUNK) if fh else b""
            manifest = json.loads(raw)
        except KeyError:
            raise BackupError(f"{archive} is not a cxrlabel backup (no {MANIFEST})") from None
        except (ValueError, tarfile.TarError, OSError, EOFError) as exc:
            raise BackupError(f"{archive} is damaged: cannot read its {MANIFEST} ({exc})") from None
    return _check_manifest(manifest, archive)


def extract_verified(
    archive: Path, target: Path, progress: Progress | None = None
) -> dict[str, Any]:
    """Extract ``archive`` into the empty folder ``target`` and check every checksum."""
    archive = Path(archive)
    manifest = read_manifest(archive)
    expected = {f["path"]: f for f in manifest["files"]}
    seen: set[str] = set()
    try:
        with _open_tar(archive) as tar:
            for n, member in enumerate(tar):
                if member.name == MANIFEST:
                    continue
                _check_member_name(member.name, archive)
                if member.name not in expected or not member.isfile():
                    raise BackupError(
                        f"{archive} is not a cxrlabel backup (member "
                        f"{member.name!r} is not in its manifest)"
                    )
                tar.extract(member, target, filter="data")
                seen.add(member.name)
                if progress:
                    progress("restore", n, len(expected))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BackupError(f"{archive} is damaged or truncated ({exc})") from None
    missing = sorted(set(expected) - seen)
    if missing:
        raise BackupError(
            f"{archive} is incomplete: {len(missing)} file(s) listed in its "
            f"manifest are missing (first: {missing[0]})"
        )
    for name, entry in expected.items():
        path = target / name
        if path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
            raise BackupError(f"{archive} is damaged: the checksum of {name} does not match")
    return manifest


# --- restore ------------------------------------------------------------------------------------


def _non_empty(folder: Path) -> bool:
    return folder.exists() and any(folder.iterdir())


def _postgres_has_data(url: str) -> bool:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if "jobs" not in inspect(conn).get_table_names():
                return False
            return bool(conn.execute(text("SELECT count(*) FROM jobs")).scalar())
    except Exception as exc:  # connection problems become one sentence
        raise BackupError(f"cannot connect to the target database: {exc}") from None
    finally:
        engine.dispose()


def _restore_sqlite(dump: Path, url: str) -> None:
    target = sqlite_path(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    os.replace(dump, target)


def _restore_postgres(dump: Path, url: str) -> None:
    proc = subprocess.run(
        [
            pg_binary("pg_restore"),
            "--clean",
            "--if-exists",
            "--no-owner",
            "--no-privileges",
            "--single-transaction",
            "--exit-on-error",
            "--dbname",
            libpq_url(url),
            str(dump),
        ],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise BackupError(f"pg_restore failed: {last}")


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    from cxrlabel.storage.db import alembic_config

    return {
        rev.revision
        for rev in ScriptDirectory.from_config(alembic_config("sqlite://")).walk_revisions()
    }


def check_staged_database(dump: Path, backend: str, manifest: dict[str, Any]) -> None:
    """The manifest's database checks, on the staged dump, before anything is replaced.
    SQLite: the file is a sound database whose schema revision this cxrlabel knows and whose
    row counts are the manifest's. PostgreSQL: ``pg_restore --list`` reads the whole dump's
    table of contents (the row counts are compared after the restore, which runs in one
    transaction)."""
    revision = manifest["database"].get("alembic_revision")
    if revision is not None and revision not in known_revisions():
        raise BackupError(
            f"this backup's schema revision {revision!r} is unknown to this "
            "cxrlabel (made by a newer version?); upgrade cxrlabel to restore it"
        )
    if backend != "sqlite":
        proc = subprocess.run(
            [pg_binary("pg_restore"), "--list", str(dump)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if proc.returncode != 0:
            raise BackupError("the backup's PostgreSQL dump cannot be read by pg_restore")
        return
    try:
        with sqlite3.connect(f"file:{dump}?mode=ro", uri=True) as conn:
            ok = conn.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"the backup's database is not a sound SQLite file ({exc})") from None
    if ok != "ok":
        raise BackupError(f"the backup's database fails SQLite's integrity check: {ok}")
    facts = database_facts(f"sqlite:///{dump}")
    wanted = manifest.get("counts", {})
    different = {
        k: (v, facts["counts"].get(k)) for k, v in wanted.items() if facts["counts"].get(k) != v
    }
    if different or facts["alembic_revision"] != revision:
        raise BackupError(
            "the backup's database does not match its manifest (counts or "
            f"schema revision): {different or facts['alembic_revision']}"
        )


def make_private(data_dir: Path, url: str) -> None:
    """Owner-only permissions on what holds secrets: the SQLite database (0600), the
    session-signing key (0600) and ``secrets/`` (0700, its files 0600). Tar extraction and
    ``shutil.move`` left them 0644/0755 after a restore."""
    if backend_of(url) == "sqlite":
        from cxrlabel.storage.db import make_sqlite_private

        make_sqlite_private(sqlite_path(url))
    key = data_dir / "secret_key"
    if key.is_file():
        key.chmod(0o600)
    secrets_dir = data_dir / "secrets"
    if secrets_dir.is_dir():
        secrets_dir.chmod(0o700)
        for path in secrets_dir.rglob("*"):
            path.chmod(0o700 if path.is_dir() else 0o600)


def restore_backup(
    settings: Settings, archive: Path, *, force: bool = False, progress: Progress | None = None
) -> RestoreSummary:
    """Restore ``archive`` into ``settings``' data dir and database, then migrate to head.

    Nothing in the target is touched until the whole archive has been extracted to a staging
    folder and every checksum matched.
    """
    archive = Path(archive)
    manifest = read_manifest(archive)
    url = settings.database_url
    backend = backend_of(url)
    source_backend = manifest["database"]["backend"]
    if source_backend != backend:
        hint = (
            "omit --db to restore into the data dir's SQLite file"
            if source_backend == "sqlite"
            else "pass --db postgresql+psycopg://... for the target database"
        )
        raise BackupError(
            f"this backup holds a {source_backend} database but the target is {backend}; {hint}"
        )
    data_dir = settings.data_dir
    if not force:
        if _non_empty(data_dir):
            raise BackupError(
                f"the data dir {data_dir} is not empty; restore into an empty "
                "folder, or pass --force to replace its contents"
            )
        if backend == "postgresql" and _postgres_has_data(url):
            raise BackupError(
                "the target PostgreSQL database already holds jobs; use an empty "
                "database, or pass --force to replace it"
            )
    data_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".cxrlabel-restore-", dir=data_dir.parent))
    try:
        # Every check first, on the staged copy; only then is the live data touched.
        extract_verified(archive, staging, progress)
        dump = staging / manifest["database"]["member"]
        check_staged_database(dump, backend, manifest)
        if backend == "sqlite":
            _restore_sqlite(dump, url)
        else:
            _restore_postgres(dump, url)
        files = 0
        for item in DATA_ITEMS:
            staged, target = staging / item, data_dir / item
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            if staged.exists():
                shutil.move(str(staged), str(target))
                files += sum(1 for p in target.rglob("*") if p.is_file()) if target.is_dir() else 1
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    make_private(data_dir, url)
    from cxrlabel.storage.db import Database  # migrations bring an older backup to head

    Database(url).dispose()
    counts = database_facts(url)["counts"]
    return RestoreSummary(manifest, data_dir, url, files, counts)
