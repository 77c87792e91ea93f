"""The demo builds a usable job offline; status reports it with stable JSON keys."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cxrlabel.cli import app

runner = CliRunner()


def _status(data_dir: Path) -> dict:
    result = runner.invoke(app, ["--data-dir", str(data_dir), "status", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_demo_offline_then_status(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = runner.invoke(app, ["--data-dir", str(data), "demo", "--no-serve"])
    assert result.exit_code == 0, result.output
    assert "SYNTHETIC PHANTOM" in result.output
    assert "/join/" in result.output
    status = _status(data)
    assert status["images"] == 72
    assert status["images_by_reference_label"] == {"NORMAL": 30, "PNEUMONIA": 42}
    assert status["gold"] >= 8
    assert status["images_by_status"]["gold"] == status["gold"]
    assert status["failed"] == 0 and status["skipped_duplicates"] == 0
    logins = json.loads((data / "demo-logins.json").read_text())
    assert set(logins) == {"admin", "expert", "annotator1", "annotator2", "annotator3"}
    assert oct((data / "demo-logins.json").stat().st_mode & 0o777) == "0o600"

    # Idempotent: a second run adds no images and keeps the passwords.
    again = runner.invoke(app, ["--data-dir", str(data), "demo", "--no-serve"])
    assert again.exit_code == 0, again.output
    assert _status(data)["images"] == 72
    assert json.loads((data / "demo-logins.json").read_text()) == logins


def test_status_on_empty_data_dir_and_unknown_job(tmp_path: Path) -> None:
    status = _status(tmp_path)
    for key in ("images", "skipped_duplicates", "failed", "judgments", "annotators"):
        assert key in status
    assert status["images"] == 0
    bad = runner.invoke(app, ["--data-dir", str(tmp_path), "status", "--job", "nope"])
    assert bad.exit_code == 2
    assert "no job named 'nope'" in bad.output


def test_demo_rejects_missing_images_folder(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["--data-dir", str(tmp_path), "demo", "--no-serve", "--images", str(tmp_path / "missing")],
    )
    assert result.exit_code == 2
    assert "no such folder" in result.output


def test_demo_simulate_fills_the_job_through_the_engine(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = runner.invoke(app, ["--data-dir", str(data), "demo", "--no-serve", "--simulate"])
    assert result.exit_code == 0, result.output
    assert "label_accuracy=" in result.output
    assert "open http" not in result.output  # --no-serve: no server to open
    status = _status(data)
    assert status["judgments"]["total"] > 100
    by_status = status["images_by_status"]
    assert by_status.get("finalised", 0) > 0
    # The crowd keeps arriving until every work image is finalised or waiting for the expert.
    assert by_status.get("needs_judgments", 0) == 0
    # (gold images: the active test questions and those retired after too many reveals)
    assert by_status.get("gold", 0) == status["gold"] + status["gold_inactive"]
    training = by_status.get("training", 0)  # the bundled job's training pool (issue 17)
    assert training == 6
    assert (
        by_status.get("finalised", 0) + by_status.get("needs_review", 0)
        == 72 - by_status.get("gold", 0) - training
    )
    assert status["annotators"]  # simulated annotators are real per-job states
    # The stored quality state is what replaying the event log gives.
    replay = runner.invoke(app, ["--data-dir", str(data), "quality", "replay", "--json"])
    assert replay.exit_code == 0, replay.output
    assert json.loads(replay.output)["matched"] is True
