"""``cxrlabel score``: model scores written to Image.model_score from renditions."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="the [model] extra (PyTorch) is needed to build a model")
pytest.importorskip("onnxruntime", reason="the [model] extra (onnxruntime) is not installed")

from PIL import Image as PILImage
from sqlalchemy import select
from typer.testing import CliRunner

from cxrlabel.cli import app
from cxrlabel.context import get_job
from cxrlabel.model.data import squash
from cxrlabel.model.infer import OnnxModel
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import Image
from model_support import synthetic_xray, untrained_model_dir


def _add_images(db: Database, data_dir, n: int) -> tuple[str, list[str]]:
    rng = np.random.default_rng(3)
    (data_dir / "renditions").mkdir(parents=True)
    ids = []
    with db.session() as s:
        job, _ = get_job(s, None)
        for i in range(n):
            rel = f"renditions/r{i}.png"
            if i == n - 1:
                (data_dir / rel).write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
            else:
                PILImage.fromarray(synthetic_xray(rng, i % 2 == 0, 100, 90)).save(data_dir / rel)
            image = Image(
                job_id=job.id,
                source_path=f"/src/{i}.png",
                source_format="png",
                sha256=f"{i:064x}",
                pixel_sha256=f"{i:064x}",
                phash=f"{i:016x}",
                width=100,
                height=90,
                rendition_path=rel,
                thumb_path=rel,
            )
            s.add(image)
            s.flush()
            ids.append(image.public_id)
        return job.name, ids


def test_score_writes_model_scores(db_url, tmp_path):
    db = Database(db_url)
    job_name, ids = _add_images(db, tmp_path, 5)
    model_dir = untrained_model_dir(tmp_path / "model")
    result = CliRunner().invoke(
        app,
        [
            "--data-dir",
            str(tmp_path),
            "--db",
            db_url,
            "score",
            "--model",
            str(model_dir),
            "--job",
            job_name,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "scored 4 images" in result.output and "1 could not be read" in result.output
    model = OnnxModel(model_dir)
    with db.session() as s:
        rows = {im.public_id: im for im in s.scalars(select(Image))}
        for public_id in ids[:-1]:
            image = rows[public_id]
            pixels = np.asarray(PILImage.open(tmp_path / image.rendition_path).convert("L"))
            expected, _ = model.probabilities(squash(pixels, model.size)[None])
            assert image.model_score == pytest.approx(float(expected[0]), abs=1e-6)
        assert rows[ids[-1]].model_score is None
    db.dispose()


def test_score_needs_a_model_folder(tmp_path):
    result = CliRunner().invoke(
        app, ["--data-dir", str(tmp_path), "score", "--model", str(tmp_path / "nope")]
    )
    assert result.exit_code == 2 and "model.json" in result.output
