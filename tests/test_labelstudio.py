"""Label Studio interchange: ``export --format labelstudio`` writes tasks + labeling config in
Label Studio's JSON task format, and ``ingest tasks.json`` takes images and reference labels
back from such a file.

The format is checked by hand here against Label Studio's documented task format (a task
list; ``data`` holds the variables the config's ``$image`` names; each annotation or
prediction ``result`` region names the config's ``from_name``/``to_name`` with ``type``
``choices``). tests/test_labelstudio_server.py imports the same files into a real Label
Studio when one is installed.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from cxrlabel.cli import app
from cxrlabel.ingest.labelstudio import read_tasks
from cxrlabel.ingest.sources import SourceError
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import Image
from test_results_export import _sixteen_image_job

LABELS = ["NORMAL", "PNEUMONIA"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("ls-job")
    _sixteen_image_job(data_dir)
    out = data_dir / "ls-export"
    result = CliRunner().invoke(
        app,
        [
            "--data-dir",
            str(data_dir),
            "export",
            "-o",
            str(out),
            "--format",
            "labelstudio",
            "--seed",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    return out


def check_task_format(tasks: object, config_xml: str) -> None:
    """Label Studio's task format, against the labeling config (raises AssertionError)."""
    view = ET.fromstring(config_xml)
    image = view.find("Image")
    choices = view.find("Choices")
    assert image is not None and choices is not None
    variable = image.get("value", "").lstrip("$")
    names = (choices.get("name"), choices.get("toName"))
    assert names[1] == image.get("name")
    allowed = {c.get("value") for c in choices.findall("Choice")}
    assert isinstance(tasks, list) and tasks
    for task in tasks:
        assert set(task) <= {"id", "data", "annotations", "predictions", "meta"}
        assert isinstance(task["data"], dict) and isinstance(task["data"][variable], str)
        for kind in ("annotations", "predictions"):
            for item in task.get(kind, []):
                assert isinstance(item["result"], list) and item["result"]
                for region in item["result"]:
                    assert (region["from_name"], region["to_name"]) == names
                    assert region["type"] == "choices"
                    assert set(region["value"]["choices"]) <= allowed
                if kind == "predictions":
                    assert 0.0 <= item["score"] <= 1.0 and item["model_version"]


def test_labelstudio_export_is_valid_task_json(exported: Path) -> None:
    tasks = json.loads((exported / "labelstudio-tasks.json").read_text())
    config = (exported / "labelstudio-config.xml").read_text()
    check_task_format(tasks, config)
    meta = pd.read_csv(exported / "metadata.csv").set_index("image_id")
    assert len(tasks) == len(meta) == 16
    for task in tasks:
        row = meta.loc[task["data"]["image_id"]]
        url = task["data"]["image"]
        assert url.startswith("/data/local-files/?d=ls-export/")
        rel = parse_qs(urlsplit(url).query)["d"][0]
        assert (exported.parent / rel).is_file() and rel.endswith(row["file_name"])
        [annotation] = task["annotations"]
        assert annotation["result"][0]["value"]["choices"] == [row["label"]]
        assert annotation["ground_truth"] == bool(row["is_gold"] or row["expert_reviewed"])
        if row["is_gold"]:  # no crowd opinion on a test question
            assert task["predictions"] == []
        else:
            [prediction] = task["predictions"]
            assert prediction["score"] == row["crowd_confidence"]
            assert prediction["result"][0]["value"]["choices"] == [row["crowd_label"]]
    text = (exported / "labelstudio-tasks.json").read_text()
    assert "/hospital/" not in text and "dicom:" not in text  # admin-only source stays out


def test_labelstudio_tasks_ingest_back_with_reference_labels(
    exported: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    result = CliRunner().invoke(
        app,
        [
            "--data-dir",
            str(data_dir),
            "ingest",
            str(exported / "labelstudio-tasks.json"),
            "--workers",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    db = Database(f"sqlite:///{data_dir / 'cxrlabel.sqlite3'}")
    try:
        with db.session() as s:
            got = {Path(i.source_path).stem: i.reference_label for i in s.scalars(select(Image))}
    finally:
        db.dispose()
    meta = pd.read_csv(exported / "metadata.csv")
    want = dict(zip(meta["image_id"], meta["label"], strict=True))
    assert got == want  # all 16 images, each with the exported label as reference label


def test_labelstudio_task_problems_are_reported_per_task(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    tasks = [
        {"id": 7, "data": {"image": "https://example.org/x.png"}},
        {
            "data": {"image": "a.png"},
            "annotations": [{"result": [{"type": "choices", "value": {"choices": ["maybe"]}}]}],
        },
        {
            "data": {"image": str(image)},
            "annotations": [
                {
                    "result": [{"type": "choices", "value": {"choices": ["PNEUMONIA"]}}],
                    "was_cancelled": True,
                },
                {"result": [{"type": "choices", "value": {"choices": ["normal"]}}]},
            ],
        },
        {"data": {"text": "no image"}},
        {"data": {"image": "/data/local-files/?d=missing/b.png"}},
    ]
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps(tasks))
    items = read_tasks(path, LABELS)
    assert "not a local file" in items[0].problem and items[0].path.endswith("task 7")
    assert "'maybe' is not one of NORMAL, PNEUMONIA" in items[1].problem
    assert (items[2].path, items[2].label, items[2].problem) == (str(image), "NORMAL", None)
    assert "no image" in items[3].problem and "not found" in items[4].problem
    path.write_text('{"not": "tasks"}')
    with pytest.raises(SourceError, match="Label Studio task list"):
        read_tasks(path, LABELS)
    path.write_text("[{")
    with pytest.raises(SourceError, match="not valid JSON"):
        read_tasks(path, LABELS)
