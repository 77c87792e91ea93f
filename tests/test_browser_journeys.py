"""The human journeys of issue 16 in headless Chromium (JavaScript on), on real Kermany X-rays.

One server and one browser per module; every step leaves a screenshot under the artifacts dir
(``CXRLABEL_TEST_ARTIFACTS``). Each test asserts what a person sees: the X-ray on screen with
a real size, the controls, the words of the messages.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from browser_support import (
    DESKTOP,
    JOB,
    PHONE,
    assert_image_visible,
    build_real_job,
    crowd_work,
    login,
    serve,
)
from cxrlabel.storage.models import Image, ImageStatus, PageItem
from web_support import add_user

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def live(tmp_path_factory, shared_data):
    tmp = tmp_path_factory.mktemp("journeys")
    db, job_id, spec = build_real_job(tmp, shared_data / "kermany", per_class=24, n_gold=16,
                                      quiz_length=3, items_per_page=4, jmin=2, jmax=2,
                                      min_accuracy=0.6)
    # Two simulated annotators disagree on the first images: those go to expert review.
    crowd_work(db, job_id, spec, ["sim-a", "sim-b"],
               [("NORMAL", "probably"), ("PNEUMONIA", "cant_tell")], pages=2)
    add_user(db, "expert", role="expert")
    add_user(db, "admin", role="admin")
    with serve(db, tmp) as base:
        yield base, db, job_id, spec
    db.dispose()


def _shot(page, artifacts_dir, name: str) -> None:  # noqa: ANN001
    page.screenshot(path=str(artifacts_dir / f"journey-{name}.png"), full_page=True)


def _review_ids(db, job_id) -> list[str]:  # noqa: ANN001
    with db.session() as s:
        return list(s.scalars(select(Image.public_id).where(
            Image.job_id == job_id, Image.status == ImageStatus.NEEDS_REVIEW)))


def test_first_served_work_has_both_classes(live):
    """Item 4: a Kaggle folder lists NORMAL first; the first 20 work images served are not."""
    _base, db, job_id, _spec = live
    refs = {}
    with db.session() as s:
        rows = s.execute(select(Image.reference_label).join(PageItem, PageItem.image_id == Image.id)
                         .where(Image.job_id == job_id, PageItem.is_gold.is_(False))
                         .order_by(PageItem.id).limit(20)).all()
        refs = [r for (r,) in rows]
    assert len(refs) >= 6
    assert {"NORMAL", "PNEUMONIA"} <= set(refs), refs


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_expert_reviews_with_js_on_and_goes_to_the_next_image(browser, live, artifacts_dir,
                                                               viewport):
    """Items 1 and 7: the review page shows the X-ray with JS on, the queue has thumbnails and
    an honest summary, and recording a label opens the next image."""
    base, db, job_id, spec = live
    queued = _review_ids(db, job_id)
    assert len(queued) >= 2, "the fixture's crowd should leave images for review"
    size = "desktop" if viewport is DESKTOP else "phone"
    context = browser.new_context(viewport=viewport, is_mobile=viewport is PHONE)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    login(page, base, "expert")
    page.goto(f"{base}/review/{JOB}")
    rows = page.locator("[data-role=review-queue] tbody tr")
    assert rows.count() == len(queued)
    assert_image_visible(page, "[data-role=review-queue] img.thumb >> nth=0", min_px=40)
    summary = page.locator("[data-role=review-queue] [data-role=crowd-summary]").first
    assert "could not tell" in summary.inner_text() or "No leaning" in summary.inner_text()
    _shot(page, artifacts_dir, f"expert-queue-{size}")
    if size == "phone":
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"] + 1

    page.locator("[data-role=review-queue] tbody tr a").first.click()
    page.wait_for_url(f"**/review/{JOB}/*")
    first = page.url.rsplit("/", 1)[1]
    assert "Review 1 of" in page.locator("h1").inner_text()
    assert_image_visible(page, ".item.current .viewport img")
    label = page.get_by_role("radio", name=spec.question.labels[1].text)
    assert label.is_visible()
    _shot(page, artifacts_dir, f"expert-item-{size}")
    label.check()
    page.get_by_role("button", name="Record final label").click()
    page.wait_for_load_state("networkidle")
    assert first not in page.url
    if len(queued) > 1:
        assert page.url.rsplit("/", 1)[1] in queued  # the next queued image, not the queue
        assert_image_visible(page, ".item.current .viewport img")
    _shot(page, artifacts_dir, f"expert-next-{size}")
    assert len(_review_ids(db, job_id)) == len(queued) - 1
    assert not errors, errors
    context.close()
