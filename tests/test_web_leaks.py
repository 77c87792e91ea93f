"""No leaks: drive whole annotator sessions and scan every response body and header.

Before a page is submitted, nothing an annotator receives may reveal which items are test
questions, their accepted answers or reasons, internal ids or paths, or other annotators' data.
"""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from cxrlabel.config import Settings
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import GoldItem, Image
from cxrlabel.web.app import create_app
from test_web_app import csrf, fill, login, page_form
from web_support import GOLD_REASON_PREFIX, add_user, gold_answers, remember_app, seed_job


class Recorder:
    """Wraps a TestClient; keeps (label, text of headers + body) of every response."""

    def __init__(self, client: TestClient) -> None:
        self.client, self.seen = client, []

    def __getattr__(self, name: str):
        method = getattr(self.client, name)

        def call(url, *args, **kwargs):
            response = method(url, *args, **kwargs)
            for r in [*response.history, response]:
                headers = "\n".join(f"{k}: {v}" for k, v in r.headers.items())
                body = r.text if "image" not in r.headers.get("content-type", "") else ""
                self.seen.append((f"{name.upper()} {r.request.url.path}", headers + "\n" + body))
            return response

        return call


@pytest.fixture
def leak_env(db_url, tmp_path):
    db = Database(db_url)
    seeded = seed_job(
        db, tmp_path, n_work=10, n_gold=8, quiz_length=3, items_per_page=4, jmin=2, jmax=2
    )
    app = remember_app(create_app(Settings(data_dir=tmp_path, db_url=db_url), db=db))
    yield app, db, seeded
    db.dispose()


def _secrets(db, job_id) -> dict[str, list[str]]:
    with db.session() as s:
        gold = s.execute(
            select(GoldItem.id, GoldItem.reason, Image.id, Image.sha256, Image.source_path).join(
                Image, Image.id == GoldItem.image_id
            )
        ).all()
        images = s.execute(select(Image.sha256, Image.source_path, Image.rendition_path)).all()
    return {
        "gold reasons": [r for _, r, *_ in gold],
        "internal image data": [x for row in images for x in row],
    }


def _scan(texts, forbidden: list[str], where: str) -> None:
    for label, text in texts:
        for needle in forbidden:
            assert needle not in text, f"{needle!r} leaked in {label} ({where})"


def test_whole_session_leaks_nothing_before_submission(leak_env):
    app, db, seeded = leak_env
    gold = gold_answers(db, seeded.job_id)
    secrets = _secrets(db, seeded.job_id)
    # Another annotator answers first, so the pages below include images with answers.
    add_user(db, "otheruser-7x")
    other = TestClient(app)
    login(other, "otheruser-7x")
    html = other.get("/jobs/test-job/page").text
    action, data = fill(html, gold)
    other.post(action, data=data)
    other_ids = [data["client_submission_id"], action.rsplit("/", 1)[1]]

    add_user(db, "ann1")
    client = Recorder(TestClient(app))
    login(client, "ann1")
    client.get("/")
    client.get("/jobs/test-job", follow_redirects=True)
    gold_positions, pages = [], 0
    for n in range(4):
        before = len(client.seen)
        r = client.get("/jobs/test-job/page")
        if "work-form" not in r.text:
            break
        html = r.text
        _, _, pids = page_form(html)
        srcs = re.findall(r'<img[^>]+src="(/img/[^"]+)"', html)
        assert [src.rsplit("/", 1)[1] for src in srcs] == pids
        for src in srcs:  # every image of the page, exactly as the browser loads it
            img = client.get(src)
            assert img.status_code == 200
        if "Quiz" not in html:
            prefetch = client.post("/jobs/test-job/prefetch", headers={"X-CSRF-Token": csrf(html)})
            assert prefetch.status_code == 200 and prefetch.json()["images"]
        pre_submit = client.seen[before:]
        forbidden = (
            secrets["gold reasons"]
            + secrets["internal image data"]
            + ["otheruser-7x", *other_ids, "is_gold", "accepted", "gold"]
        )
        _scan(pre_submit, forbidden, f"page {n} before submit")
        # Gold and work items are rendered identically: same markup once ids are blanked.
        sections = re.findall(r'<section class="item".*?</section>', html, re.S)
        # The signed image URL's MAC differs per image (gold or not); expiry and user do not.
        shapes = {
            re.sub(r"\d+", "#", re.sub(r"\.[\w-]{22}/", ".MAC/", sec.replace(pid, "PID")))
            for sec, pid in zip(sections, pids, strict=True)
        }
        assert len(shapes) == 1, "gold and work items differ in their markup"
        for urls in ([f"/img/{pid}" for pid in pids], srcs):  # session-checked and signed
            headers = [
                {
                    k: v
                    for k, v in client.client.get(url).headers.items()
                    if k not in ("etag", "content-length", "date")
                }
                for url in urls
            ]
            assert all(h == headers[0] for h in headers)
        gold_positions += [i for i, pid in enumerate(pids) if pid in gold]
        action, data = fill(html, gold, miss_gold=n == 1)
        after = len(client.seen)
        client.post(action, data=data, follow_redirects=True)
        # After submission, feedback may show the missed test question of THIS page only.
        this_page = {gold.public_id(pid) for pid in pids if pid in gold}
        with db.session() as s:
            allowed = set(
                s.scalars(select(GoldItem.reason).join(Image).where(Image.public_id.in_(this_page)))
            )
        _scan(
            client.seen[after:],
            [r for r in secrets["gold reasons"] if r not in allowed],
            f"page {n} feedback",
        )
        pages += 1
    assert pages >= 3
    assert any(GOLD_REASON_PREFIX in text for _, text in client.seen)  # the scan can fail
    client.get("/api/jobs/test-job/me")
    _scan(client.seen[-1:], secrets["gold reasons"] + ["otheruser-7x"], "stats")


def test_api_pages_leak_nothing(leak_env):
    app, db, seeded = leak_env
    gold = gold_answers(db, seeded.job_id)
    add_user(db, "ann1")
    client = Recorder(TestClient(app))
    login(client, "ann1")
    r = client.get("/api/jobs/test-job/pages/next")
    page = r.json()["page"]
    assert all(i["image_public_id"] in gold for i in page["items"])  # quiz = gold only
    text = r.text
    assert "gold" not in text.lower() and "accepted" not in text
    for pid, answers in gold.items():  # no accepted answer sits next to its image id
        assert not re.search(re.escape(pid) + r'[^}]*"(' + "|".join(answers) + ')"', text)
