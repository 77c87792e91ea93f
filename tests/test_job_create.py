"""``cxrlabel job create NAME`` + ``ingest --job NAME``: real images in their own job, and
``gold sample`` items that stay inactive until an expert's reason replaces the placeholder."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from sqlalchemy import select
from typer.testing import CliRunner

from cxrlabel.cli import app
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import GoldItem, Image, Job
from web_support import png_bytes

runner = CliRunner()


def _cli(data_dir: Path, *args: str):
    return runner.invoke(app, ["--data-dir", str(data_dir), *args])


def _kaggle_folder(root: Path, per_class: int = 4) -> Path:
    for label in ("NORMAL", "PNEUMONIA"):
        folder = root / "train" / label
        folder.mkdir(parents=True)
        for i in range(per_class):
            seed = i + (100 if label == "PNEUMONIA" else 0)
            (folder / f"person{seed}_img.png").write_bytes(png_bytes(seed, size=256))
    return root


def test_job_create_then_ingest_into_it_and_sample_inactive_gold(tmp_path):
    data = tmp_path / "data"
    missing = _cli(data, "ingest", str(_kaggle_folder(tmp_path / "imgs")), "--job", "ward-7")
    assert missing.exit_code != 0 and "cxrlabel job create ward-7" in missing.output

    created = _cli(data, "job", "create", "ward-7")
    assert created.exit_code == 0, created.output
    assert _cli(data, "job", "create", "ward-7").exit_code != 0  # no silent overwrite
    assert "letters, digits" in _cli(data, "job", "create", "no spaces").output
    ingested = _cli(data, "ingest", str(tmp_path / "imgs"), "--job", "ward-7", "--workers", "0")
    assert ingested.exit_code == 0, ingested.output

    db = Database(f"sqlite:///{data / 'cxrlabel.sqlite3'}")
    with db.session() as s:
        jobs = {j.name: j for j in s.scalars(select(Job))}
        assert set(jobs) == {"ward-7"}  # the demo's job was never created or touched
        assert "markdown =" in jobs["ward-7"].spec_toml  # instructions inlined into the copy
        assert s.scalar(select(Image.id).where(Image.job_id != jobs["ward-7"].id)) is None

    sampled = _cli(data, "gold", "sample", "--from-reference", "4", "--job", "ward-7")
    assert sampled.exit_code == 0, sampled.output
    assert "inactive" in sampled.output
    with db.session() as s:
        gold = list(s.scalars(select(GoldItem)))
        assert gold and not any(g.active for g in gold)  # synthetic look-alikes: maybe < 4
    check = _cli(data, "gold", "check", "--job", "ward-7")
    assert "placeholder_reason" in check.output and f"{len(gold)} sampled gold" in check.output

    # An expert's reasons, through export / import, make them active.
    exported = tmp_path / "gold.csv"
    assert _cli(data, "gold", "export", "--job", "ward-7", "-o", str(exported)).exit_code == 0
    table = list(csv.reader(io.StringIO(exported.read_text())))
    col = table[0].index("reason")
    rows = []
    for row in table[1:]:
        row[col] = "Both lungs: look at the lower zones for patchy opacity."
        rows.append(row)
    buf = io.StringIO()
    csv.writer(buf).writerows([table[0], *rows])
    exported.write_text(buf.getvalue())
    imported = _cli(data, "gold", "import", str(exported), "--job", "ward-7")
    assert imported.exit_code == 0, imported.output
    with db.session() as s:
        assert all(g.active for g in s.scalars(select(GoldItem)))
    db.dispose()


def test_invite_links_use_the_port_the_server_listens_on(tmp_path):
    from cxrlabel.web.cli import remember_served_url

    data = tmp_path / "data"
    assert _cli(data, "job", "create", "ward-8").exit_code == 0
    default = _cli(data, "invite", "create", "--job", "ward-8")
    assert default.exit_code == 0 and "http://127.0.0.1:8000/join/" in default.output
    remember_served_url(data, "0.0.0.0", 8765)  # what `cxrlabel serve --port 8765` records
    link = _cli(data, "invite", "create", "--job", "ward-8")
    assert link.exit_code == 0 and "http://127.0.0.1:8765/join/" in link.output, link.output
