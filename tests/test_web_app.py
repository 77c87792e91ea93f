"""The annotator web app through its HTTP interface (FastAPI TestClient, real database)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from cxrlabel.annotate.accounts import create_invite
from cxrlabel.config import Settings
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import (
    AnnotatorState,
    Contest,
    Invite,
    Job,
    Judgment,
    Submission,
    User,
    utcnow,
)
from cxrlabel.templating import render_standalone_work_page, render_work_page
from cxrlabel.web.app import run_server
from cxrlabel.web.throttle import LoginRateLimiter
from web_support import (
    GOLD_REASON_PREFIX,
    add_user,
    csrf_from_html,
    gold_answers,
    web_app_with_small_job,
)

PASSWORD = "correct horse battery"


@pytest.fixture
def web(db_url, tmp_path):
    db = Database(db_url)
    app, seeded = web_app_with_small_job(db, tmp_path, db_url)
    yield app, db, seeded
    db.dispose()


csrf = csrf_from_html


def login(client: TestClient, username: str, password: str = PASSWORD):
    token = csrf(client.get("/login").text)
    return client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": token, "next": "/"},
        follow_redirects=False,
    )


def page_form(html: str) -> tuple[str, str, list[str]]:
    action = re.search(
        r'<form class="work-form" id="work-form" method="post" action="([^"]+)"', html
    ).group(1)
    client_id = re.search(r'name="client_submission_id" value="([^"]+)"', html).group(1)
    pids = list(dict.fromkeys(re.findall(r'name="answer-([^"]+)"', html)))
    return action, client_id, pids


def fill(
    html: str, gold: dict[str, list[str]], *, miss_gold: bool = False, skip: int = 0
) -> tuple[str, dict[str, str]]:
    action, client_id, pids = page_form(html)
    data = {"csrf_token": csrf(html), "client_submission_id": client_id}
    for pid in pids[skip:]:
        answer = "NORMAL"
        if pid in gold:
            right = gold[pid][0]
            answer = right if not miss_gold else ("NORMAL" if right == "PNEUMONIA" else "PNEUMONIA")
        data[f"answer-{pid}"] = answer
        data[f"certainty-{pid}"] = "definitely"
        data[f"flag-{pid}"] = ""
    return action, data


def annotator_client(app, db, name: str) -> TestClient:
    add_user(db, name)
    client = TestClient(app)
    assert login(client, name).status_code == 303
    return client


def pass_quiz(client: TestClient, gold) -> None:
    html = client.get("/jobs/test-job/page").text
    assert "Quiz" in html
    action, data = fill(html, gold)
    r = client.post(action, data=data, follow_redirects=True)
    assert "You passed the quiz" in r.text


def test_login_logout_cookie_flags_and_rate_limit(web):
    app, db, _ = web
    app.state.login_limiter = LoginRateLimiter(db, max_failures=4, window_s=900)
    add_user(db, "ann1")
    client = TestClient(app)
    r = login(client, "ann1", "wrong password")
    assert r.status_code == 401 and "Wrong username or password" in r.text
    r = login(client, "ann1")
    assert r.status_code == 303
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie
    assert client.get("/", follow_redirects=False).status_code == 200
    # Signing out needs the CSRF token and ends the session.
    assert client.post("/logout", data={}).status_code == 403
    html = client.get("/").text
    r = client.post("/logout", data={"csrf_token": csrf(html)}, follow_redirects=False)
    assert r.status_code == 303
    assert (
        client.get("/jobs/test-job/page", follow_redirects=False)
        .headers["location"]
        .startswith("/login")
    )
    other = TestClient(app)
    for _ in range(4):  # the sign-in above cleared the first failure (same address + name)
        assert login(other, "ann1", "nope-nope").status_code == 401
    r = login(other, "ann1")  # right password, but blocked for now
    assert r.status_code == 429 and "Too many failed attempts" in r.text
    assert int(r.headers["retry-after"]) > 0


def test_secure_cookie_when_configured(web, monkeypatch):
    app, db, _ = web
    add_user(db, "ann1")
    monkeypatch.setenv("CXRLABEL_COOKIE_SECURE", "1")
    r = login(TestClient(app), "ann1")
    assert "secure" in r.headers["set-cookie"].lower()


def test_csrf_required_on_state_changing_forms(web):
    app, db, seeded = web
    client = annotator_client(app, db, "ann1")
    html = client.get("/jobs/test-job/page").text
    action, data = fill(html, gold_answers(db, seeded.job_id))
    data["csrf_token"] = "forged"
    r = client.post(action, data=data)
    assert r.status_code == 403
    anon = TestClient(app)
    assert anon.post("/login", data={"username": "ann1", "password": PASSWORD}).status_code == 403
    with db.session() as s:
        assert s.scalar(select(func.count(Judgment.id))) == 0


def test_security_headers_and_no_inline_script(web):
    app, db, _ = web
    client = annotator_client(app, db, "ann1")
    r = client.get("/jobs/test-job/page")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["cache-control"] == "no-store"
    assert not re.search(r"<script(?![^>]*\bsrc=)", r.text)  # every script is a file
    assert not re.search(r"<[^>]+\son[a-z]+=", r.text)


def test_invites_single_and_multi_use_and_expiry(web):
    app, db, _ = web
    add_user(db, "boss", role="admin")
    admin = TestClient(app)
    login(admin, "boss")
    html = admin.get("/admin/invites").text
    r = admin.post(
        "/admin/invites",
        data={
            "csrf_token": csrf(html),
            "role": "annotator",
            "job": "test-job",
            "uses": "2",
            "expires_hours": "24",
        },
    )
    link = re.search(r"(http://testserver/join/[A-Za-z0-9_\-]+)", r.text).group(1)
    path = link.removeprefix("http://testserver")
    for n, expected in [(1, 303), (2, 303), (3, 410)]:
        client = TestClient(app)
        form = client.get(path)
        if expected == 410:
            assert form.status_code == 410 and "already been used" in form.text
            continue
        r = client.post(
            path,
            data={
                "csrf_token": csrf(form.text),
                "username": f"new{n}",
                "password": PASSWORD,
                "password2": PASSWORD,
            },
            follow_redirects=False,
        )
        assert r.status_code == expected and r.headers["location"] == "/jobs/test-job"
        assert client.get("/jobs/test-job/instructions").status_code == 200
    with db.session() as s:
        assert s.scalar(select(func.count(User.id)).where(User.username.like("new%"))) == 2
        invite, token = create_invite(s, expires_hours=1, now=utcnow() - timedelta(hours=2))
    client = TestClient(app)
    r = client.get(f"/join/{token}")
    assert r.status_code == 410 and "expired" in r.text
    # A weak password or a taken name is refused with a clear message; the invite is not used.
    with db.session() as s:
        invite, token = create_invite(s)
    form = client.get(f"/join/{token}")
    r = client.post(
        f"/join/{token}",
        data={
            "csrf_token": csrf(form.text),
            "username": "new1",
            "password": PASSWORD,
            "password2": PASSWORD,
        },
    )
    assert r.status_code == 409 and "already taken" in r.text
    r = client.post(
        f"/join/{token}",
        data={
            "csrf_token": csrf(form.text),
            "username": "x2",
            "password": "short",
            "password2": "short",
        },
    )
    assert r.status_code == 422 and "8 characters" in r.text
    with db.session() as s:
        assert s.get(Invite, invite.id).uses == 0


def test_roles_are_enforced(web):
    app, db, _ = web
    client = annotator_client(app, db, "ann1")
    assert client.get("/admin").status_code == 403
    assert client.get("/admin/invites").status_code == 403
    anon = TestClient(app)
    assert anon.get("/admin", follow_redirects=False).headers["location"] == "/login?next=/admin"
    r = anon.get("/api/jobs/test-job/status")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    add_user(db, "boss", role="admin")
    admin = TestClient(app)
    login(admin, "boss")
    assert admin.get("/jobs/test-job/page").status_code == 403  # admins do not annotate
    r = admin.get("/admin")
    assert r.status_code == 200 and "test-job" in r.text and "needs_judgments" in r.text


def test_instructions_are_escaped_markdown(web):
    app, db, _ = web
    client = annotator_client(app, db, "ann1")
    r = client.get("/jobs/test-job", follow_redirects=True)
    assert r.url.path == "/jobs/test-job/instructions"
    assert "<strong>both lungs</strong>" in r.text
    assert "<script>alert" not in r.text and "&lt;script&gt;alert" in r.text


def test_full_annotator_flow_with_feedback_and_contest(web):
    app, db, seeded = web
    gold = gold_answers(db, seeded.job_id)
    client = annotator_client(app, db, "ann1")
    html = client.get("/jobs/test-job/page").text
    # Incomplete page: refused server-side, answers kept in the form, nothing stored.
    action, data = fill(html, gold, skip=1)
    r = client.post(action, data=data)
    assert r.status_code == 422 and "Please answer every image" in r.text
    assert r.text.count("checked") >= 3
    action, data = fill(html, gold)
    r = client.post(action, data=data, follow_redirects=True)
    assert "You passed the quiz" in r.text
    # First work page: miss the hidden test question.
    html = client.get("/jobs/test-job/page").text
    assert "Quiz" not in html
    action, data = fill(html, gold, miss_gold=True)
    r = client.post(action, data=data, follow_redirects=True)
    assert r.url.path.endswith("/feedback")
    assert "Test questions you missed" in r.text and GOLD_REASON_PREFIX in r.text
    # A double click (same client submission id) stores nothing twice.
    again = client.post(action, data=data, follow_redirects=True)
    assert again.url.path == r.url.path
    with db.session() as s:
        assert s.scalar(select(func.count(Submission.id))) == 2
        assert s.scalar(select(func.count(Judgment.id))) == 3 + 4
    judgment_id = re.search(r'name="judgment_id" value="([^"]+)"', r.text).group(1)
    page_id = re.search(r'name="page_id" value="([^"]+)"', r.text).group(1)
    r = client.post(
        "/jobs/test-job/contest",
        data={
            "csrf_token": csrf(r.text),
            "judgment_id": judgment_id,
            "page_id": page_id,
            "reason": "The left lung looks clear to me.",
        },
        follow_redirects=True,
    )
    assert "a job administrator will review your comment" in r.text
    with db.session() as s:
        contest = s.scalars(select(Contest)).one()
        assert contest.reason == "The left lung looks clear to me."
    # Second page all right: straight on to the next page, no feedback stop.
    html = client.get("/jobs/test-job/page").text
    action, data = fill(html, gold)
    r = client.post(action, data=data, follow_redirects=False)
    assert r.headers["location"] == "/jobs/test-job/page"


def test_failed_quiz_is_retaken_once_then_final_and_kind(web):
    app, db, seeded = web
    gold = gold_answers(db, seeded.job_id)
    client = annotator_client(app, db, "ann1")
    html = client.get("/jobs/test-job/page").text
    action, data = fill(html, gold, miss_gold=True)
    r = client.post(action, data=data, follow_redirects=True)
    # One retake (gold.quiz_retakes = 1): told to re-read the instructions, then a new quiz.
    assert "read the instructions" in r.text and "Continue" in r.text
    html = client.get("/jobs/test-job/page").text
    action, data = fill(html, gold, miss_gold=True)
    r = client.post(action, data=data, follow_redirects=True)
    assert "Thank you for taking the quiz" in r.text and "Continue" not in r.text
    client2 = TestClient(app)  # a new sign-in does not reset the quiz
    login(client2, "ann1")
    r = client2.get("/jobs/test-job/page")
    assert r.status_code == 200 and "Thank you" in r.text and "work-form" not in r.text
    with db.session() as s:
        assert s.scalars(select(AnnotatorState)).one().status == "disqualified"


def test_images_cached_by_opaque_id_and_private_to_their_annotator(web):
    app, db, seeded = web
    client = annotator_client(app, db, "ann1")
    html = client.get("/jobs/test-job/page").text
    _, _, pids = page_form(html)
    r = client.get(f"/img/{pids[0]}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["cache-control"] == "private, max-age=31536000, immutable"
    assert "last-modified" not in r.headers
    r2 = client.get(f"/img/{pids[0]}", headers={"If-None-Match": r.headers["etag"]})
    assert r2.status_code == 304 and r2.content == b""
    other = annotator_client(app, db, "ann2")
    assert other.get(f"/img/{pids[0]}").status_code == 404
    assert other.get("/img/..%2f..%2fetc%2fpasswd").status_code == 404
    assert TestClient(app).get(f"/img/{pids[0]}", follow_redirects=False).status_code == 303


def test_api_flow_idempotent_and_json_errors(web):
    app, db, seeded = web
    gold = gold_answers(db, seeded.job_id)
    add_user(db, "ann1")
    with db.session() as s:
        from cxrlabel.annotate.accounts import issue_api_token

        token = issue_api_token(s, s.scalar(select(User).where(User.username == "ann1")))
    api = TestClient(app, headers={"Authorization": f"Bearer {token}"})
    page = api.get("/api/jobs/test-job/pages/next").json()["page"]
    assert page["kind"] == "quiz" and len(page["items"]) == 3
    answers = [
        {
            "image_public_id": i["image_public_id"],
            "answer": gold[i["image_public_id"]][0],
            "certainty": "definitely",
        }
        for i in page["items"]
    ]
    url = f"/api/jobs/test-job/pages/{page['page_id']}/submit"
    bad = api.post(url, json={"client_submission_id": "x", "answers": answers[:1]})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "incomplete_page"
    bad = api.post(url, json={"client_submission_id": "x", "answers": [{"answer": 1}]})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"
    first = api.post(url, json={"client_submission_id": "abc", "answers": answers})
    assert first.status_code == 200 and first.json()["quiz_passed"] is True
    again = api.post(url, json={"client_submission_id": "abc", "answers": answers})
    assert again.json() == {**first.json(), "replayed": True}
    other = api.post(url, json={"client_submission_id": "def", "answers": answers})
    assert other.status_code == 409 and other.json()["error"]["code"] == "already_submitted"
    me = api.get("/api/jobs/test-job/me").json()
    assert me["status"] == "active" and me["gold_seen"] == 3
    assert api.get("/api/jobs/nope/me").json()["error"]["code"] == "not_found"
    assert api.get("/api/jobs/test-job/status").status_code == 403
    bogus = TestClient(app, headers={"Authorization": "Bearer wrong"})
    assert bogus.get("/api/jobs/test-job/me").status_code == 401


def test_api_admin_endpoints(web):
    app, db, seeded = web
    add_user(db, "boss", role="admin")
    with db.session() as s:
        from cxrlabel.annotate.accounts import issue_api_token

        token = issue_api_token(s, s.scalar(select(User).where(User.username == "boss")))
    api = TestClient(app, headers={"Authorization": f"Bearer {token}"})
    r = api.post("/api/invites", json={"uses": 5, "expires_hours": 2, "job": "test-job"})
    assert r.status_code == 201 and "/join/" in r.json()["link"]
    assert api.post("/api/invites", json={"uses": 0}).status_code == 422
    status = api.get("/api/jobs/test-job/status").json()
    assert status["by_status"]["needs_judgments"] == 12 and status["gold"] == 8
    assert api.get("/api/jobs/test-job/annotators").json() == []
    gold = api.get("/api/jobs/test-job/gold").json()
    assert len(gold) == 8 and gold[0]["reason"].startswith(GOLD_REASON_PREFIX)
    docs = TestClient(app).get("/api/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    with db.session() as s:
        assert s.scalar(select(func.count(Invite.id))) == 1
        assert s.scalar(select(Job.name)) == "test-job"


def test_serve_refuses_workers_with_sqlite(tmp_path):
    with pytest.raises(ValueError, match="PostgreSQL"):
        run_server(Settings(data_dir=tmp_path), workers=2)


def test_work_page_renders_outside_a_request(web):
    _, _, seeded = web
    items = [
        {"public_id": f"preview-{n}", "src": "data:image/png;base64,iVBORw0KGgo="} for n in range(3)
    ]
    fragment = render_work_page(seeded.spec, items)
    assert fragment.count('class="item"') == 3 and "data-preview" in fragment
    assert 'data-action="zoom-in"' in fragment and 'data-key="n"' in fragment
    page = render_standalone_work_page(seeded.spec, items)
    assert "<script>" in page and "WorkPage" in page and ".viewport" in page
