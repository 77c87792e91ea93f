"""Security headers on every kind of response, cookie flags, login throttling, and the audit
log of admin actions."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from cxrlabel.storage.models import AuditEvent
from cxrlabel.web.throttle import LoginRateLimiter
from security_support import ADMIN, ANON, A, build_env

PAGES = [
    "/login",
    "/",
    "/account",
    "/jobs/test-job/page",
    "/api/jobs/test-job/me",
    "/admin",
    "/admin/jobs/test-job/dashboard",
    "/no-such-page",
    "/api/no-such",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("headers")
    e = build_env(f"sqlite:///{data_dir / 'db.sqlite3'}", data_dir)
    yield e
    e.db.dispose()


def _csp(headers) -> dict[str, str]:
    policy = headers["content-security-policy"]
    return {d.split()[0]: d.strip() for d in policy.split(";") if d.strip()}


def test_headers_on_pages_api_errors_and_images(env):
    client = env.client()
    urls = [*PAGES, f"/img/{env.ids['public_id']}", "/static/app.css"]
    for role in (ANON, A, ADMIN):
        for url in urls:
            r = env.request(client, role, "GET", url)
            h = r.headers
            assert h["x-content-type-options"] == "nosniff", url
            assert h["x-frame-options"] == "DENY", url
            assert h["referrer-policy"] == "no-referrer", url
            csp = _csp(h)
            assert csp["frame-ancestors"] == "frame-ancestors 'none'", url
            assert "'unsafe-inline'" not in csp["script-src"], url
            assert "'unsafe-eval'" not in csp["script-src"], url
            assert csp["object-src"] == "object-src 'none'"
            assert "base-uri" in csp
            if not url.startswith(("/img/", "/static/")):
                assert "no-store" in h.get("cache-control", ""), url


def test_no_inline_script_in_html_pages(env):
    """The CSP forbids inline scripts; the pages must not need any (else they would break)."""
    client = env.client()
    for role, url in [
        (ANON, "/login"),
        (A, "/jobs/test-job/page"),
        (A, "/account"),
        (ADMIN, "/admin"),
        (ADMIN, "/admin/jobs/test-job/dashboard"),
        (ADMIN, "/admin/jobs/test-job/contributors"),
    ]:
        html = env.request(client, role, "GET", url).text
        for tag in re.findall(r"<script\b[^>]*>(.*?)</script>", html, re.S):
            assert not tag.strip(), f"inline script on {url}"
        assert not re.search(r"\son[a-z]+\s*=", html), f"inline event handler on {url}"
        assert "javascript:" not in html


def test_cookie_flags_and_secure_over_https(env, monkeypatch):
    client = env.client()
    r = client.get("/login")
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
    assert "secure" not in cookie  # plain http on loopback: a Secure cookie would be dropped
    https = env.client()
    https.base_url = https.base_url.copy_with(scheme="https")
    assert "secure" in https.get("https://testserver/login").headers["set-cookie"].lower()
    monkeypatch.setenv("CXRLABEL_COOKIE_SECURE", "1")
    client.cookies.clear()
    assert "secure" in client.get("/login").headers["set-cookie"].lower()


def test_login_throttled_per_address_and_username(env):
    """Three failures from one address for one username block that pair (the owner signing
    in from another address is not locked out: test_security_accounts.py)."""
    env.app.state.login_limiter = LoginRateLimiter(env.db, max_failures=3, window_s=900)
    try:
        client = env.client()
        for i in range(3):
            client.cookies.clear()
            html = client.get("/login").text
            token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
            r = client.post(
                "/login", data={"username": "ann-bob", "password": f"guess{i}", "csrf_token": token}
            )
            assert r.status_code == 401
        html = client.get("/login").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
        r = client.post(
            "/login",
            data={"username": "ann-bob", "password": "correct horse battery", "csrf_token": token},
        )
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
        assert "set-cookie" not in r.headers or "cxrlabel_session=" in r.headers["set-cookie"]
    finally:
        env.app.state.login_limiter.clear()  # the table outlives the test's limiter
        env.app.state.login_limiter = LoginRateLimiter(env.db)


def test_admin_actions_are_audited(env):
    client = env.client()
    uid = env.ids["user_id"]
    with env.db.session() as s:
        before = s.scalar(select(AuditEvent.id).order_by(AuditEvent.id.desc()).limit(1)) or 0
    steps = [
        ("POST", "/api/invites", {"role": "annotator"}, "admin.invite_created"),
        (
            "POST",
            f"/api/jobs/test-job/contributors/{uid}/message",
            {"text": "hi"},
            "admin.message_sent",
        ),
        (
            "POST",
            f"/api/jobs/test-job/contributors/{uid}/remove",
            {"reason": "audit test"},
            "admin.annotator_removed",
        ),
        (
            "POST",
            f"/api/jobs/test-job/contributors/{uid}/reinstate",
            {"reason": "back"},
            "admin.annotator_reinstated",
        ),
    ]
    for method, url, body, _action in steps:
        r = env.request(client, ADMIN, method, url, json=body)
        assert r.status_code in (200, 201), (url, r.text)
    r = env.request(client, ADMIN, "POST", f"/admin/invites/{env.ids['invite_id']}/revoke", form={})
    assert r.status_code == 200
    with env.db.session() as s:
        rows = s.scalars(
            select(AuditEvent).where(AuditEvent.id > before).order_by(AuditEvent.id)
        ).all()
        actions = [(a.action, a.actor_id) for a in rows]
    admin_id = env.user_ids[ADMIN]
    for *_rest, action in steps:
        assert (action, admin_id) in actions, (action, actions)
    assert ("admin.invite_revoked", admin_id) in actions
