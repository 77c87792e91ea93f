"""Smoke test of the annotation-loop benchmark (benchmarks/annotation_loop.py).

A real uvicorn server on a free loopback port (SQLite), the real load generator for a few
seconds: every call must succeed and the judgments stored must equal the ones acknowledged, with
no image over its judgment target. Throughput is not asserted (that is what the benchmark
prints, docs/benchmarks.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import annotation_loop  # noqa: E402
from _loop_setup import create_annotators, gold_answers, prepare_job  # noqa: E402
from sqlalchemy import select  # noqa: E402

from cxrlabel.annotate.aliases import Aliases  # noqa: E402
from cxrlabel.config import Settings  # noqa: E402
from cxrlabel.storage.db import Database  # noqa: E402
from cxrlabel.storage.models import Image, ImageStatus, User  # noqa: E402
from cxrlabel.web.app import create_app  # noqa: E402
from live_server import LiveServer  # noqa: E402


@pytest.fixture
def live_server(tmp_path: Path):
    settings = Settings(data_dir=tmp_path)
    db = Database(settings.database_url)
    prepare_job(db, tmp_path, n_images=400, n_gold=150, n_files=3)
    with LiveServer(create_app(settings, db=db)) as base_url:
        yield base_url, tmp_path
    db.dispose()


def test_loop_generator_refuses_non_loopback_urls() -> None:
    with pytest.raises(SystemExit, match="loopback"):
        annotation_loop.require_loopback("http://10.0.0.1:8000")
    with pytest.raises(SystemExit):
        annotation_loop.require_loopback("ftp://127.0.0.1/")
    assert annotation_loop.require_loopback("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"


def test_annotation_loop_stores_exactly_what_it_acknowledged(live_server) -> None:
    url, data_dir = live_server
    args = annotation_loop.parse_args(
        [
            "--url",
            url,
            "--data-dir",
            str(data_dir),
            "--annotators",
            "4",
            "--seconds",
            "4",
            "--request-timeout",
            "20",
        ]
    )
    result = annotation_loop.run(args)
    assert result["errors"]["total"] == 0, result["errors"]
    assert result["annotators_active"] == 4  # everyone passed the quiz
    assert result["loops_completed"] > 0
    assert result["judgments_per_s"] > 0
    # A fast machine reaches the end of the job, where pages hold fewer than items_per_page
    # items: the invariant is one image fetch and one stored answer per item actually served.
    served = result["items_completed"]
    assert 0 < served <= result["loops_completed"] * result["items_per_page"]
    assert result["judgments_acknowledged"] == served
    checked = result["verify"]
    assert checked["stored_judgments"] == checked["acknowledged_judgments"] > 0
    assert checked["images_over_target"] == 0
    assert checked["images_over_max"] == 0
    assert checked["trusted_count_mismatches"] == 0
    assert checked["tainted_judgments"] == 0 and checked["inactive_users"] == 0
    assert result["ok"] is True
    assert result["latency"]["image"]["count"] == served


def test_db_without_data_dir_needs_the_servers_secret_key(tmp_path: Path, monkeypatch, capsys):
    """Annotators see images under per-user aliases keyed by the server's secret key: with
    ``--db`` alone the client cannot know the test-question answers by alias (every quiz
    failed); it must say so, or use ``CXRLABEL_SECRET_KEY`` when given the server's."""
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    monkeypatch.delenv("CXRLABEL_SECRET_KEY", raising=False)
    with pytest.raises(SystemExit):
        annotation_loop.parse_args(["--url", "http://127.0.0.1:9", "--db", url])
    assert "CXRLABEL_SECRET_KEY" in capsys.readouterr().err
    monkeypatch.setenv("CXRLABEL_SECRET_KEY", "the-servers-key")
    args = annotation_loop.parse_args(["--url", "http://127.0.0.1:9", "--db", url])
    db = Database(args.db)
    try:
        prepare_job(db, tmp_path, n_images=4, n_gold=2, n_files=1)
        create_annotators(db, 1, "key")
        answers = gold_answers(db, data_dir=args.data_dir)
        with db.session() as s:
            gold_pid = s.scalar(select(Image.public_id).where(Image.status == ImageStatus.GOLD))
            uid = s.scalar(select(User.id))
    finally:
        db.dispose()
    assert Aliases(b"the-servers-key").image(gold_pid, uid) in answers


def test_spammer_mode_answers_honestly_from_the_reference_and_keeps_removal_on(tmp_path):
    """``--spammers N`` (the removal-under-load benchmark): the job keeps removal for harm and
    the other clients answer the phantoms' true label most of the time."""
    from sqlalchemy import select

    from cxrlabel.storage.models import Judgment

    settings = Settings(data_dir=tmp_path)
    db = Database(settings.database_url)
    prepare_job(db, tmp_path, n_images=300, n_gold=150, n_files=4, harm=True)
    with LiveServer(create_app(settings, db=db)) as url:
        args = annotation_loop.parse_args(
            ["--url", url, "--data-dir", str(tmp_path), "--annotators", "4", "--seconds", "4"]
            + ["--spammers", "2", "--prefix", "spam"]
        )
        result = annotation_loop.run(args)
    assert "removal for harm on" in " ".join(result["spec_changes"])
    assert result["verify"]["ok"] is True
    assert result["removed"]["honest"] == 0
    with db.session() as s:
        rows = s.execute(
            select(User.username, Judgment.answer, Image.reference_label)
            .join(User, User.id == Judgment.user_id)
            .join(Image, Image.id == Judgment.image_id)
            .where(Image.status != ImageStatus.GOLD, User.username.like("spam%"))
        ).all()
    db.dispose()
    names = sorted({name for name, _, _ in rows})
    honest = [a == ref for name, a, ref in rows if name in names[2:]]
    spam = [a == ref for name, a, ref in rows if name in names[:2]]
    assert len(honest) > 60 and len(spam) > 60  # about 480 and 260 in 4 s here: 5+ sd apart
    assert sum(honest) / len(honest) > 0.8 > sum(spam) / len(spam)
