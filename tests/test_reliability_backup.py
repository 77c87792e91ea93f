"""``cxrlabel backup`` / ``cxrlabel restore``: a running job round-trips exactly (same reports,
same renditions, same keys) on SQLite and PostgreSQL; bad archives and non-empty targets get
one clear sentence and change nothing."""

from __future__ import annotations

import io
import json
import tarfile
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from cxrlabel.cli import app as cli
from cxrlabel.config import Settings
from cxrlabel.ops.backup import BackupError, create_backup
from cxrlabel.ops.restore import read_manifest, restore_backup
from cxrlabel.quality.audit import verify_replay
from cxrlabel.results.reports import REPORT_KINDS, build_report
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import Judgment, Page, PageItem, Submission
from cxrlabel.web.deps import job_and_spec
from security_support import JOB, _answer, build_env
from web_support import add_user, gold_answers, seed_job

pytestmark = pytest.mark.timeout(300)
runner = CliRunner()


def reports(db_url: str) -> dict[str, list[dict]]:
    db = Database(db_url)
    try:
        with db.session() as s:
            job, spec = job_and_spec(s, JOB)
            return {kind: build_report(kind, s, job, spec).rows for kind in REPORT_KINDS}
    finally:
        db.dispose()


def files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def cli_run(data_dir: Path, db_url: str | None, *args: str):
    base = ["--data-dir", str(data_dir)] + (["--db", db_url] if db_url else [])
    return runner.invoke(cli, [*base, *args])


def _roundtrip(
    src_dir: Path, src_url: str | None, dst_dir: Path, dst_url: str | None, archive: Path
) -> None:
    env = build_env(src_url or f"sqlite:///{src_dir / 'cxrlabel.sqlite3'}", src_dir)
    (src_dir / "secret_key").write_text("k" * 40)  # as the server writes it
    env.db.dispose()
    url = src_url or Settings(data_dir=src_dir).database_url
    before = reports(url)
    assert before["full"] and before["aggregated"] and before["gold"]
    r = cli_run(src_dir, src_url, "backup", "-o", str(archive))
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output
    r = cli_run(dst_dir, dst_url, "restore", str(archive))
    assert r.exit_code == 0, r.output
    after = reports(dst_url or Settings(data_dir=dst_dir).database_url)
    assert after == before
    assert files(dst_dir / "renditions") == files(src_dir / "renditions")
    assert (dst_dir / "secret_key").read_text() == "k" * 40
    # Restoring again over the now non-empty target is refused, and changes nothing.
    r = cli_run(dst_dir, dst_url, "restore", str(archive))
    assert r.exit_code == 2 and "not empty" in r.output.replace("\n", " ")
    # --force replaces it: a judgment added after the backup disappears again.
    r = cli_run(dst_dir, dst_url, "restore", str(archive), "--force")
    assert r.exit_code == 0, r.output
    assert reports(dst_url or Settings(data_dir=dst_dir).database_url) == before


def test_backup_restore_roundtrip_sqlite(tmp_path):
    _roundtrip(tmp_path / "src", None, tmp_path / "dst", None, tmp_path / "job.tar.gz")
    manifest = read_manifest(tmp_path / "job.tar.gz")
    assert manifest["database"]["backend"] == "sqlite"
    assert manifest["database"]["alembic_revision"]
    assert manifest["counts"]["judgments"] > 0
    names = {f["path"] for f in manifest["files"]}
    assert "db/cxrlabel.sqlite3" in names and "secret_key" in names
    assert any(n.startswith("renditions/") for n in names)
    assert (tmp_path / "job.tar.gz").stat().st_mode & 0o077 == 0  # holds the secret key


@pytest.mark.postgres
def test_backup_restore_roundtrip_postgres(tmp_path, pg_cluster):
    src_url, dst_url = pg_cluster.create_database(), pg_cluster.create_database()
    _roundtrip(tmp_path / "src", src_url, tmp_path / "dst", dst_url, tmp_path / "job.tar")
    assert read_manifest(tmp_path / "job.tar")["database"]["backend"] == "postgresql"
    # A PostgreSQL backup cannot be restored into SQLite by mistake.
    r = cli_run(tmp_path / "other", None, "restore", str(tmp_path / "job.tar"))
    assert r.exit_code == 2 and "postgresql" in r.output


def test_backup_while_annotators_submit_is_consistent(tmp_path):
    """A backup taken while pages are being submitted restores to a consistent job: every
    stored page whole, the quality log replaying to the stored state."""
    src = tmp_path / "src"
    db = Database(f"sqlite:///{src / 'cxrlabel.sqlite3'}")
    seeded = seed_job(
        db, src, n_work=60, n_gold=12, quiz_length=3, items_per_page=4, jmin=2, jmax=2
    )
    gold = gold_answers(db, seeded.job_id)
    stop = threading.Event()
    submitted = []

    def annotate() -> None:
        for i in range(40):
            if stop.is_set():
                return
            uid = add_user(db, f"busy{i}")
            _answer(db, seeded.job_id, uid, gold)  # quiz
            try:
                submitted.append(_answer(db, seeded.job_id, uid, gold))
            except AssertionError:
                return  # no work left

    annotate_first = 3
    for _ in range(annotate_first):  # some judgments before the backup starts
        uid = add_user(db, f"early{_}")
        _answer(db, seeded.job_id, uid, gold)

    worker = threading.Thread(target=annotate)
    worker.start()
    try:
        manifest = create_backup(Settings(data_dir=src), tmp_path / "live.tar")
    finally:
        stop.set()
        worker.join()
    db.dispose()
    dst = tmp_path / "dst"
    restore_backup(Settings(data_dir=dst), tmp_path / "live.tar")
    db = Database(Settings(data_dir=dst).database_url)
    try:
        with db.session() as s:
            job, spec = job_and_spec(s, JOB)
            assert verify_replay(s, job, spec).matched
            judgments = s.scalar(select(func.count(Judgment.id)))
            per_page = dict(
                s.execute(select(Judgment.page_id, func.count()).group_by(Judgment.page_id)).all()
            )
            items = dict(
                s.execute(
                    select(PageItem.page_id, func.count())
                    .where(PageItem.page_id.in_(list(per_page)))
                    .group_by(PageItem.page_id)
                ).all()
            )
            assert per_page == items  # no half-stored page
            assert s.scalar(select(func.count(Submission.id))) == s.scalar(
                select(func.count(Page.id)).where(Page.submitted_at.is_not(None))
            )
    finally:
        db.dispose()
    assert judgments == manifest["counts"]["judgments"]


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def good_archive(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    env = build_env(f"sqlite:///{src / 'cxrlabel.sqlite3'}", src)
    env.db.dispose()
    out = tmp_path_factory.mktemp("archive") / "good.tar"  # own folder: modules share basetemp
    create_backup(Settings(data_dir=src), out)
    return out


def _damaged(good: Path, tmp: Path, edit) -> Path:
    members = {}
    with tarfile.open(good) as tar:
        for m in tar.getmembers():
            members[m.name] = tar.extractfile(m).read()
    edit(members)
    return _tar(tmp / "bad.tar", members)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("not a tar", "not a cxrlabel backup"),
        ("truncated", "damaged|incomplete"),
        ("foreign tar", "no manifest.json"),
        ("foreign manifest", "another format"),
        ("newer format", "newer cxrlabel"),
        ("checksum", "checksum"),
        ("traversal", "unexpected member"),
        ("extra member", "not in its manifest"),
        ("missing member", "incomplete"),
    ],
)
def test_bad_archives_are_refused_clearly(good_archive, tmp_path, case, expected):
    def manifest_edit(change):
        def edit(m: dict[str, bytes]) -> None:
            data = json.loads(m["manifest.json"])
            change(data, m)
            m["manifest.json"] = json.dumps(data).encode()

        return edit

    if case == "not a tar":
        bad = tmp_path / "x.tar"
        bad.write_bytes(b"PK\x03\x04 this is a zip file, not a backup" * 10)
    elif case == "truncated":
        bad = tmp_path / "x.tar"
        bad.write_bytes(good_archive.read_bytes()[:-20000])
    elif case == "foreign tar":
        bad = _tar(tmp_path / "x.tar", {"etc/passwd": b"root:x:0:0"})
    elif case == "foreign manifest":
        bad = _tar(tmp_path / "x.tar", {"manifest.json": b'{"name": "something else"}'})
    elif case == "newer format":
        bad = _damaged(
            good_archive, tmp_path, manifest_edit(lambda d, m: d.update(format_version=99))
        )
    elif case == "checksum":

        def flip(m: dict[str, bytes]) -> None:
            name = next(n for n in m if n.startswith("renditions/"))
            m[name] = m[name][:-1] + bytes([m[name][-1] ^ 1])

        bad = _damaged(good_archive, tmp_path, flip)
    elif case == "traversal":
        bad = _damaged(
            good_archive,
            tmp_path,
            manifest_edit(
                lambda d, m: d["files"].append({"path": "../../evil", "size": 1, "sha256": "0"})
            ),
        )
    elif case == "extra member":
        bad = _damaged(good_archive, tmp_path, lambda m: m.update({"renditions/x.jpg": b"x"}))
    else:
        bad = _damaged(
            good_archive,
            tmp_path,
            lambda m: m.pop(next(n for n in m if n.startswith("renditions/"))),
        )
    target = tmp_path / "target"
    with pytest.raises(BackupError, match=expected):
        restore_backup(Settings(data_dir=target), bad)
    assert not target.exists() or not any(target.iterdir())  # nothing was written
    assert not (tmp_path / "evil").exists()
    r = cli_run(target, None, "restore", str(bad))
    assert r.exit_code == 2 and "error:" in r.output and "Traceback" not in r.output


def test_backup_refuses_to_overwrite_and_missing_database(tmp_path, good_archive):
    r = cli_run(tmp_path / "empty", None, "backup", "-o", str(good_archive))
    assert r.exit_code == 2 and "already exists" in r.output
    r = cli_run(tmp_path / "nothing-here", None, "backup", "-o", str(tmp_path / "b.tar"))
    assert r.exit_code == 2 and "does not exist" in r.output
    assert not (tmp_path / "b.tar").exists()
