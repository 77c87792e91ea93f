"""The model API endpoint: roles, JSON contract, bad uploads, no model installed."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

pytest.importorskip("torch", reason="the [model] extra (PyTorch) is needed to build a model")
pytest.importorskip("onnxruntime", reason="the [model] extra (onnxruntime) is not installed")

from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from cxrlabel.annotate.accounts import issue_api_token
from cxrlabel.config import Settings
from cxrlabel.model.infer import MODEL_DIR_ENV
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import User
from cxrlabel.web.app import create_app
from model_support import synthetic_xray, untrained_model_dir
from web_support import add_user


@pytest.fixture
def api(tmp_path, monkeypatch):
    monkeypatch.delenv(MODEL_DIR_ENV, raising=False)
    db = Database(f"sqlite:///{tmp_path / 'web.sqlite3'}")
    app = create_app(Settings(data_dir=tmp_path, db_url=db.url), db=db)
    clients = {}
    for role in ("admin", "expert", "annotator"):
        add_user(db, role, role=role)
        with db.session() as s:
            token = issue_api_token(s, s.scalar(select(User).where(User.username == role)))
        clients[role] = TestClient(app, headers={"Authorization": f"Bearer {token}"})
    clients["anonymous"] = TestClient(app)
    yield tmp_path, clients
    db.dispose()


def _png(width: int = 120, height: int = 90) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(synthetic_xray(rng, True, width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_predict_endpoint_contract_and_roles(api):
    data_dir, clients = api
    untrained_model_dir(data_dir / "model")  # the default place: <data dir>/model
    upload = {"image": ("x.png", _png(), "image/png")}
    for role in ("expert", "admin"):
        r = clients[role].post("/api/model/predict", files=upload)
        assert r.status_code == 200, r.text
        body = r.json()
        assert 0.0 <= body["p_pneumonia"] <= 1.0
        assert body["band"] in ("flag", "review", "clear")
        assert body["title"].startswith("Model opinion")
        png = base64.b64decode(body["heatmap_data_url"].split(",", 1)[1])
        assert Image.open(io.BytesIO(png)).size == (120, 90)
    assert clients["annotator"].post("/api/model/predict", files=upload).status_code == 403
    assert clients["anonymous"].post("/api/model/predict", files=upload).status_code in (401, 403)
    info = clients["expert"].get("/api/model").json()
    assert info["thresholds"] == {"flag": 0.6, "clear": 0.3}


def test_bad_upload_is_a_clear_422(api):
    data_dir, clients = api
    untrained_model_dir(data_dir / "model")
    r = clients["expert"].post(
        "/api/model/predict", files={"image": ("x.png", b"\x89PNG\r\n\x1a\nbroken", "image/png")}
    )
    assert r.status_code == 422
    assert "cannot read the image" in r.json()["error"]["message"]
    r = clients["expert"].post(
        "/api/model/predict", files={"image": ("x.txt", b"hello", "text/plain")}
    )
    assert r.status_code == 422 and "not an image" in r.json()["error"]["message"]


def test_no_model_installed_is_503(api):
    _, clients = api
    r = clients["expert"].post(
        "/api/model/predict", files={"image": ("x.png", _png(), "image/png")}
    )
    assert r.status_code == 503 and "cxrlabel train" in r.json()["error"]["message"]
