"""Reports (full, aggregated, contributors, gold) against hand-checked numbers."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxrlabel.cli import app
from cxrlabel.jobstore import spec_from_job_row
from cxrlabel.results.reports import (
    aggregated_report,
    build_report,
    contributors_report,
    full_report,
    gold_report,
    table_to_csv,
)
from cxrlabel.storage.db import Database
from results_fixture import TAINT_REASON, build_job, pseudonym, pub


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    data_dir = tmp_path_factory.mktemp("reports-data")
    db = Database(f"sqlite:///{data_dir / 'cxrlabel.sqlite3'}")
    with db.session() as s:
        build_job(s, data_dir)
    yield db, data_dir
    db.dispose()


def _by(rows: list[dict], key: str) -> dict:
    return {r[key]: r for r in rows}


def _tables(db: Database):
    with db.session() as s:
        from sqlalchemy import select

        from cxrlabel.storage.models import Job

        job = s.scalar(select(Job))
        spec = spec_from_job_row(job)
        return {
            kind: build_report(kind, s, job, spec)
            for kind in ("full", "aggregated", "contributors", "gold")
        }


def test_full_report_one_row_per_judgment(built) -> None:
    db, _ = built
    with db.session() as s:
        from sqlalchemy import select

        from cxrlabel.storage.models import Job

        table = full_report(s, s.scalar(select(Job)))
    assert len(table.rows) == 19
    assert [r["annotator"] for r in table.rows].count(pseudonym("C")) == 5
    b_w3 = next(
        r for r in table.rows if r["annotator"] == pseudonym("B") and r["image"] == pub("w3")
    )
    assert (b_w3["answer"], b_w3["certainty"], b_w3["quality_flag"]) == (
        "NORMAL",
        "cant_tell",
        "unreadable",
    )
    assert (b_w3["trust_at_time"], b_w3["trust_now"]) == (0.75, 0.8)
    assert b_w3["tainted"] is False and b_w3["taint_reason"] is None
    assert b_w3["seconds"] == 5.0
    assert b_w3["submitted_at"].endswith("Z") and b_w3["served_at"] < b_w3["submitted_at"]
    assert b_w3["source"] == "/uploads/scan-0003.dcm"  # the original path, for the admin
    c_rows = [r for r in table.rows if r["annotator"] == pseudonym("C")]
    assert all(r["tainted"] and r["taint_reason"] == TAINT_REASON for r in c_rows)
    assert all(r["trust_now"] == 0.4 for r in c_rows)
    gold_rows = [r for r in table.rows if r["is_gold"]]
    assert len(gold_rows) == 6
    assert sum(bool(r["gold_missed"]) for r in gold_rows) == 3  # B:g1, C:g1, C:g2
    assert sum(r["is_quiz"] for r in table.rows) == 2
    # usernames never appear, only pseudonyms
    assert "user-" not in table_to_csv(table)


def test_aggregated_report_hand_checked(built) -> None:
    db, _ = built
    rows = _by(_tables(db)["aggregated"].rows, "image")
    assert len(rows) == 8
    expected = {  # status, label, source, agreement, counted, trusted
        "w1": ("finalised", "PNEUMONIA", "crowd", 1.0, 2, 2),
        "w2": ("finalised", "NORMAL", "crowd", 0.5, 2, 2),
        "w3": ("needs_review", "PNEUMONIA", "crowd", 0.5, 2, 2),
        "w4": ("expert", "PNEUMONIA", "expert", 0.0, 2, 2),
        "w5": ("needs_judgments", None, "none", None, 0, 0),
        "w6": ("finalised", "NORMAL", "crowd", 1.0, 2, 2),
        "g1": ("gold", "PNEUMONIA", "gold", 0.5, 2, 0),
        "g2": ("gold", "NORMAL", "gold", 1.0, 2, 0),
    }
    for key, (status, label, source, agreement, counted, trusted) in expected.items():
        row = rows[pub(key)]
        assert (row["status"], row["label"], row["label_source"]) == (status, label, source), key
        assert row["agreement"] == agreement, key
        assert (row["counted_judgments"], row["trusted_judgments"]) == (counted, trusted), key
    w4 = rows[pub("w4")]
    # The engine stored the expert's label on w4; the crowd's own view is recomputed.
    assert (w4["crowd_label"], w4["confidence"]) == ("NORMAL", 1.0)
    assert w4["expert_label"] == "PNEUMONIA" and "right lower lobe" in w4["expert_reason"]
    assert w4["reference_label"] == "PNEUMONIA"
    w1 = rows[pub("w1")]
    assert (w1["p_PNEUMONIA"], w1["p_NORMAL"], w1["method"]) == (0.95, pytest.approx(0.05), "trust")
    assert rows[pub("g1")]["is_gold"] and not w1["is_gold"]
    assert rows[pub("w5")]["p_NORMAL"] is None and rows[pub("g2")]["patient_id"] is None
    assert rows[pub("w4")]["source"] == "/other/IM-0004-0001.jpeg"


def test_contributors_report_hand_checked(built) -> None:
    db, _ = built
    rows = _by(_tables(db)["contributors"].rows, "annotator")
    assert set(rows) == {pseudonym(w) for w in "ABCD"}
    a, b, c, d = (rows[pseudonym(w)] for w in "ABCD")
    assert (a["trust"], a["judgments"], a["gold_accuracy"], a["median_seconds"]) == (
        0.9,
        7,
        1.0,
        10.0,
    )
    assert (b["gold_seen"], b["gold_missed"], b["gold_contested"], b["speed_trips"]) == (2, 1, 1, 1)
    assert (b["gold_accuracy"], b["median_seconds"], b["flags"]) == (
        0.5,
        5.0,
        {"distribution": "ok"},
    )
    assert (c["state"], c["state_reason"], c["tainted_judgments"]) == (
        "removed",
        "trust below 0.7",
        5,
    )
    assert (c["gold_forgiven"], c["gold_accuracy"], c["speed_trips"]) == (1, 0.0, 3)
    assert (d["state"], d["judgments"], d["gold_accuracy"], d["median_seconds"]) == (
        "quiz",
        0,
        None,
        None,
    )
    assert a["quiz_passed_at"] == "2024-05-01T09:30:00Z" and d["quiz_passed_at"] is None


def test_gold_report_hand_checked(built) -> None:
    db, _ = built
    rows = _by(_tables(db)["gold"].rows, "image")
    g1, g2 = rows[pub("g1")], rows[pub("g2")]
    assert (g1["accepted_answers"], g1["reason"], g1["difficulty"]) == (
        ["PNEUMONIA"],
        "obvious consolidation",
        "easy",
    )
    assert (g1["times_shown"], g1["times_answered"], g1["missed"], g1["pct_missed"]) == (
        4,
        3,
        2,
        66.7,
    )
    assert (g1["contested"], g1["pct_contested"], g1["contests_open"], g1["contests_upheld"]) == (
        2,
        66.7,
        1,
        1,
    )
    assert g1["resolution"] == "1 open, 1 upheld"
    assert (g2["times_shown"], g2["missed"], g2["pct_missed"], g2["contests_changed"]) == (
        3,
        1,
        33.3,
        1,
    )
    assert g2["resolution"] == "1 changed"


def test_reports_identical_on_postgres(db_url: str, tmp_path: Path, built) -> None:
    """The same state gives the same reports on SQLite and PostgreSQL (timestamps included)."""
    sqlite_db, sqlite_dir = built
    db = Database(db_url)
    with db.session() as s:
        build_job(s, tmp_path)
    try:
        got, want = _tables(db), _tables(sqlite_db)
        for kind in want:  # the ``source`` column names each job's own (temporary) folder
            assert table_to_csv(got[kind]).replace(str(tmp_path), "DIR") == table_to_csv(
                want[kind]
            ).replace(str(sqlite_dir), "DIR"), kind
    finally:
        db.dispose()


def test_cli_writes_csv_and_json(built, tmp_path: Path) -> None:
    db, data_dir = built
    runner = CliRunner()
    for kind in ("full", "aggregated", "contributors", "gold"):
        for fmt in ("csv", "json"):
            out = tmp_path / f"{kind}.{fmt}"
            result = runner.invoke(
                app, ["--data-dir", str(data_dir), "report", kind, "--format", fmt, "-o", str(out)]
            )
            assert result.exit_code == 0, result.output
            text = out.read_text()
            rows = json.loads(text) if fmt == "json" else list(csv.DictReader(io.StringIO(text)))
            assert len(rows) == {"full": 19, "aggregated": 8, "contributors": 4, "gold": 2}[kind]
    gold = list(csv.DictReader(io.StringIO((tmp_path / "gold.csv").read_text())))
    assert gold[0]["accepted_answers"] == "PNEUMONIA" and gold[0]["active"] == "true"
    contributors = json.loads((tmp_path / "contributors.json").read_text())
    assert contributors[1]["flags"] == {"distribution": "ok"}


def test_cli_bad_format_and_unknown_job(built, tmp_path: Path) -> None:
    _, data_dir = built
    runner = CliRunner()
    bad = runner.invoke(
        app,
        [
            "--data-dir",
            str(data_dir),
            "report",
            "full",
            "--format",
            "xml",
            "-o",
            str(tmp_path / "x"),
        ],
    )
    assert bad.exit_code == 2 and "unknown --format 'xml'" in bad.output
    missing = runner.invoke(
        app,
        [
            "--data-dir",
            str(data_dir),
            "report",
            "gold",
            "--job",
            "nope",
            "-o",
            str(tmp_path / "g.csv"),
        ],
    )
    assert missing.exit_code == 2 and "no job named 'nope'" in missing.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "g.csv").exists()


def test_empty_job_reports_have_headers_only(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'e.sqlite3'}")
    from cxrlabel.context import get_job

    with db.session() as s:
        job, spec = get_job(s, None)
        assert aggregated_report(s, job, spec).rows == []
        assert contributors_report(s, job).rows == []
        assert gold_report(s, job).rows == []
        assert table_to_csv(full_report(s, job)).startswith("judgment_id,image,annotator")
    db.dispose()
