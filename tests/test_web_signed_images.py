"""Signed, expiring image URLs served outside the app stack (web/images_fast.py, issue 11).

Work pages and the page API hand out ``/img/<expiry>.<user>.<mac>/<public id>``; the pure-ASGI
handler in front of the app serves them with no session and no database query. What must hold:
an annotator gets URLs only for the images of their own pages, a URL cannot be altered to reach
another image, user or expiry, an expired one stops working, gold and work look the same, and a
refused request never carries file bytes.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from cxrlabel.annotate.aliases import Aliases
from cxrlabel.config import Settings
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import Image, User
from cxrlabel.web.app import create_app
from cxrlabel.web.images_fast import RenditionStore, SignedImages
from cxrlabel.web.security import ImageUrlSigner, load_secret_key
from web_support import add_user, gold_answers, resolve_alias, web_app_with_small_job

PASSWORD = "correct horse battery"
SIGNED = re.compile(r"^/img/(\d+)\.(\d+)\.([A-Za-z0-9_-]{22})/([A-Za-z0-9_-]+)$")


@pytest.fixture
def env(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    db = Database(url)
    app, seeded = web_app_with_small_job(db, tmp_path, url)
    yield app, db, seeded, tmp_path
    db.dispose()


def _login(client: TestClient, name: str) -> None:
    html = client.get("/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    r = client.post(
        "/login",
        data={"username": name, "password": PASSWORD, "csrf_token": token, "next": "/"},
        follow_redirects=False,
    )
    assert r.status_code == 303


def _api_page(client: TestClient) -> dict:
    page = client.get("/api/jobs/test-job/pages/next").json()["page"]
    assert page is not None
    return page


def _finish_quiz(client: TestClient, gold: dict[str, list[str]]) -> None:
    """Pass the quiz through the API (session cookie + CSRF header)."""
    for _ in range(5):
        page = _api_page(client)
        if page["kind"] != "quiz":
            return
        csrf = _csrf(client)
        answers = [
            {
                "image_public_id": i["image_public_id"],
                "answer": gold[i["image_public_id"]][0],
                "certainty": "definitely",
            }
            for i in page["items"]
        ]
        r = client.post(
            f"/api/jobs/test-job/pages/{page['page_id']}/submit",
            json={"client_submission_id": page["client_submission_id"], "answers": answers},
            headers={"X-CSRF-Token": csrf},
        )
        assert r.status_code == 200, r.text


def _csrf(client: TestClient) -> str:
    html = client.get("/account").text
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def _file(data_dir: Path, db: Database, alias: str) -> bytes:
    """The rendition bytes of the image an annotator sees as ``alias``."""
    public_id = resolve_alias(db, alias) or alias
    with db.session() as s:
        rel = s.scalar(select(Image.rendition_path).where(Image.public_id == public_id))
    return (data_dir / rel).read_bytes()


def test_page_urls_are_signed_and_served_without_credentials(env):
    app, db, seeded, data_dir = env
    gold = gold_answers(db, seeded.job_id)
    uid = add_user(db, "ann1")
    client = TestClient(app)
    _login(client, "ann1")
    _finish_quiz(client, gold)
    page = _api_page(client)
    urls = [i["image_url"] for i in page["items"]]
    parts = [SIGNED.match(u) for u in urls]
    assert all(parts), urls
    # One expiry and one user for the whole page: gold and work items look the same.
    assert {m.group(1) for m in parts} == {parts[0].group(1)}
    assert {m.group(2) for m in parts} == {str(uid)}
    assert [m.group(4) for m in parts] == [i["image_public_id"] for i in page["items"]]
    assert any(i["image_public_id"] in gold for i in page["items"])  # a hidden test question
    anonymous = TestClient(app)  # the URL itself is the credential: no cookie, no token
    headers = []
    for item, url in zip(page["items"], urls, strict=True):
        r = anonymous.get(url)
        assert r.status_code == 200
        assert r.content == _file(data_dir, db, item["image_public_id"])
        assert r.headers["content-type"] == "image/png"
        assert r.headers["cache-control"] == "private, max-age=31536000, immutable"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert "set-cookie" not in r.headers and "last-modified" not in r.headers
        r304 = anonymous.get(url, headers={"If-None-Match": r.headers["etag"]})
        assert r304.status_code == 304 and r304.content == b""
        headers.append(
            {k: v for k, v in r.headers.items() if k not in ("etag", "content-length", "date")}
        )
    assert all(h == headers[0] for h in headers)  # gold and work: identical headers
    head = anonymous.head(urls[0])
    assert head.status_code == 200 and head.content == b""
    assert anonymous.post(urls[0]).status_code == 405


def test_altered_forged_and_expired_urls_are_refused(env):
    app, db, seeded, data_dir = env
    gold = gold_answers(db, seeded.job_id)
    add_user(db, "ann1")
    client = TestClient(app)
    _login(client, "ann1")
    page = _api_page(client)
    url = page["items"][0]["image_url"]
    expires, uid, mac, pid = SIGNED.match(url).groups()
    with db.session() as s:
        other = s.scalar(
            select(Image.public_id).where(
                Image.public_id.not_in([i["image_public_id"] for i in page["items"]])
            )
        )
    ann2 = add_user(db, "ann2")
    signer = ImageUrlSigner(load_secret_key(data_dir))
    wrong_key = ImageUrlSigner(b"not the secret")
    bad = [
        f"/img/{expires}.{uid}.{mac}/{other}",  # another image
        f"/img/{int(expires) + 3600}.{uid}.{mac}/{pid}",  # a later expiry
        f"/img/{expires}.{ann2}.{mac}/{pid}",  # another user
        f"/img/{expires}.{uid}.{mac[:-1]}A/{pid}"
        if mac[-1] != "A"
        else f"/img/{expires}.{uid}.{mac[:-1]}B/{pid}",  # one character off
        wrong_key.url(pid, int(uid), int(expires)),  # signed with another key
        signer.url(pid, int(uid), int(time.time()) - 1),  # expired
        f"/img/{expires}.{uid}/{pid}",
        f"/img/x.y.z/{pid}",
        f"/img//{pid}",
        f"/img/{expires}.{uid}.{mac}\u00e9/{pid}",
        f"/img/{'9' * 200}.{uid}.{mac}/{pid}",
    ]
    secret_bytes = _file(data_dir, db, pid)
    anonymous = TestClient(app)
    for u in bad:
        r = anonymous.get(u)
        assert r.status_code == 403, u
        assert secret_bytes not in r.content and r.headers["content-type"].startswith("text/")
    # A valid signature for an image that does not exist: 404, same as an unknown id.
    assert anonymous.get(signer.url("no-such-image", 1, int(time.time()) + 60)).status_code == 404
    # The session-checked URL still refuses someone else's image (review/admin pages use it).
    assert anonymous.get(f"/img/{pid}", follow_redirects=False).status_code == 303
    # A URL does not reveal the answer or the gold status, only ids the page already has.
    assert not any(word in url.lower() for word in ("gold", "normal", "pneumonia"))
    assert gold  # the job has test questions


def test_prefetched_urls_are_the_ones_the_next_page_shows(env):
    """The browser caches prefetched images by URL: the next page must reuse those URLs."""
    app, db, seeded, _ = env
    gold = gold_answers(db, seeded.job_id)
    add_user(db, "ann1")
    client = TestClient(app)
    _login(client, "ann1")
    _finish_quiz(client, gold)
    html = client.get("/jobs/test-job/page").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    srcs = re.findall(r'<img[^>]+src="(/img/[^"]+)"', html)
    assert srcs and all(SIGNED.match(s) for s in srcs)
    prefetched = client.post("/jobs/test-job/prefetch", headers={"X-CSRF-Token": token})
    images = prefetched.json()["images"]
    assert images and all(SIGNED.match(u) for u in images) and not set(images) & set(srcs)
    action = re.search(r'id="work-form" method="post" action="([^"]+)"', html).group(1)
    client_id = re.search(r'name="client_submission_id" value="([^"]+)"', html).group(1)
    form = {"csrf_token": token, "client_submission_id": client_id}
    for pid in dict.fromkeys(re.findall(r'name="answer-([^"]+)"', html)):
        form[f"answer-{pid}"] = gold.get(pid, ["NORMAL"])[0]
        form[f"certainty-{pid}"] = "definitely"
    client.post(action, data=form, follow_redirects=False)
    nxt = client.get("/jobs/test-job/page").text
    assert re.findall(r'<img[^>]+src="(/img/[^"]+)"', nxt) == images


def test_url_from_another_worker_is_served_after_one_lookup(env):
    """Several workers (or a restart): a fresh process has never seen the URL's image."""
    app, db, _seeded, data_dir = env
    uid = add_user(db, "ann1")
    client = TestClient(app)
    _login(client, "ann1")
    page = _api_page(client)
    other_worker = create_app(Settings(data_dir=data_dir, db_url=db.url), db=db)
    store = other_worker.state.image_urls.store
    pid = page["items"][0]["image_public_id"]
    assert store.cached(uid, pid) is None
    r = TestClient(other_worker).get(page["items"][0]["image_url"])
    assert r.status_code == 200 and r.content == _file(data_dir, db, pid)
    # That one look-up remembered the whole page: its other images need no query.
    assert all(store.cached(uid, i["image_public_id"]) is not None for i in page["items"])
    on_page = {resolve_alias(db, i["image_public_id"]) for i in page["items"]}
    with db.session() as s:
        elsewhere = s.scalar(select(Image.public_id).where(Image.public_id.not_in(on_page)))
    assert store.cached(uid, store.aliases.image(elsewhere, uid)) is None
    for item in page["items"][1:]:
        assert TestClient(other_worker).get(item["image_url"]).status_code == 200


def test_rendition_store_is_bounded_and_stays_in_the_data_dir(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    try:
        store = RenditionStore(tmp_path, db, Aliases(b"k"), max_entries=3)
        for n in range(5):
            store.remember(1, f"id{n}", f"renditions/{n}.jpg")
        assert [store.cached(1, f"id{n}") is not None for n in range(5)] == [
            False,
            False,
            True,
            True,
            True,
        ]
        store.remember(1, "escape", "../outside.jpg")
        assert store.resolve(store.cached(1, "escape")) is None  # never outside the data dir
        (tmp_path.parent / "outside.jpg").write_bytes(b"not yours")
        signer = ImageUrlSigner(b"k")
        app = SignedImages(None, signer=signer, store=store)  # type: ignore[arg-type]
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        url = signer.url("escape", 1, int(time.time()) + 60)
        asyncio.run(app({"type": "http", "method": "GET", "path": url, "headers": []}, None, send))
        assert sent[0]["status"] == 404 and b"not yours" not in sent[1]["body"]
        assert store.load("unknown", 1) is None
    finally:
        db.dispose()


def test_zero_copy_send_is_used_when_the_server_offers_it(tmp_path):
    """uvicorn does not offer ``http.response.zerocopysend``; a server that does gets the file
    object instead of the bytes (after the first read, which computes the ETag)."""
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    (tmp_path / "renditions").mkdir()
    (tmp_path / "renditions" / "a.png").write_bytes(b"\x89PNG fake image bytes")
    store = RenditionStore(tmp_path, db, Aliases(b"k"))
    store.remember(7, "img-a", "renditions/a.png")
    signer = ImageUrlSigner(b"k")

    async def inner_app(scope, receive, send):
        raise AssertionError("signed URLs must not reach the app")

    handler = SignedImages(inner_app, signer=signer, store=store)
    url = signer.url("img-a", 7, int(time.time()) + 60)

    def call(extensions: dict) -> list[dict]:
        sent: list[dict] = []

        async def send(message: dict) -> None:
            if message["type"] == "http.response.zerocopysend":
                message = {**message, "data": message["file"].read(message["count"])}
            sent.append(message)

        scope = {
            "type": "http",
            "method": "GET",
            "path": url,
            "headers": [],
            "extensions": extensions,
        }
        asyncio.run(handler(scope, None, send))
        return sent

    try:
        first = call({"http.response.zerocopysend": {}})
        assert first[0]["status"] == 200 and first[1]["body"] == b"\x89PNG fake image bytes"
        second = call({"http.response.zerocopysend": {}})
        assert second[0]["status"] == 200 and second[1]["type"] == "http.response.zerocopysend"
        assert second[1]["data"] == b"\x89PNG fake image bytes"
        assert dict(second[0]["headers"])[b"content-length"] == b"21"
        plain = call({})
        assert plain[1]["type"] == "http.response.body"
    finally:
        db.dispose()


def test_non_signed_paths_pass_through(env):
    app, db, _seeded, _ = env
    add_user(db, "boss", "admin")
    client = TestClient(app)
    _login(client, "boss")
    with db.session() as s:
        pid = s.scalar(select(Image.public_id).limit(1))
        assert s.scalar(select(User.id).where(User.username == "boss"))
    r = client.get(f"/img/{pid}")  # an admin through the session-checked route
    assert r.status_code == 200 and r.headers["vary"] == "Cookie"
    assert client.get("/img/..%2f..%2fsecret_key").status_code == 404


def test_session_middleware_signs_no_cookie_for_bearer_calls(env):
    """The pure-ASGI session middleware: pages get the anonymous CSRF cookie and every security
    header; a bearer-token API call gets the headers but no cookie signed for nothing."""
    from cxrlabel.annotate.accounts import issue_api_token

    app, db, _seeded, _ = env
    uid = add_user(db, "ann1")
    with db.session() as s:
        token = issue_api_token(s, s.get(User, uid))
    client = TestClient(app)
    page = client.get("/login")
    assert "cxrlabel_session=" in page.headers["set-cookie"]
    api = TestClient(app).get("/api/jobs/test-job/me", headers={"Authorization": f"Bearer {token}"})
    assert api.status_code == 200 and "set-cookie" not in api.headers
    for r in (page, api):
        assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
    bad = TestClient(app).get("/api/jobs/test-job/me", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.headers["x-content-type-options"] == "nosniff"


def test_concurrent_misses_of_one_page_cost_one_lookup(env):
    """A browser fetches a page's images at once; on a worker that did not issue them the
    first miss loads the page and the others wait for it instead of querying too."""
    import httpx
    from sqlalchemy import event

    app, db, _seeded, _ = env
    add_user(db, "ann1")
    client = TestClient(app)
    _login(client, "ann1")
    urls = [i["image_url"] for i in _api_page(client)["items"]]
    other_worker = create_app(Settings(data_dir=db_path_dir(db), db_url=db.url), db=db)
    selects: list[str] = []

    def count(conn, cursor, statement, *args):
        if "FROM images" in statement:
            selects.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)

    async def fetch_all() -> list[int]:
        transport = httpx.ASGITransport(app=other_worker)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return [r.status_code for r in await asyncio.gather(*(c.get(u) for u in urls))]

    try:
        assert asyncio.run(fetch_all()) == [200] * len(urls)
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    assert 1 <= len(selects) <= 2, selects  # the image, then its page: not one per image


def db_path_dir(db: Database) -> Path:
    return Path(db.url.removeprefix("sqlite:///")).parent


def test_signed_images_carry_hsts_like_the_app_responses(env, monkeypatch):
    """Signed images are answered before the session middleware that adds HSTS: over HTTPS
    (or a site declared https-only) they must carry it too, refusals included."""
    app, db, seeded, _ = env
    monkeypatch.delenv("CXRLABEL_COOKIE_SECURE", raising=False)
    monkeypatch.delenv("CXRLABEL_HSTS_MAX_AGE", raising=False)
    add_user(db, "ann1")
    client = TestClient(app, base_url="https://testserver")
    _login(client, "ann1")
    _finish_quiz(client, gold_answers(db, seeded.job_id))
    url = _api_page(client)["items"][0]["image_url"]
    https = TestClient(app, base_url="https://testserver")
    page_hsts = https.get("/login").headers["strict-transport-security"]
    served, refused = https.get(url), https.get(url[:-1] + "x")
    assert served.status_code == 200 and refused.status_code in (403, 404)
    for r in (served, refused, https.get(url, headers={"If-None-Match": served.headers["etag"]})):
        assert r.headers["strict-transport-security"] == page_hsts
    assert "strict-transport-security" not in TestClient(app).get(url).headers  # plain http
    monkeypatch.setenv("CXRLABEL_COOKIE_SECURE", "1")  # https-only behind a TLS proxy
    assert TestClient(app).get(url).headers["strict-transport-security"] == page_hsts
