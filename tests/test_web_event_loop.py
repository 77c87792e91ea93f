"""Form routes must not block the event loop on the database.

The browser's page submit, its contest form and the admin's contest resolution are ``async``
routes (they await the form body). Their database work waits for SQLite's one writer and runs
the quality engine: done on the event loop, it froze every other request of the process for
that long, image downloads included. It runs in a worker thread; these tests hold the write lock
from another thread and check that the server keeps answering meanwhile.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from cxrlabel.storage.db import Database
from web_support import add_user, csrf_from_html, gold_answers, web_app_with_small_job

PASSWORD = "correct horse battery"
HOLD_S = 1.5


@pytest.fixture
def env(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    db = Database(url)
    app, seeded = web_app_with_small_job(db, tmp_path, url)
    yield app, db, seeded
    db.dispose()


_csrf = csrf_from_html


def _signed_in_on_a_work_page(app, db, seeded) -> tuple[TestClient, dict]:
    add_user(db, "ann1")
    client = TestClient(app)
    token = _csrf(client.get("/login").text)
    client.post(
        "/login",
        data={"username": "ann1", "password": PASSWORD, "csrf_token": token, "next": "/"},
        follow_redirects=False,
    )
    gold = gold_answers(db, seeded.job_id)
    for _ in range(5):
        page = client.get("/api/jobs/test-job/pages/next").json()["page"]
        if page["kind"] == "work":
            return client, page
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
            headers={"X-CSRF-Token": _csrf(client.get("/account").text)},
        )
        assert r.status_code == 200, r.text
    raise AssertionError("no work page after the quiz")


def _hold_writer(
    db: Database, held: threading.Event, release: threading.Event, done: threading.Event
) -> None:
    with db._writer():  # what a long write transaction of another request holds
        held.set()
        release.wait(HOLD_S)
    done.set()


def test_browser_submit_waiting_for_the_writer_does_not_freeze_other_requests(env):
    app, db, seeded = env
    client, page = _signed_in_on_a_work_page(app, db, seeded)
    form = {
        "csrf_token": _csrf(client.get("/account").text),
        "client_submission_id": page["client_submission_id"],
    }
    for item in page["items"]:
        form[f"answer-{item['image_public_id']}"] = "NORMAL"
        form[f"certainty-{item['image_public_id']}"] = "definitely"
    image_url = page["items"][0]["image_url"]
    held, release, done = threading.Event(), threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_writer, args=(db, held, release, done))

    async def scenario() -> tuple[int, int, float, bool]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", cookies=dict(client.cookies.items())
        ) as c:
            submit = asyncio.create_task(
                c.post(f"/jobs/test-job/pages/{page['page_id']}", data=form)
            )
            await asyncio.sleep(0.2)  # the submit is now waiting for the writer
            t0 = time.perf_counter()
            image = await c.get(image_url)
            image_s = time.perf_counter() - t0
            still_held = not done.is_set()
            release.set()
            return (await submit).status_code, image.status_code, image_s, still_held

    holder.start()
    assert held.wait(5)
    try:
        submit_status, image_status, image_s, still_held = asyncio.run(scenario())
    finally:
        release.set()
        holder.join()
    assert image_status == 200
    assert still_held and image_s < HOLD_S / 2, f"image took {image_s:.2f} s behind the submit"
    assert submit_status == 303  # and the submit went through once the writer was free
