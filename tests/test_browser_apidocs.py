"""``/api/docs`` renders offline in real Chromium: Swagger UI from the package, strict CSP.

The browser may fetch nothing but the server under test: every other request is aborted and
recorded, so a CDN reference (the issue: a blank page offline) fails the test.
"""

from __future__ import annotations

import pytest

from cxrlabel.config import Settings
from cxrlabel.storage.db import Database
from cxrlabel.web.app import create_app
from live_server import LiveServer

pytestmark = pytest.mark.browser


@pytest.fixture
def live(tmp_path):
    url = f"sqlite:///{tmp_path / 'web.sqlite3'}"
    db = Database(url)
    app = create_app(Settings(data_dir=tmp_path, db_url=url), db=db)
    with LiveServer(app) as base_url:
        yield base_url
    db.dispose()


def test_api_docs_render_offline_under_a_strict_csp(browser, live, artifacts_dir) -> None:
    context = browser.new_context()
    page = context.new_page()
    outside, problems = [], []

    def only_this_server(route) -> None:
        if route.request.url.startswith(live):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_this_server)
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    response = page.goto(f"{live}/api/docs")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "unsafe-inline" not in csp and "http" not in csp
    operations = page.locator(".opblock")
    operations.first.wait_for(state="visible", timeout=30_000)
    schema = page.request.get(f"{live}/api/openapi.json").json()
    expected = sum(len(ops) for ops in schema["paths"].values())
    assert expected >= 10 and operations.count() == expected  # every operation is drawn
    box = operations.first.bounding_box()
    assert box and box["width"] > 300 and box["height"] > 20, box  # styled, really drawn
    assert page.locator(".opblock-summary-path", has_text="/api/openapi.json").count() == 0
    assert (
        page.locator(".opblock-summary-path", has_text="/api/jobs/{job_name}/pages/next").count()
        == 1
    )
    operations.first.locator(".opblock-summary").click()  # expanding draws more UI
    page.locator(".try-out__btn").first.wait_for(state="visible", timeout=10_000)
    page.screenshot(path=str(artifacts_dir / "api-docs.png"))
    assert outside == [] and problems == [], (outside, problems)
    context.close()
