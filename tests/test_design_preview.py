"""The job Preview: one self-contained HTML file, checked by parsing and in offline Chromium."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from cxrlabel.cli import app
from cxrlabel.design.preview import render_preview
from cxrlabel.jobspec import load_job, resolve_job_path
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import GoldItem, Image, ImageStatus
from design_support import add_image, bundled_job, external_refs


@pytest.fixture(scope="module")
def preview_html() -> str:
    """The bundled job's preview without a database (examples from Kermany or phantoms)."""
    return render_preview(load_job(resolve_job_path(None)))


def test_the_checker_finds_external_references() -> None:
    html = """<link href="https://cdn.example/x.css"><img src="http://x/y.png">
    <img srcset="data:image/png;base64,AA 1x, //cdn/y.png 2x"><style>@import "a.css";
    body { background: url('http://x/bg.png') }</style><div style="background:url(z.png)">
    <iframe srcdoc="&lt;script src=&quot;https://evil/x.js&quot;&gt;&lt;/script&gt;"></iframe>
    <a href="#ok"><img src="data:image/png;base64,AA"></a>"""
    found = external_refs(html).external
    assert len(found) == 7, found


def test_preview_is_self_contained(preview_html: str) -> None:
    refs = external_refs(preview_html)
    assert refs.external == []
    assert refs.tags["img"] >= 6  # examples, work page items, test questions: all data URIs
    assert refs.tags["iframe"] == 1 and refs.tags["form"] == 1  # the work page, in its frame
    assert "Content-Security-Policy" in preview_html


def test_preview_shows_instructions_work_page_and_test_questions(preview_html: str) -> None:
    spec = load_job(resolve_job_path(None))
    assert "How to label children" in preview_html  # the instructions' title
    assert "Common pitfalls" in preview_html and "thymus" in preview_html
    assert preview_html.count('class="example"') == len(spec.instructions.examples)
    # The work page: question, certainty and quality flag, viewer controls (escaped in srcdoc).
    for text in (
        spec.question.prompt,
        spec.certainty.prompt,
        "Can&amp;#39;t tell",
        "data-action=&#34;zoom-in&#34;",
        "data-filter=&#34;contrast&#34;",
        "Not a chest X-ray",
    ):
        assert text in preview_html, text
    assert preview_html.count('class="gold test-question"') >= 2
    assert preview_html.count('class="correct-answer"') >= 2
    assert "Pneumonia: cloudy or white patches" in preview_html


def test_preview_uses_the_job_gold_bank(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    db = Database(url)
    with db.session() as s:
        job, _ = bundled_job(s)
        # An ingested copy of an instruction example: used instead of Kermany/phantom.
        add_image(s, job, tmp_path, 1, name="NORMAL2-IM-1116-0001.jpeg")
        for k, answer in enumerate(["NORMAL", "PNEUMONIA", "PNEUMONIA"]):
            im = add_image(s, job, tmp_path, 10 + k, status=ImageStatus.GOLD)
            s.add(
                GoldItem(
                    job_id=job.id,
                    image_id=im.id,
                    accepted_answers=[answer],
                    reason=f"EXPERT-REASON-{k}",
                )
            )
    out = tmp_path / "out" / "preview.html"
    result = CliRunner().invoke(
        app,
        [
            "--data-dir",
            str(tmp_path),
            "--db",
            url,
            "preview",
            "-o",
            str(out),
            "--gold-examples",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert external_refs(html).external == []
    assert "job images (database)" in html
    reasons = [f"EXPERT-REASON-{k}" for k in range(3) if f"EXPERT-REASON-{k}" in html]
    assert len(reasons) == 2  # --gold-examples 2, one of each class first
    assert "Healthy: clear lungs" in html and "EXPERT-REASON-0" in html
    with db.session() as s:  # the preview changes nothing
        assert s.scalar(select(Image).where(Image.source_path.endswith("1116-0001.jpeg")))


@pytest.mark.browser
def test_preview_renders_offline_in_chromium(
    browser, preview_html: str, tmp_path: Path, artifacts_dir: Path
) -> None:
    path = tmp_path / "preview.html"
    path.write_text(preview_html, encoding="utf-8")
    context = browser.new_context(offline=True, viewport={"width": 1280, "height": 900})
    seen: list[str] = []

    def guard(route) -> None:
        seen.append(route.request.url)
        if route.request.url == path.as_uri():
            route.continue_()
        else:
            route.abort()

    context.route("**/*", guard)
    errors: list[str] = []
    page = context.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    assert seen == [path.as_uri()], seen
    assert errors == []
    assert page.get_by_role("heading", name="How to label children's chest X-rays").is_visible()
    assert page.locator(".test-question").count() >= 2
    # Every image decoded (a broken data URI has naturalWidth 0).
    widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
    assert widths and min(widths) > 0
    # The work page is live: keyboard answers the current image; a preview never submits.
    frame = page.frame_locator("iframe.work-frame")
    frame.locator(".item.current .viewport").click()
    page.keyboard.press("p")
    page.keyboard.press("2")
    assert frame.locator(".item.current input[value=PNEUMONIA]").is_checked()
    assert frame.locator("[data-role=answered]").inner_text() == "1"
    frame.locator("button[data-action=zoom-in]").first.click()
    assert "scale(1.25)" in frame.locator(".item.current img").get_attribute("style")
    page.screenshot(path=str(artifacts_dir / "design-preview.png"), full_page=True)
    page.locator("#test-questions").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts_dir / "design-preview-test-questions.png"))
    assert seen == [path.as_uri()]  # still nothing else requested after interaction
    context.close()
