"""A real annotator session in headless Chromium against a real uvicorn server.

Invite link -> sign up -> instructions -> quiz -> two work pages by keyboard only -> a missed
test question with the expert's reason -> contest it; then a second annotator never gets the
first one's images beyond the job's targets. Screenshots go to the artifacts dir.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
import uvicorn
from sqlalchemy import func, select

from cxrlabel.annotate.accounts import create_invite, issue_api_token
from cxrlabel.config import Settings
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import Contest, Job, Judgment, Page, PageItem, User
from cxrlabel.web.app import create_app
from web_support import add_user, gold_answers, seed_job

pytestmark = pytest.mark.browser
PASSWORD = "correct horse battery"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live(tmp_path):
    url = f"sqlite:///{tmp_path / 'web.sqlite3'}"
    db = Database(url)
    seeded = seed_job(
        db,
        tmp_path,
        n_work=16,
        n_gold=8,
        quiz_length=3,
        items_per_page=4,
        jmin=1,
        jmax=1,
        min_accuracy=0.6,
        phantom=True,
    )
    app = create_app(Settings(data_dir=tmp_path, db_url=url), db=db)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}", db, seeded
    server.should_exit = True
    thread.join(10)
    db.dispose()


def _current_pid(page) -> str:
    src = page.locator(".item.current img").get_attribute("src")
    return src.rsplit("/", 1)[1]


def _answer_page_by_keyboard(page, gold, *, miss_gold: bool) -> list[str]:
    """Label every image with keys only: N/P, 1, J; returns the page's image ids."""
    n_items = page.locator(".item").count()
    pids = []
    for i in range(n_items):
        pid = _current_pid(page)
        pids.append(pid)
        answer = "NORMAL"
        if pid in gold:
            answer = gold[pid][0]
            if miss_gold:
                answer = "PNEUMONIA" if answer == "NORMAL" else "NORMAL"
        page.keyboard.press("n" if answer == "NORMAL" else "p")
        page.keyboard.press("1")
        if i < n_items - 1:
            page.keyboard.press("j")
    return pids


def test_annotator_session_in_chromium(browser, live, artifacts_dir):
    base, db, seeded = live
    gold = gold_answers(db, seeded.job_id)
    with db.session() as s:
        job = s.get(Job, seeded.job_id)
        _invite, token = create_invite(s, max_uses=1, job=job)
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)

    # Sign up through the invite link.
    page.goto(f"{base}/join/{token}")
    page.fill("#username", "browser-ann")
    page.fill("#password", PASSWORD)
    page.fill("#password2", PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url("**/jobs/test-job/instructions")
    assert page.locator("h1").first.inner_text() == "How to label"
    assert page.evaluate("window.scrollY") == 0  # the instructions are read from the top
    page.click("[data-role=start]")

    # Quiz, by keyboard. Submitting too early is blocked on the client.
    page.wait_for_url("**/jobs/test-job/page")
    page.wait_for_selector(".item.current img")
    assert "Quiz" in page.locator(".banner").first.inner_text()
    page.keyboard.press("Enter")
    error = page.locator("[data-role=form-error]")
    assert error.is_visible() and "Image 1 still needs an answer" in error.inner_text()
    page.screenshot(path=str(artifacts_dir / "annotator-quiz-page.png"), full_page=True)
    _answer_page_by_keyboard(page, gold, miss_gold=False)
    page.keyboard.press("Enter")
    page.wait_for_url("**/feedback")
    assert "You passed the quiz" in page.content()
    page.keyboard.press("Enter")  # "Continue" is focused

    # Work page 1: viewer by keyboard and wheel, then miss the hidden test question.
    page.wait_for_url("**/jobs/test-job/page")
    page.wait_for_selector(".item.current img")
    assert "Quiz" not in page.locator("main").inner_text()
    img = page.locator(".item.current img")
    page.keyboard.press("+")
    page.keyboard.press("+")
    assert "scale(1.5625)" in img.get_attribute("style")
    page.keyboard.press("i")
    page.keyboard.press("]")
    style = img.get_attribute("style")
    assert "invert(1)" in style and "contrast(1.1)" in style
    box = page.locator(".item.current .viewport").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -300)
    assert "scale(1.5625)" not in img.get_attribute("style")
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 60, box["y"] + box["height"] / 2 + 20)
    page.mouse.up()
    assert "translate(0px, 0px)" not in img.get_attribute("style")
    page.screenshot(path=str(artifacts_dir / "annotator-work-page-viewer.png"), full_page=True)
    page.keyboard.press("0")
    assert "scale(1)" in img.get_attribute("style")
    page.wait_for_load_state("networkidle")  # the next page was reserved and prefetched
    with db.session() as s:
        user = s.scalar(select(User).where(User.username == "browser-ann"))
        open_pages = s.scalar(
            select(func.count(Page.id)).where(Page.user_id == user.id, Page.submitted_at.is_(None))
        )
    assert open_pages == 2
    page1 = _answer_page_by_keyboard(page, gold, miss_gold=True)
    assert any(pid in gold for pid in page1)
    page.keyboard.press("Enter")
    page.wait_for_url("**/feedback")
    missed = page.locator("article.missed")
    assert missed.count() == 1
    assert "EXPERT-REASON-" in missed.inner_text() and "Expert answer" in missed.inner_text()
    page.screenshot(path=str(artifacts_dir / "annotator-feedback-missed-gold.png"), full_page=True)
    page.fill("article.missed textarea", "I think the lungs look clear.")
    page.click("article.missed button[type=submit]")
    page.wait_for_selector("text=a job administrator will review your comment")

    # Work page 2 (the prefetched one): all right, keyboard only.
    page.click("[data-role=continue]")
    page.wait_for_url("**/jobs/test-job/page")
    page.wait_for_selector(".item.current img")
    page2 = _answer_page_by_keyboard(page, gold, miss_gold=False)
    page.keyboard.press("Enter")
    page.wait_for_url("**/jobs/test-job/page")  # no feedback stop: straight to page 3
    page.wait_for_selector(".item.current img")
    assert not errors, errors

    # Phone layout of the same page.
    phone = browser.new_context(
        viewport={"width": 390, "height": 844},
        is_mobile=True,
        has_touch=True,
        storage_state=context.storage_state(),
    )
    mobile = phone.new_page()
    mobile.goto(f"{base}/jobs/test-job/page")
    mobile.wait_for_selector(".item.current img")
    mobile.screenshot(path=str(artifacts_dir / "annotator-work-page-phone.png"), full_page=True)
    phone.close()
    context.close()

    with db.session() as s:
        user = s.scalar(select(User).where(User.username == "browser-ann"))
        assert (
            s.scalar(select(func.count(Judgment.id)).where(Judgment.user_id == user.id))
            == 3 + 4 + 4
        )
        assert s.scalar(select(func.count(Contest.id))) == 1
        first_user_images = set(
            s.scalars(
                select(PageItem.image_id)
                .join(Page)
                .where(Page.user_id == user.id, PageItem.is_gold.is_(False))
            )
        )
        assert set(page1 + page2)  # sanity

    # A second annotator (API) never gets images whose target (1) the first one filled or holds.
    add_user(db, "second-ann")
    with db.session() as s:
        api_token = issue_api_token(s, s.scalar(select(User).where(User.username == "second-ann")))
    import httpx

    api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {api_token}"})
    received: list[str] = []
    for n in range(10):
        body = api.get("/api/jobs/test-job/pages/next").json()
        if body["page"] is None:
            break
        p = body["page"]
        answers = [
            {
                "image_public_id": i["image_public_id"],
                "answer": gold.get(i["image_public_id"], ["NORMAL"])[0],
                "certainty": "definitely",
            }
            for i in p["items"]
        ]
        r = api.post(
            f"/api/jobs/test-job/pages/{p['page_id']}/submit",
            json={"client_submission_id": f"s{n}", "answers": answers},
        )
        assert r.status_code == 200, r.text
        received += [i["image_public_id"] for i in p["items"]]
    with db.session() as s:
        second_ids = set(s.scalars(select(Page.id).join(User).where(User.username == "second-ann")))
        second_work = set(
            s.scalars(
                select(PageItem.image_id).where(
                    PageItem.page_id.in_(second_ids), PageItem.is_gold.is_(False)
                )
            )
        )
    assert received and second_work
    assert not second_work & first_user_images
