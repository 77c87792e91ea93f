"""Training in real headless Chromium against a real uvicorn server (issue 17): instructions ->
a training page by keyboard -> the feedback shows each case's right answer, the expert's reason
and the image again (loaded, with a real size) -> the second training page -> the quiz.
Screenshots go to the artifacts dir."""

from __future__ import annotations

import pytest

from cxrlabel.config import Settings
from cxrlabel.storage.db import Database
from cxrlabel.web.app import create_app
from live_server import LiveServer
from test_browser_annotator import _answer_page_by_keyboard
from test_training import TRAINING_REASON, _make_training
from web_support import add_user, seed_job

pytestmark = pytest.mark.browser
PASSWORD = "correct horse battery"


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
        min_accuracy=0.6,
        phantom=True,
        training_items=4,
        training_per_page=2,
    )
    _make_training(db, seeded, 4)
    app = create_app(Settings(data_dir=tmp_path, db_url=url), db=db)
    with LiveServer(app) as base_url:
        yield base_url, db
    db.dispose()


def test_training_feedback_in_chromium(browser, live, artifacts_dir):
    base, db = live
    add_user(db, "trainee")
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(f"{base}/login")
    page.fill("#username", "trainee")
    page.fill("#password", PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(lambda u: "/login" not in u)
    page.goto(f"{base}/jobs/test-job")
    page.wait_for_url("**/jobs/test-job/instructions")
    assert "Start the training" in page.content()
    page.click("[data-role=start]")

    for round_no in (1, 2):
        page.wait_for_url("**/jobs/test-job/page")
        page.wait_for_selector(".item.current img")
        assert "Training" in page.locator(".banner").first.inner_text()
        _answer_page_by_keyboard(page, {}, miss_gold=False)  # NORMAL for every case
        page.keyboard.press("Enter")
        page.wait_for_url("**/feedback")
        cases = page.locator(".training-case")
        assert cases.count() == 2
        text = page.locator("main").inner_text()
        assert "Training: the right answers" in text and "Expert answer" in text
        assert text.count(TRAINING_REASON) == 2
        for i in range(2):
            img = cases.nth(i).locator("img")
            img.scroll_into_view_if_needed()
            page.wait_for_function(
                "img => img.complete && img.naturalWidth > 0", arg=img.element_handle()
            )
            box = img.bounding_box()
            assert box is not None and box["width"] >= 100 and box["height"] >= 80, box
        page.screenshot(
            path=str(artifacts_dir / f"annotator-training-feedback-{round_no}.png"), full_page=True
        )
        page.keyboard.press("Enter")  # "Continue" is focused

    page.wait_for_url("**/jobs/test-job/page")
    page.wait_for_selector(".item.current img")
    assert "Quiz" in page.locator(".banner").first.inner_text()
    page.screenshot(path=str(artifacts_dir / "annotator-quiz-after-training.png"), full_page=True)
    assert errors == []
    context.close()
