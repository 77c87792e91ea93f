"""Role matrix: every route of the app x every kind of visitor; only the intended ones get in.

The rules table below is the specification: (method, path template) -> roles allowed. The
test reads the app's route table, so a route added without a rule here fails the test (and a
rule for a route that no longer exists fails too). Path parameters always name annotator A's
objects (A's open page, A's image, A's judgment), so "allowed = {A}" also says that B, the
removed and the disqualified annotator cannot reach them.

"Allowed" means the request passed authorisation: not 401/403/404 and not sent to the login
page (a 409 or 422 from the handler is fine: it got in). "Denied" means 401, 403, 404 or a
redirect to /login.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest
from sqlalchemy import select

from security_support import ADMIN, ANON, DISQ, EXPERT, REMOVED, A, B, build_env

EVERYONE = frozenset({ANON, A, B, REMOVED, DISQ, EXPERT, ADMIN})
SIGNED_IN = EVERYONE - {ANON}
ANNOTATORS = frozenset({A, B, REMOVED, DISQ})
ONLY_A = frozenset({A})
ADMINS = frozenset({ADMIN})
REVIEWERS = frozenset({EXPERT, ADMIN})


@dataclass(frozen=True)
class Rule:
    allowed: frozenset[str]
    form: dict | None = None  # HTML form body (CSRF token added)
    json: object = None  # JSON body (CSRF header added)
    params: dict = field(default_factory=dict)  # overrides of the path parameters
    url: str | None = None  # a concrete URL (mounts)


R = Rule
RULES: dict[tuple[str, str], Rule] = {
    # public
    ("GET", "/api/openapi.json"): R(EVERYONE),
    ("GET", "/api/docs"): R(EVERYONE),
    ("GET", "/api/docs/init.js"): R(EVERYONE),
    ("GET", "/api/docs/assets/{name}"): R(EVERYONE, params={"name": "swagger-ui.css"}),
    ("GET", "/static"): R(EVERYONE, url="/static/app.css"),
    ("GET", "/login"): R(EVERYONE),
    ("GET", "/join/{token}"): R(EVERYONE),
    ("POST", "/join/{token}"): R(
        EVERYONE, form={"username": "x", "password": "a", "password2": "b"}
    ),
    # OpenID Connect sign-in: not configured here, so 404 for everyone; with a provider they
    # are public and checked in tests/test_oidc.py (state, PKCE, ID token, role mapping).
    ("GET", "/auth/oidc/login"): R(frozenset()),
    ("GET", "/auth/oidc/callback"): R(frozenset()),
    # any signed-in account
    ("GET", "/"): R(SIGNED_IN),
    ("GET", "/account"): R(SIGNED_IN),
    ("POST", "/account/token"): R(SIGNED_IN, form={}),
    ("GET", "/account/password"): R(SIGNED_IN),
    ("POST", "/account/password"): R(
        SIGNED_IN, form={"current": "x", "password": "a", "password2": "b"}
    ),
    # admin pages and API
    ("GET", "/admin"): R(ADMINS),
    ("GET", "/admin/jobs/{job_name}/annotators"): R(ADMINS),
    ("GET", "/admin/jobs/{job_name}/gold"): R(ADMINS),
    ("POST", "/admin/jobs/{job_name}/gold/{public_id}/reason"): R(
        ADMINS, form={"reason": "An expert's reason."}, params={"public_id": "gold_image"}
    ),
    ("GET", "/admin/invites"): R(ADMINS),
    ("POST", "/admin/invites"): R(ADMINS, form={"role": "annotator", "uses": "1"}),
    ("POST", "/admin/invites/{invite_id}/revoke"): R(ADMINS, form={}),
    ("GET", "/admin/users"): R(ADMINS),
    ("POST", "/admin/users/{user_id}/{action}"): R(ADMINS, form={}, params={"action": "enable"}),
    ("POST", "/api/users/{user_id}/{action}"): R(ADMINS, params={"action": "enable"}),
    ("GET", "/admin/jobs/{job_name}/contributors"): R(ADMINS),
    ("POST", "/admin/jobs/{job_name}/contributors/{user_id}/{action}"): R(
        ADMINS, form={"text": "hello"}, params={"action": "message"}
    ),
    ("GET", "/admin/jobs/{job_name}/contests"): R(ADMINS),
    ("POST", "/admin/jobs/{job_name}/contests/{contest_id}/resolve"): R(
        ADMINS, form={"action": "uphold", "reply": "it stands"}
    ),
    ("GET", "/admin/dashboard.js"): R(ADMINS),
    ("GET", "/admin/dashboard.css"): R(ADMINS),
    ("GET", "/admin/jobs/{job_name}/dashboard"): R(ADMINS),
    ("GET", "/admin/jobs/{job_name}/reports/qa.html"): R(ADMINS),
    ("GET", "/admin/jobs/{job_name}/reports/{kind}.{fmt}"): R(
        ADMINS, params={"kind": "full", "fmt": "csv"}
    ),
    ("POST", "/api/invites"): R(ADMINS, json={"role": "annotator"}),
    ("GET", "/api/jobs/{job_name}/status"): R(ADMINS),
    ("GET", "/api/jobs/{job_name}/annotators"): R(ADMINS),
    ("GET", "/api/jobs/{job_name}/gold"): R(ADMINS),
    ("GET", "/api/jobs/{job_name}/contributors"): R(ADMINS),
    ("POST", "/api/jobs/{job_name}/contributors/{user_id}/message"): R(
        ADMINS, json={"text": "hello"}
    ),
    ("POST", "/api/jobs/{job_name}/contributors/{user_id}/remove"): R(
        ADMINS, json={"reason": "test"}
    ),
    ("POST", "/api/jobs/{job_name}/contributors/{user_id}/reinstate"): R(
        ADMINS, json={"reason": "test"}
    ),
    ("GET", "/api/jobs/{job_name}/contests"): R(ADMINS),
    ("POST", "/api/jobs/{job_name}/contests/{contest_id}/resolve"): R(
        ADMINS, json={"action": "uphold", "reply": "it stands"}
    ),
    ("GET", "/api/jobs/{job_name}/gold-stats"): R(ADMINS),
    ("GET", "/api/jobs/{job_name}/quality/replay"): R(ADMINS),
    # experts (and admins)
    ("GET", "/review/{job_name}"): R(REVIEWERS),
    ("GET", "/review/{job_name}/{public_id}"): R(REVIEWERS, params={"public_id": "review_image"}),
    ("POST", "/review/{job_name}/{public_id}"): R(
        REVIEWERS, form={"label": "NORMAL"}, params={"public_id": "review_image"}
    ),
    ("GET", "/api/jobs/{job_name}/review"): R(REVIEWERS),
    # Gold proposals (crowd-proposed gold the expert confirms): the review image is no
    # finalised work image, so an allowed answer is refused (400) and records nothing.
    ("GET", "/gold-proposals/{job_name}"): R(REVIEWERS),
    ("POST", "/gold-proposals/{job_name}/{public_id}"): R(
        REVIEWERS, form={"answer": "NORMAL", "reason": "x"}, params={"public_id": "review_image"}
    ),
    ("POST", "/api/jobs/{job_name}/review/{public_id}"): R(
        REVIEWERS, json={"label": "NORMAL"}, params={"public_id": "review_image"}
    ),
    ("GET", "/api/model"): R(REVIEWERS),
    ("POST", "/api/model/predict"): R(REVIEWERS, form={}),
    # annotators; routes with A's objects in the path: A only
    ("GET", "/jobs/{job_name}"): R(ANNOTATORS),
    ("GET", "/jobs/{job_name}/instructions"): R(ANNOTATORS),
    ("GET", "/jobs/{job_name}/page"): R(ANNOTATORS),
    ("POST", "/jobs/{job_name}/prefetch"): R(ANNOTATORS, form={}),
    ("GET", "/api/jobs/{job_name}/pages/next"): R(ANNOTATORS),
    ("GET", "/api/jobs/{job_name}/me"): R(ANNOTATORS),
    ("POST", "/jobs/{job_name}/pages/{page_id}"): R(ONLY_A, form={}),
    ("GET", "/jobs/{job_name}/pages/{page_id}/feedback"): R(
        ONLY_A, params={"page_id": "done_page"}
    ),
    ("POST", "/jobs/{job_name}/contest"): R(
        ONLY_A, form={"reason": "no", "page_id": "x", "judgment_id": "$judgment_id"}
    ),
    ("POST", "/api/jobs/{job_name}/pages/{page_id}/submit"): R(
        ONLY_A, json={"client_submission_id": "zz", "answers": []}
    ),
    ("POST", "/api/jobs/{job_name}/contests"): R(
        ONLY_A, json={"reason": "no", "judgment_id": "$judgment_id"}
    ),
    # A's own alias of the image: valid for A only (experts and admins use the shared id:
    # test_reviewers_see_images_by_shared_id)
    ("GET", "/img/{public_id}"): R(ONLY_A),
    ("GET", "/thumb/{public_id}"): R(REVIEWERS, params={"public_id": "shared_public_id"}),
}
# Sign-out ends the caller's session: it is checked on its own below, last.
SIGN_OUT = {("POST", "/login"), ("POST", "/logout")}


def app_routes(app) -> set[tuple[str, str]]:
    """(method, path) of every route, including those of included routers (FastAPI >= 0.16x
    keeps them as ``_IncludedRouter`` entries) and mounts (as GET)."""
    found: set[tuple[str, str]] = set()

    def add(route) -> None:
        methods = getattr(route, "methods", None) or {"GET"}
        for m in methods - {"HEAD"}:
            found.add((m, route.path))

    for route in app.routes:
        if hasattr(route, "effective_route_contexts"):
            for ctx in route.effective_route_contexts():
                original = ctx.original_route
                methods = getattr(original, "methods", None) or {"GET"}
                for m in methods - {"HEAD"}:
                    found.add((m, ctx.path))
        else:
            add(route)
    return found


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("roles")
    e = build_env(f"sqlite:///{data_dir / 'db.sqlite3'}", data_dir)
    yield e
    e.db.dispose()


def test_every_route_has_a_rule(env):
    routes = app_routes(env.app)
    missing = sorted(routes - set(RULES) - SIGN_OUT)
    assert not missing, f"routes without a rule in test_security_roles.RULES: {missing}"
    stale = sorted(set(RULES) - routes)
    assert not stale, f"rules for routes that no longer exist: {stale}"


def _url(env, path: str, rule: Rule) -> str:
    if rule.url:
        return rule.url
    values = {**env.ids}
    for name, ref in rule.params.items():
        values[name] = env.ids.get(ref, ref)
    return path.format(**{k: values[k] for k in re.findall(r"{(\w+)}", path)})


def _body(env, body):  # "$name" values name A's objects
    if not isinstance(body, dict):
        return body
    return {
        k: env.ids[v[1:]] if isinstance(v, str) and v.startswith("$") else v
        for k, v in body.items()
    }


def _denied(response) -> bool:
    if response.status_code in (401, 403, 404):
        return True
    return response.status_code in (302, 303, 307) and response.headers.get(
        "location", ""
    ).startswith("/login")


def _order(item) -> tuple:
    # Image access first (B may legitimately be given A's work image on a later page of
    # B's own); writes that change what later requests see go last.
    (method, path), _rule = item
    late = "resolve" in path or "review" in path or "remove" in path
    return (not path.startswith("/img"), method == "POST", late, path)


def test_role_matrix(env):
    client = env.client()
    failures = []
    for (method, path), rule in sorted(RULES.items(), key=_order):
        url = _url(env, path, rule)
        # Denied roles first, so an allowed write cannot change what they would see.
        for role in sorted(EVERYONE - rule.allowed) + sorted(rule.allowed):
            r = env.request(
                client, role, method, url, form=_body(env, rule.form), json=_body(env, rule.json)
            )
            allowed = role in rule.allowed
            if r.status_code >= 500 and r.status_code != 503:
                failures.append(f"{role:<13} {method} {url}: {r.status_code} (server error)")
            elif allowed and _denied(r):
                failures.append(f"{role:<13} {method} {url}: {r.status_code} but should get in")
            elif not allowed and not _denied(r):
                failures.append(f"{role:<13} {method} {url}: {r.status_code} but should be denied")
    assert not failures, "\n".join(failures)


def test_inactive_annotators_get_no_work(env):
    """Removed and disqualified annotators reach the annotator pages, but get no page, no
    prefetch and cannot submit."""
    client = env.client()
    for role in (REMOVED, DISQ):
        r = env.request(client, role, "GET", "/jobs/test-job/page")
        assert r.status_code == 200 and "work-form" not in r.text and "Thank you" in r.text
        body = env.request(client, role, "GET", "/api/jobs/test-job/pages/next").json()
        assert body["page"] is None and body["reason"] in ("removed", "disqualified")
        r = env.request(client, role, "POST", "/jobs/test-job/prefetch", form={})
        assert r.json() == {"images": []}


def test_bearer_token_cannot_reach_another_annotators_objects(env):
    from cxrlabel.annotate.accounts import issue_api_token
    from cxrlabel.storage.models import Image, Page, PageItem, User

    with env.db.session() as s:
        token_b = issue_api_token(s, s.get(User, env.user_ids[B]))
    client = env.client()
    h = {"Authorization": f"Bearer {token_b}"}
    page = env.ids["done_page"]
    assert client.get(f"/jobs/test-job/pages/{page}/feedback", headers=h).status_code == 404
    r = client.post(
        f"/api/jobs/test-job/pages/{env.ids['page_id']}/submit",
        headers=h,
        json={"client_submission_id": "b-1", "answers": []},
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "page_not_found"
    with env.db.session() as s:  # an image on A's pages that B was never given
        mine = select(PageItem.image_id).join(Page).where(Page.user_id == env.user_ids[B])
        image = s.scalar(
            select(Image.public_id)
            .join(PageItem, PageItem.image_id == Image.id)
            .join(Page)
            .where(Page.user_id == env.user_ids[A], Image.id.not_in(mine))
            .limit(1)
        )
    assert image is not None
    assert client.get(f"/img/{image}", headers=h).status_code == 404
    r = client.post(
        "/api/jobs/test-job/contests",
        headers=h,
        json={"judgment_id": env.ids["judgment_id"], "reason": "mine now"},
    )
    assert r.status_code == 404
    assert client.get("/api/jobs/test-job/gold", headers=h).status_code == 403
    assert client.get("/api/jobs/test-job/quality/replay", headers=h).status_code == 403
    assert (
        client.get("/api/jobs/test-job/me", headers={"Authorization": "Bearer forged"}).status_code
        == 401
    )


def test_reviewers_see_images_by_shared_id(env):
    """Experts and admins name images by the shared public id; annotators by theirs only."""
    client = env.client()
    shared = f"/img/{env.ids['shared_public_id']}"
    for role in (EXPERT, ADMIN):
        assert env.request(client, role, "GET", shared).status_code == 200
    for role in (A, B):
        assert env.request(client, role, "GET", shared).status_code == 404


def test_sign_in_and_out_for_every_role(env):
    client = env.client()
    for role in sorted(EVERYONE):
        r = env.request(
            client,
            role,
            "POST",
            "/login",
            form={"username": "nobody-here", "password": "wrong", "next": "/"},
        )
        assert r.status_code == 401, role  # reached the handler: a wrong password is refused
        r = env.request(client, role, "POST", "/logout", form={})
        assert r.status_code == 303 and r.headers["location"] == "/login"
        cleared = r.headers.get("set-cookie", "")
        assert "cxrlabel_session=" in cleared
