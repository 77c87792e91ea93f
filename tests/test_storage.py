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
    return Image(job_id=job.id, source_path="a.jpeg", source_format="jpeg", sha256=sha,
                 pixel_sha256=sha, phash="0" * 16, width=10, height=10,
                 rendition_path="r.jpg", thumb_path="t.jpg")


def test_migrations_create_all_tables(db_url: str) -> None:
    db = Database(db_url)
    tables = set(inspect(db.engine).get_table_names())
    assert {"jobs", "images", "users", "judgments", "gold_items", "audit_log",
            "annotator_states", "pages", "submissions", "alembic_version"} <= tables
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
