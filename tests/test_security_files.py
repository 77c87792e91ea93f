"""Files at rest (issue 18): the database and secrets are owner-only, also after a restore, and
a restore checks everything the manifest says before it touches the live data."""

from __future__ import annotations

import io
import json
import stat
import tarfile
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cxrlabel.config import Settings
from cxrlabel.ops.backup import BackupError, create_backup
from cxrlabel.ops.restore import restore_backup
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import User
from security_support import build_env
from web_support import add_user


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    env = build_env(f"sqlite:///{src / 'cxrlabel.sqlite3'}", src)
    env.db.dispose()
    (src / "secret_key").write_text("k" * 40)
    (src / "secrets").mkdir(exist_ok=True)
    (src / "secrets" / "pseudonym_salt").write_text("salt")
    # Its own folder: the session's base temp dir is shared with other modules' backups.
    out = tmp_path_factory.mktemp("archive") / "good.tar"
    create_backup(Settings(data_dir=src), out)
    return out


def rewritten(good: Path, out: Path, change) -> Path:
    """A copy of ``good`` whose manifest was edited by ``change`` (checksums still match)."""
    with tarfile.open(good) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    manifest = json.loads(members["manifest.json"])
    change(manifest)
    members["manifest.json"] = json.dumps(manifest).encode()
    with tarfile.open(out, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def test_new_sqlite_database_is_owner_only(tmp_path):
    path = tmp_path / "fresh.sqlite3"
    db = Database(f"sqlite:///{path}")
    try:
        add_user(db, "ann1")  # a write: the WAL file exists now
    finally:
        db.dispose()
    assert mode(path) == 0o600  # before issue 18: 0644 (world-readable password hashes)
    wal = Path(f"{path}-wal")
    assert not wal.exists() or mode(wal) == 0o600


def test_existing_world_readable_database_is_tightened(tmp_path):
    path = tmp_path / "old.sqlite3"
    Database(f"sqlite:///{path}").dispose()
    path.chmod(0o644)
    Database(f"sqlite:///{path}").dispose()
    assert mode(path) == 0o600


def test_restore_leaves_database_and_secrets_private(archive, tmp_path):
    target = tmp_path / "restored"
    restore_backup(Settings(data_dir=target), archive)
    assert mode(target / "cxrlabel.sqlite3") == 0o600
    assert mode(target / "secret_key") == 0o600
    assert mode(target / "secrets") == 0o700  # before issue 18: 0755
    assert mode(target / "secrets" / "pseudonym_salt") == 0o600


@pytest.mark.parametrize(
    "case, message",
    [
        ("counts", "does not match its manifest"),
        ("revision", "unknown to this cxrlabel"),
    ],
)
def test_restore_checks_the_manifest_before_touching_live_data(archive, tmp_path, case, message):
    target = tmp_path / "live"
    settings = Settings(data_dir=target)
    restore_backup(settings, archive)
    db = Database(settings.database_url)
    add_user(db, "added-after-restore")  # the live data a bad restore must not lose
    db.dispose()

    def change(manifest: dict) -> None:
        if case == "counts":
            manifest["counts"]["users"] += 5
        else:
            manifest["database"]["alembic_revision"] = "9999_from_the_future"

    bad = rewritten(archive, tmp_path / "bad.tar", change)
    with pytest.raises(BackupError, match=message):
        restore_backup(settings, bad, force=True)
    db = Database(settings.database_url)
    try:  # before issue 18 the counts were compared after the live database was replaced
        with db.read_session() as s:
            assert (
                s.scalar(
                    select(func.count())
                    .select_from(User)
                    .where(User.username == "added-after-restore")
                )
                == 1
            )
    finally:
        db.dispose()
