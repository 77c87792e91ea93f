"""``Database.refresh_statistics``: ANALYZE after bulk loads on PostgreSQL, nothing on SQLite."""

from __future__ import annotations

from sqlalchemy import text

from cxrlabel.storage.db import Database


def test_postgres_tables_are_analyzed(pg_url):
    db = Database(pg_url)
    try:
        db.refresh_statistics("images", "judgments")
        with db.engine.connect() as conn:
            analyzed = dict(
                conn.execute(
                    text(
                        "SELECT relname, last_analyze IS NOT NULL FROM pg_stat_user_tables "
                        "WHERE relname IN ('images', 'judgments')"
                    )
                ).all()
            )
    finally:
        db.dispose()
    assert analyzed == {"images": True, "judgments": True}


def test_sqlite_keeps_no_statistics(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'stats.sqlite3'}")
    try:
        db.refresh_statistics("images")
        with db.engine.connect() as conn:
            has_stats = conn.execute(
                text("SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'")
            ).scalar()
    finally:
        db.dispose()
    assert has_stats == 0
