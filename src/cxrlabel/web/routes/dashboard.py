"""Admin QA dashboard: the figures of ``cxrlabel report qa``, live, plus report downloads.

Thin layer: every number and figure comes from :mod:`cxrlabel.results`. ``create_app``
includes ``router`` automatically (every module in ``web/routes`` with a ``router``).

Routes (admin only, ``require_role("admin")``):

- ``GET /admin/jobs/{job}/dashboard``: the page; ``/admin/dashboard.js`` refreshes its figures
  every 60 s by fetching ``?partial=1``.
- ``GET /admin/jobs/{job}/reports/qa.html``: the self-contained QA report as a download.
- ``GET /admin/jobs/{job}/reports/{kind}.{fmt}``: full|aggregated|contributors|gold, csv|json.

Why figures are ``<img src="data:image/svg+xml;base64,...">`` here and inline ``<svg>`` in the
QA file: the app's Content-Security-Policy (``style-src 'self'``) forbids the inline style
attributes matplotlib writes, but an SVG shown as an image is its own document. The script and
the stylesheet are served by this router for the same reason (``script-src 'self'``).
"""

from __future__ import annotations

import base64
import threading

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import Response
from sqlalchemy import select

from cxrlabel.jobstore import spec_of
from cxrlabel.results.qa_figures import QAFigure, render_qa_report, summary_cards
from cxrlabel.results.reports import (
    FORMATS,
    REPORT_KINDS,
    build_report,
    table_to_csv,
    table_to_json,
)
from cxrlabel.results.snapshot import QASnapshot, QASnapshots
from cxrlabel.storage.models import Job, Role
from cxrlabel.web.deps import get_db, job_and_spec, render, require_role

REFRESH_SECONDS = 60

DASHBOARD_JS = """\
// Refresh the QA figures without reloading the page (cxrlabel results dashboard).
(function () {
  var root = document.getElementById("qa-dashboard");
  if (!root) { return; }
  var every = parseInt(root.dataset.refresh || "60", 10) * 1000;
  function refresh() {
    fetch(window.location.pathname + "?partial=1", {credentials: "same-origin"})
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.text(); })
      .then(function (html) { root.innerHTML = html; })
      .catch(function () { /* keep the last figures; try again later */ })
      .finally(function () { window.setTimeout(refresh, every); });
  }
  window.setTimeout(refresh, every);
})();
"""

DASHBOARD_CSS = """\
.qa-dash .cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(10.5rem, 1fr));
                  gap: .6rem; margin: 1rem 0 1.25rem; }
.qa-dash .card { background: #f7fafc; border: 1px solid #e2e8f0; border-radius: 6px;
                 padding: .5rem .7rem; }
.qa-dash .card .v { font-size: 1.3rem; font-weight: 600; }
.qa-dash .card .k { font-size: .78rem; color: #4a5568; }
.qa-dash .figs { display: grid;
                 grid-template-columns: repeat(auto-fit, minmax(min(560px, 100%), 1fr));
                 gap: 1rem; }
.qa-dash figure { margin: 0; border: 1px solid #e2e8f0; border-radius: 6px; padding: .7rem;
                  background: #fff; }
.qa-dash figure h2 { font-size: 1.05rem; margin: 0 0 .4rem; }
.qa-dash figure img { width: 100%; height: auto; display: block; }
.qa-dash figcaption { font-size: .82rem; color: #4a5568; margin-top: .3rem; }
.qa-dash .downloads a { margin-right: .8rem; }
.qa-dash .sub { color: #4a5568; font-size: .85rem; }
"""

router = APIRouter(include_in_schema=False)
_snapshots_created = threading.Lock()
admin_only = [Depends(require_role(Role.ADMIN))]


def svg_data_uri(fig: QAFigure) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(fig.svg.encode()).decode("ascii")


@router.get("/admin/dashboard.js", dependencies=admin_only)
def dashboard_js() -> Response:
    return Response(
        DASHBOARD_JS, media_type="text/javascript", headers={"Cache-Control": "max-age=300"}
    )


@router.get("/admin/dashboard.css", dependencies=admin_only)
def dashboard_css() -> Response:
    return Response(DASHBOARD_CSS, media_type="text/css", headers={"Cache-Control": "max-age=300"})


def snapshot_cache(app: FastAPI) -> QASnapshots:
    """The app's one QA snapshot cache (created on first use)."""
    with _snapshots_created:  # two first requests must share one cache, not race to make two
        snapshots = getattr(app.state, "qa_snapshots", None)
        if snapshots is None:
            snapshots = app.state.qa_snapshots = QASnapshots(min_interval=REFRESH_SECONDS)
        return snapshots


def warm_snapshots(app: FastAPI) -> None:
    """Start computing every job's QA snapshot in the background (``serve`` calls this at
    start-up): the first dashboard request then does not wait seconds for it."""
    db = app.state.db
    with db.read_session() as session:
        jobs = [(job.id, spec_of(job)) for job in session.scalars(select(Job).order_by(Job.id))]
    if jobs:
        snapshot_cache(app).warm(db.read_session, jobs)


def qa_snapshot(request: Request, job_name: str) -> QASnapshot:
    """The job's QA figures from the app's snapshot cache (recomputed at most once a minute
    while the job changes, in the background once a first snapshot exists; see
    cxrlabel.results.snapshot). Read sessions: computing them takes seconds and must not hold
    SQLite's one write lock that annotators' pages wait for."""
    snapshots = snapshot_cache(request.app)
    db = get_db(request)
    with db.read_session() as session:
        job, spec = job_and_spec(session, job_name)
        return snapshots.get(session, job, spec, reopen=db.read_session)


@router.get("/admin/jobs/{job_name}/dashboard", dependencies=admin_only)
def dashboard(request: Request, job_name: str, partial: bool = False) -> Response:
    snapshot = qa_snapshot(request, job_name)
    summary = snapshot.summary
    figures = [(fig, svg_data_uri(fig)) for fig in snapshot.figures]
    context = {
        "job": snapshot.qa.job_name,
        "summary": summary,
        "cards": summary_cards(summary),
        "figures": figures,
        "generated_at": summary["generated_at"],
        "refresh": REFRESH_SECONDS,
    }
    name = "results/_dashboard_body.html" if partial else "results/dashboard.html"
    return render(request, name, context)


@router.get("/admin/jobs/{job_name}/reports/qa.html", dependencies=admin_only)
def qa_download(request: Request, job_name: str) -> Response:
    snapshot = qa_snapshot(request, job_name)
    html = render_qa_report(snapshot.qa.job_name, snapshot.summary, snapshot.figures)
    # Opens in the browser (it is a page to read); "Save as" still names the file.
    return _download(
        html, "text/html; charset=utf-8", f"{snapshot.qa.job_name}-qa.html", inline=True
    )


@router.get("/admin/jobs/{job_name}/reports/{kind}.{fmt}", dependencies=admin_only)
def report_download(request: Request, job_name: str, kind: str, fmt: str) -> Response:
    if kind not in REPORT_KINDS or fmt not in FORMATS:
        raise HTTPException(status_code=404, detail="unknown report")
    with get_db(request).read_session() as session:
        job, spec = job_and_spec(session, job_name)
        table = build_report(kind, session, job, spec)
    body = table_to_csv(table) if fmt == "csv" else table_to_json(table)
    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/json"
    return _download(body, media, f"{job.name}-{kind}.{fmt}")


def _download(body: str, media_type: str, filename: str, *, inline: bool = False) -> Response:
    return Response(
        body,
        media_type=media_type,
        headers={
            "Content-Disposition": f'{"inline" if inline else "attachment"}; filename="{filename}"',
            "Cache-Control": "no-store",
        },
    )
