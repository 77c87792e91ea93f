"""Storage behaves the same on SQLite and a real PostgreSQL 15."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError

from cxrlabel.storage.db import Database
from cxrlabel.storage.models import AuditEvent, Image, Job, User


def _job(session) -> Job:
    job = Job(name="j", spec_toml="x", spec_sha256="0" * 64)
    session.add(job)
    session.flush()
    return job


def _image(job: Job, sha: str) -> Image:
    return Image(
        job_id=job.id,
        source_path="a.jpeg",
        source_format="jpeg",
        sha256=sha,
        pixel_sha256=sha,
        phash="0" * 16,
        width=10,
        height=10,
        rendition_path="r.jpg",
        thumb_path="t.jpg",
    )


def test_migrations_create_all_tables(db_url: str) -> None:
    db = Database(db_url)
    tables = set(inspect(db.engine).get_table_names())
    assert {
        "jobs",
        "images",
        "users",
        "judgments",
        "gold_items",
        "audit_log",
        "annotator_states",
        "pages",
        "submissions",
        "alembic_version",
    } <= tables
    Database(db_url).dispose()  # migrating twice is a no-op
    db.dispose()


def test_sqlite_uses_wal_and_foreign_keys(tmp_path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'x.sqlite3'}")
    with db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    db.dispose()


def test_unique_image_per_job_and_rollback(db_url: str) -> None:
    db = Database(db_url)
    with db.session() as s:
        job = _job(s)
        s.add(_image(job, "a" * 64))
    with pytest.raises(IntegrityError), db.session() as s:
        s.add(_image(job, "a" * 64))
    with db.session() as s:
        assert s.scalar(select(Image).where(Image.sha256 == "a" * 64)) is not None
        assert len(s.scalars(select(Image)).all()) == 1
    db.dispose()


def test_foreign_keys_enforced(db_url: str) -> None:
    db = Database(db_url)
    with pytest.raises(IntegrityError), db.session() as s:
        s.add(_image(Job(id=999, name="ghost", spec_toml="", spec_sha256=""), "b" * 64))
        s.flush()
        # Point at a job that does not exist.
        s.execute(text("UPDATE images SET job_id = 12345"))
    db.dispose()


def test_json_and_timestamps_round_trip(db_url: str) -> None:
    db = Database(db_url)
    with db.session() as s:
        s.add(User(username="u", password_hash="h", role="admin"))
        s.add(AuditEvent(action="test", payload={"a": [1, 2], "b": "é"}))
    with db.session() as s:
        event = s.scalars(select(AuditEvent)).one()
        assert event.payload == {"a": [1, 2], "b": "é"}
        assert event.at is not None
        assert len(s.scalars(select(User).where(User.pseudonym.is_not(None))).all()) == 1
    db.dispose()


_WRITER = """
import sys, time
from sqlalchemy import text
from cxrlabel.storage.db import Database
db = Database(sys.argv[1], auto_migrate=False)
for i in range(int(sys.argv[3])):
    with db.session() as s:
        s.execute(text("INSERT INTO t (who, at) VALUES (:w, :at)"),
                  {"w": sys.argv[2], "at": time.time()})
db.dispose()
"""


def _writer_process(url: str, who: str, n: int):  # a Popen
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parent.parent / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, url, who, str(n)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sqlite_writers_of_other_processes_queue_on_the_lock_file(tmp_path) -> None:
    """Writers of several processes (server workers, a CLI command beside the server) queue
    on an flock of ``<database>-writer.lock``: a writer waits while another process holds it
    (it neither fails nor slips in), and goes on the moment it is released."""
    import time

    url = f"sqlite:///{tmp_path / 'x.sqlite3'}"
    db = Database(url)
    assert (tmp_path / "x.sqlite3-writer.lock").exists()
    with db.session() as s:
        s.execute(text("CREATE TABLE t (who TEXT, at REAL)"))
    with db._writer():  # this process holds the writer lock for a while
        child = _writer_process(url, "child", 1)
        time.sleep(1.5)
        released = time.time()
    assert child.wait(60) == 0, child.stderr.read()
    with db.read_session() as s:
        (at,) = s.execute(text("SELECT at FROM t WHERE who = 'child'")).one()
    assert at >= released  # it wrote only after the lock was released
    db.dispose()


def test_sqlite_concurrent_writer_processes_all_succeed(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'x.sqlite3'}"
    db = Database(url)
    with db.session() as s:
        s.execute(text("CREATE TABLE t (who TEXT, at REAL)"))
    children = [_writer_process(url, f"p{i}", 40) for i in range(3)]
    with db.session() as s:  # and this process writes meanwhile
        s.execute(text("INSERT INTO t (who, at) VALUES ('parent', 0)"))
    for child in children:
        assert child.wait(120) == 0, child.stderr.read()
    with db.read_session() as s:
        counts = dict(s.execute(text("SELECT who, count(*) FROM t GROUP BY who")).all())
    assert counts == {"p0": 40, "p1": 40, "p2": 40, "parent": 1}
    db.dispose()
