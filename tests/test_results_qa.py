"""QA numbers, figures, the self-contained HTML report (in real Chromium) and the dashboard."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from cxrlabel.annotate.accounts import issue_api_token
from cxrlabel.cli import app
from cxrlabel.config import Settings
from cxrlabel.context import get_job
from cxrlabel.jobstore import spec_from_job_row
from cxrlabel.results.qa import collect_qa, qa_summary
from cxrlabel.results.qa_figures import qa_figures, render_qa_html
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import Job, User
from cxrlabel.web.app import create_app
from results_fixture import build_job


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    data_dir = tmp_path_factory.mktemp("qa-data")
    db = Database(f"sqlite:///{data_dir / 'cxrlabel.sqlite3'}")
    with db.session() as s:
        build_job(s, data_dir)
    yield db, data_dir
    db.dispose()


def _qa(db: Database):
    with db.session() as s:
        job = s.scalar(select(Job))
        return collect_qa(s, job, spec_from_job_row(job))


def test_summary_hand_checked(built) -> None:
    summary = qa_summary(_qa(built[0]))
    # untainted work answers: w1 [N0 P2], w2 [1 1], w3 [1 1], w4 [2 0], w6 [2 0]
    # coincidences NN 4, NP 2, PN 2, PP 2 -> alpha = 1 - 9*4/(100-36-16) = 0.25
    assert summary["krippendorff_alpha"] == 0.25
    # Fleiss: P_bar = 3/5, P_e = 0.6^2 + 0.4^2 = 0.52 -> (0.6-0.52)/0.48
    assert summary["fleiss_kappa"] == pytest.approx(0.1667, abs=1e-4)
    assert (summary["gold_accuracy"], summary["gold_graded"]) == (0.5, 6)
    # crowd confidences of w1 w2 w3 w4 w6; w4's recomputed from A:N B:N = 1.0
    assert summary["mean_confidence"] == pytest.approx((0.95 + 0.85 + 0.55 + 1.0 + 0.7) / 5)
    assert (summary["reference_agreement"], summary["reference_compared"]) == (0.75, 4)
    assert (summary["expert_agreement"], summary["expert_compared"]) == (0.0, 1)
    assert summary["review_queue"] == 1
    assert (summary["judgments"], summary["judgments_tainted"], summary["judgments_gold"]) == (
        19,
        5,
        6,
    )
    assert summary["label_distribution"] == {"PNEUMONIA": 3, "NORMAL": 2}  # w1 w3 w4 | w2 w6
    trust_cal = summary["calibration"]["annotator trust vs gold answers"]
    # trust 0.85 (A, 2/2 right), 0.75 (B, 1/2), 0.5 (C, 0/2) -> ECE = (2*.15+2*.25+2*.5)/6
    assert trust_cal == {"ece": 0.3, "n": 6}


def test_figures_are_labelled_svg(built) -> None:
    figures = qa_figures(_qa(built[0]))
    assert [f.key for f in figures] == [
        "progress",
        "labels",
        "confidence",
        "agreement",
        "trust",
        "speed",
        "gold",
        "calibration",
    ]
    for fig in figures:
        root = ET.fromstring(fig.svg)  # well-formed XML, no prolog or DOCTYPE
        assert root.tag.endswith("svg"), fig.key
        assert "<!DOCTYPE" not in fig.svg and "<?xml" not in fig.svg
    text = {f.key: f.svg for f in figures}
    assert "judgments (cumulative)" in text["progress"]
    assert "Krippendorff's alpha = 0.250" in text["agreement"].replace("&#39;", "'")
    assert "gold accuracy" in text["speed"] and "median seconds per image" in text["speed"]
    assert "img-g1" in text["gold"] and "observed accuracy" in text["calibration"]
    assert "agreement 75.0% (n=4)" in text["calibration"]


def test_empty_job_renders(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'e.sqlite3'}")
    with db.session() as s:
        job, spec = get_job(s, None)
        html = render_qa_html(collect_qa(s, job, spec))
    db.dispose()
    assert html.count("<svg") == 8 and "No data yet" in html


class _Refs(HTMLParser):
    """Every URL an HTML page (with inline SVG) could fetch: src/href attributes and url()."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and (
                name in ("src", "href", "xlink:href", "poster", "data", "action")
                or name.endswith(":href")
            ):
                self.urls.append(value)
            if value and name == "style":
                self.urls += re.findall(r"url\(([^)]*)\)", value)


def _external(html: str) -> list[str]:
    parser = _Refs()
    parser.feed(html)
    urls = parser.urls + re.findall(r"url\(([^)]*)\)", html) + re.findall(r"@import", html)
    return [u for u in urls if not u.strip("'\" ").startswith(("#", "data:"))]


def test_qa_html_is_self_contained(built, tmp_path: Path) -> None:
    db, data_dir = built
    out = tmp_path / "qa.html"
    result = CliRunner().invoke(app, ["--data-dir", str(data_dir), "report", "qa", "-o", str(out)])
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert html.count("<svg") == 8 and "Krippendorff" in html
    assert _external(html) == []
    assert _external('<img src="https://x.org/a.png">') == ["https://x.org/a.png"]  # detector works


def test_qa_report_in_chromium(built, browser, artifacts_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "qa.html"
    out.write_text(render_qa_html(_qa(built[0])), encoding="utf-8")
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(out.as_uri())
    page.screenshot(path=str(artifacts_dir / "results_qa_report.png"), full_page=True)
    assert requests == [out.as_uri()]  # nothing else was fetched
    figures = page.locator("figure")
    assert figures.count() == 8
    for i in range(8):
        box = figures.nth(i).locator("svg").bounding_box()
        assert box and box["width"] > 400 and box["height"] > 150
    assert page.locator(".card").first.inner_text().startswith("8")
    page.close()


# --- dashboard (the real web app, signed in with API tokens) -----------------------------------


@pytest.fixture(scope="module")
def client(built) -> Iterator[tuple[TestClient, dict[str, str]]]:
    db, data_dir = built
    tokens = {}
    with db.session() as s:
        for role in ("admin", "annotator", "expert"):
            user = User(username=f"dash-{role}", password_hash="x", role=role)
            s.add(user)
            s.flush()
            tokens[role] = issue_api_token(s, user)
    web = create_app(Settings(data_dir=data_dir), db=db)
    with TestClient(web) as c:
        yield c, {role: {"Authorization": f"Bearer {t}"} for role, t in tokens.items()}


DASH = "/admin/jobs/pneumonia-pediatric/dashboard"


@pytest.fixture(scope="module")
def dash_pages(client) -> dict[str, tuple[int, str, bytes, str | None]]:
    """The dashboard responses, fetched once (drawing the figures takes seconds)."""
    c, auth = client
    pages = {}
    for path in (
        DASH,
        DASH + "?partial=1",
        "/admin/dashboard.js",
        "/admin/dashboard.css",
        "/static/app.css",
    ):
        r = c.get(path, headers=auth["admin"])
        pages[path] = (
            r.status_code,
            r.headers.get("content-type", ""),
            r.content,
            r.headers.get("content-security-policy"),
        )
    return pages


def test_dashboard_admin_only(client) -> None:
    c, auth = client
    for path in (
        DASH,
        "/admin/dashboard.js",
        "/admin/jobs/pneumonia-pediatric/reports/full.csv",
        "/admin/jobs/pneumonia-pediatric/reports/qa.html",
    ):
        assert c.get(path, headers=auth["annotator"]).status_code == 403, path
        assert c.get(path, headers=auth["expert"]).status_code == 403, path
        anonymous = c.get(path, follow_redirects=False)
        assert anonymous.status_code in (303, 401), path
        assert "img-w1" not in anonymous.text


def test_dashboard_page_partial_and_downloads(client, dash_pages) -> None:
    c, auth = client
    admin = auth["admin"]
    status, _, body, _ = dash_pages[DASH]
    page = body.decode()
    assert status == 200 and page.count('src="data:image/svg+xml;base64,') == 8
    assert 'src="/admin/dashboard.js"' in page and "review queue" in page
    assert 'href="/admin/dashboard.css"' in page
    status, _, body, _ = dash_pages[DASH + "?partial=1"]
    assert status == 200 and b"<html" not in body and body.count(b"<figure") == 8
    assert c.get("/admin/jobs/nope/dashboard", headers=admin).status_code == 404
    gold = c.get("/admin/jobs/pneumonia-pediatric/reports/gold.csv", headers=admin)
    assert gold.status_code == 200 and gold.text.startswith("image,accepted_answers")
    assert "attachment" in gold.headers["content-disposition"]
    assert (
        c.get("/admin/jobs/pneumonia-pediatric/reports/secret.csv", headers=admin).status_code
        == 404
    )
    qa = c.get("/admin/jobs/pneumonia-pediatric/reports/qa.html", headers=admin)
    assert qa.status_code == 200 and _external(qa.text) == []
    _, ctype, body, _ = dash_pages["/admin/dashboard.js"]
    assert ctype.startswith("text/javascript") and b"partial=1" in body
    assert dash_pages["/admin/dashboard.css"][1].startswith("text/css")


def test_dashboard_in_chromium_under_csp(dash_pages, browser, artifacts_dir: Path) -> None:
    """Served with the app's strict CSP: figures must still draw and nothing may be blocked."""
    responses = dash_pages
    assert responses[DASH][3] and "style-src 'self'" in responses[DASH][3]
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    violations: list[str] = []
    page.on(
        "console",
        lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None,
    )

    def serve(route) -> None:
        path = route.request.url.removeprefix("http://cxrlabel.test")
        status, ctype, body, csp = responses.get(path, (404, "text/plain", b"", None))
        headers = {"content-type": ctype}
        if csp:
            headers["content-security-policy"] = csp
        route.fulfill(status=status, headers=headers, body=body)

    page.route("http://cxrlabel.test/**", serve)
    page.goto("http://cxrlabel.test" + DASH)
    figures = page.locator("#qa-dashboard figure img")
    assert figures.count() == 8
    for i in range(8):
        assert figures.nth(i).evaluate("img => img.complete && img.naturalWidth > 300")
    page.screenshot(path=str(artifacts_dir / "results_dashboard.png"), full_page=True)
    page.close()
    assert violations == []
