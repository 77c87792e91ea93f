"""The Label Studio export imported into a real Label Studio, and Label Studio's own JSON
export ingested back.

Needs Label Studio in its own virtualenv (never the project's): ``python3 -m venv /tmp/lsenv
&& /tmp/lsenv/bin/pip install label-studio==1.23.2`` (several minutes), or
``CXRLABEL_LABEL_STUDIO_VENV`` pointing at one, and the peer's start/stop script
``../shared/peers/labelstudio/run_ls.sh``. Without them the test skips with that reason; the
format itself is always checked by hand in tests/test_labelstudio.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from cxrlabel.cli import app
from cxrlabel.config import shared_data_dir
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import Image
from test_labelstudio import exported  # noqa: F401 - the module fixture

pytestmark = pytest.mark.slow


def _venv() -> Path | None:
    for candidate in (os.environ.get("CXRLABEL_LABEL_STUDIO_VENV"), "/tmp/lsenv"):
        if candidate and (Path(candidate) / "bin" / "label-studio").exists():
            return Path(candidate)
    return None


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    venv = _venv()
    script = shared_data_dir().parent / "peers" / "labelstudio" / "run_ls.sh"
    if venv is None or not script.exists():
        pytest.skip("Label Studio not installed (see this module's docstring)")
    folder = tmp_path_factory.mktemp("ls")
    env = {
        **os.environ,
        "LS_VENV": str(venv),
        "LS_STATE_FILE": str(folder / "state.env"),
        "LS_DATA_DIR": f"/tmp/cxrlabel-ls-{folder.name}",
        "LS_MAX_LIFETIME_S": "900",
    }
    started = subprocess.run(
        ["bash", str(script), "start"], env=env, capture_output=True, text=True, timeout=600
    )
    assert started.returncode == 0, started.stderr[-2000:]
    state = dict(line.split("=", 1) for line in started.stdout.split() if "=" in line)
    try:
        yield state["BASE_URL"], state["TOKEN"]
    finally:
        subprocess.run(
            ["bash", str(script), "stop"],
            env={**env, "LS_PURGE": "1"},
            capture_output=True,
            timeout=120,
        )


def test_export_imports_into_label_studio_and_comes_back(
    label_studio,
    exported,  # noqa: F811
    tmp_path: Path,
) -> None:
    base, token = label_studio
    http = httpx.Client(
        base_url=base, headers={"Authorization": f"Token {token}"}, timeout=60, trust_env=False
    )
    config = (exported / "labelstudio-config.xml").read_text()
    tasks = json.loads((exported / "labelstudio-tasks.json").read_text())
    project = http.post("/api/projects", json={"title": "cxrlabel export", "label_config": config})
    assert project.status_code == 201, project.text
    pid = project.json()["id"]
    imported = http.post(f"/api/projects/{pid}/import", json=tasks)
    assert imported.status_code == 201, imported.text
    counts = imported.json()
    crowd = sum(1 for t in tasks if t["predictions"])
    assert (counts["task_count"], counts["annotation_count"], counts["prediction_count"]) == (
        16,
        16,
        crowd,
    )
    # Label Studio's own JSON export of the project, ingested back by cxrlabel.
    dump = http.get(f"/api/projects/{pid}/export", params={"exportType": "JSON"})
    assert dump.status_code == 200, dump.text[:500]
    from_ls = dump.json()
    assert len(from_ls) == 16 and all(t["annotations"] for t in from_ls)
    tasks_file = exported.parent / "from-label-studio.json"
    tasks_file.write_text(json.dumps(from_ls))
    data_dir = tmp_path / "data"
    result = CliRunner().invoke(
        app, ["--data-dir", str(data_dir), "ingest", str(tasks_file), "--workers", "0"]
    )
    assert result.exit_code == 0, result.output
    db = Database(f"sqlite:///{data_dir / 'cxrlabel.sqlite3'}")
    try:
        with db.session() as s:
            labels = {Path(i.source_path).stem: i.reference_label for i in s.scalars(select(Image))}
    finally:
        db.dispose()
    want = {
        t["data"]["image_id"]: t["annotations"][0]["result"][0]["value"]["choices"][0]
        for t in tasks
    }
    assert labels == want
