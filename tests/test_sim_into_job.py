"""``simulate --into-job``: the simulated labels land where report, export and train look."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxrlabel.cli import app
from cxrlabel.demo import make_phantom_manifest

runner = CliRunner()
JOB = "pneumonia-pediatric"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("phantoms")
    return make_phantom_manifest(folder, {"NORMAL": 18, "PNEUMONIA": 22})


def _invoke(data: Path, *args: str) -> str:
    result = runner.invoke(app, ["--data-dir", str(data), *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_simulate_into_job_fills_the_installation_job(manifest: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"  # does not exist yet: simulating into a job may create it
    out = json.loads(
        _invoke(
            data,
            "simulate",
            "--into-job",
            JOB,
            "--images",
            str(manifest),
            "--crowd",
            "good",
            "--annotators",
            "6",
            "--gold",
            "10",
            "--seed",
            "3",
            "--json",
        )
    )
    assert out["setup"]["into_job"] == JOB
    # the bundled job's training pool (6 cases, issue 17) is neither work nor gold
    assert out["training_items"] == 6 and out["images"] == 40 - 10 - 6

    status = json.loads(_invoke(data, "status", "--json"))
    assert status["jobs"] == [JOB]
    by_status = status["images_by_status"]
    # Every work image is settled: the crowd kept arriving, the simulated expert reviewed.
    assert by_status.get("needs_judgments", 0) == 0 and by_status.get("needs_review", 0) == 0
    assert by_status.get("finalised", 0) + by_status.get("expert", 0) == 24
    assert by_status.get("training", 0) == 6
    assert not (data / "simulation" / f"work-{JOB}").exists()  # no hidden side database

    export = tmp_path / "dataset"
    _invoke(data, "export", "-o", str(export), "--format", "imagefolder")
    rows = (export / "metadata.csv").read_text().strip().splitlines()
    # one row per image: 24 labelled by the crowd, 10 gold (the 6 training cases are left out)
    assert len(rows) - 1 == 34
    images = [p for p in export.rglob("*") if p.suffix in {".png", ".jpg", ".jpeg"}]
    assert len(images) == 34


def test_simulate_into_job_refuses_a_job_with_crowd_work(manifest: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    args = [
        "simulate",
        "--into-job",
        JOB,
        "--images",
        str(manifest),
        "--crowd",
        "good",
        "--annotators",
        "6",
        "--gold",
        "10",
        "--json",
    ]
    _invoke(data, *args)
    again = runner.invoke(app, ["--data-dir", str(data), *args])
    assert again.exit_code == 2
    assert "already has crowd work" in again.output


def test_simulate_into_job_refuses_a_second_job_spec(manifest: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "--data-dir",
            str(tmp_path),
            "simulate",
            "--into-job",
            JOB,
            "--job",
            JOB,
            "--images",
            str(manifest),
        ],
    )
    assert result.exit_code == 2
    assert "leave out --job" in result.output
