"""Server hardening (issue 18): request-body limits before parsing, HSTS over HTTPS, and a
clear error for a NaN invite expiry. Each test failed on the code before issue 18."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cxrlabel.cli import app as cli_app
from cxrlabel.config import Settings
from cxrlabel.storage.db import Database
from cxrlabel.web.app import create_app
from cxrlabel.web.middleware import ANONYMOUS_BODY_LIMIT, DEFAULT_BODY_LIMIT
from web_support import add_user, csrf_from_html, seed_job

PASSWORD = "correct horse battery"
SUBMIT = "/api/jobs/test-job/pages/some-page/submit"


@pytest.fixture
def web(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    db = Database(url)
    seed_job(db, tmp_path, n_work=8, n_gold=4, quiz_length=2, items_per_page=4)
    app = create_app(Settings(data_dir=tmp_path, db_url=url), db=db)
    yield app, db, tmp_path
    db.dispose()


def signed_in(app, username: str) -> tuple[TestClient, str]:
    client = TestClient(app, follow_redirects=False)
    token = csrf_from_html(client.get("/login").text)
    r = client.post(
        "/login", data={"username": username, "password": PASSWORD, "csrf_token": token}
    )
    assert r.status_code == 303
    return client, csrf_from_html(client.get("/account").text)


def big_json(size: int) -> bytes:
    return json.dumps({"client_submission_id": "x", "answers": [], "pad": "a" * size}).encode()


# --- body limits ---------------------------------------------------------------------------------


def test_anonymous_large_body_refused_before_auth_and_parsing(web):
    app, _db, _ = web
    client = TestClient(app, follow_redirects=False)
    body = big_json(ANONYMOUS_BODY_LIMIT)
    r = client.post(SUBMIT, content=body, headers={"Content-Type": "application/json"})
    # Before issue 18: parsed first, then 401/403.
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"
    assert str(ANONYMOUS_BODY_LIMIT) in r.json()["error"]["message"]
    # Not even valid JSON: still 413, so nothing parsed it.
    r = client.post(
        SUBMIT,
        content=b"{" * (ANONYMOUS_BODY_LIMIT + 1),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 413
    # A lying or malformed Content-Length is refused as well.
    r = client.post("/login", content=b"x", headers={"Content-Length": "nope"})
    assert r.status_code in (400, 413)
    # The small anonymous forms still work.
    assert client.post("/login", data={"username": "x", "password": "y"}).status_code == 403


def test_streamed_body_counted_for_signed_in_callers(web):
    app, db, _ = web
    add_user(db, "ann1")
    client, csrf = signed_in(app, "ann1")

    def chunks():  # no Content-Length: the middleware must count the bytes as they arrive
        for _ in range(DEFAULT_BODY_LIMIT // 65536 + 2):
            yield b" " * 65536

    r = client.post(
        SUBMIT, content=chunks(), headers={"Content-Type": "application/json", "X-CSRF-Token": csrf}
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    # Under the limit the route answers as usual (an unknown page).
    r = client.post(
        SUBMIT,
        content=big_json(ANONYMOUS_BODY_LIMIT * 2),
        headers={"Content-Type": "application/json", "X-CSRF-Token": csrf},
    )
    assert r.status_code not in (413, 500)


def test_model_upload_route_has_its_own_larger_limit(web):
    app, db, _ = web
    add_user(db, "doc", role="expert")
    client, csrf = signed_in(app, "doc")
    blob = b"\0" * (2 * DEFAULT_BODY_LIMIT)
    r = client.post(
        "/api/model/predict",
        files={"image": ("x.png", blob, "image/png")},
        headers={"X-CSRF-Token": csrf},
    )
    assert r.status_code != 413  # 503 (no model installed) or 4xx from the decoder
    anonymous = TestClient(app).post(
        "/api/model/predict", files={"image": ("x.png", blob, "image/png")}
    )
    assert anonymous.status_code == 413


# --- HSTS ----------------------------------------------------------------------------------------


def test_hsts_only_over_https(web, monkeypatch):
    app, _db, _ = web
    monkeypatch.delenv("CXRLABEL_COOKIE_SECURE", raising=False)
    assert "strict-transport-security" not in TestClient(app).get("/login").headers
    https = TestClient(app, base_url="https://testserver")
    value = https.get("/login").headers["strict-transport-security"]
    assert value.startswith("max-age=") and int(value.split("=")[1]) >= 86400
    monkeypatch.setenv("CXRLABEL_COOKIE_SECURE", "1")  # declared https-only (TLS proxy)
    assert "strict-transport-security" in TestClient(app).get("/login").headers
    monkeypatch.setenv("CXRLABEL_HSTS_MAX_AGE", "0")
    assert "strict-transport-security" not in https.get("/login").headers


# --- NaN invite expiry ---------------------------------------------------------------------------


@pytest.mark.parametrize("hours", ["NaN", "Infinity", "-1", "1e300"])
def test_api_invite_with_bad_expiry_is_a_clear_4xx(web, hours):
    app, db, _ = web
    add_user(db, "boss", role="admin")
    client, csrf = signed_in(app, "boss")
    body = '{"role": "annotator", "expires_hours": ' + hours + "}"
    r = client.post(
        "/api/invites",
        content=body,
        headers={"Content-Type": "application/json", "X-CSRF-Token": csrf},
    )
    assert 400 <= r.status_code < 500, (hours, r.status_code)  # before issue 18: 500 for NaN
    assert "expir" in r.text.lower()


def test_admin_form_and_cli_invite_with_nan_expiry(web):
    app, db, data_dir = web
    add_user(db, "boss", role="admin")
    client, csrf = signed_in(app, "boss")
    r = client.post(
        "/admin/invites",
        data={"csrf_token": csrf, "role": "annotator", "uses": "1", "expires_hours": "nan"},
    )
    assert r.status_code == 422 and "positive number of hours" in r.text
    result = CliRunner().invoke(
        cli_app,
        ["--data-dir", str(data_dir), "--db", db.url, "invite", "create", "--expires-hours", "nan"],
    )
    assert result.exit_code == 2 and "positive number of hours" in result.output
    assert "Traceback" not in result.output
