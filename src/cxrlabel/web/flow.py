"""Glue shared by the annotator pages and the REST API (no routes here)."""

from __future__ import annotations

import logging
import secrets
import threading
from pathlib import Path

from markupsafe import Markup
from sqlalchemy.orm import Session
from starlette.requests import Request

from cxrlabel.annotate.assignment import ServedPage
from cxrlabel.jobspec import JobSpec
from cxrlabel.storage.models import Job, Page
from cxrlabel.templating import markdown_html
from cxrlabel.web.images_fast import ImageUrls

log = logging.getLogger("cxrlabel.web")

_instructions_cache: dict[tuple[int, str], Markup] = {}
_lock = threading.Lock()


def image_url(public_id: str) -> str:
    """The session-checked image URL (review, feedback, admin pages). Annotators' work pages
    get signed URLs (``page_items(page, urls)``); gold and work look the same in both."""
    return f"/img/{public_id}"


def page_items(page: Page | ServedPage, urls: ImageUrls | None = None) -> list[dict[str, str]]:
    """``{"public_id", "src"}`` per item; with ``urls`` the page's signed, expiring image URLs
    (served outside the app stack, web/images_fast.py), else the session-checked ``/img/<id>``."""
    if urls is not None:
        return urls.page_items(page)
    return [
        {"public_id": item.image.public_id, "src": image_url(item.image.public_id)}
        for item in page.items
    ]


def image_urls(request: Request) -> ImageUrls:
    return request.app.state.image_urls


def new_client_submission_id() -> str:
    return secrets.token_urlsafe(18)


def instructions_html(session: Session, job: Job, spec: JobSpec, data_dir: Path) -> Markup:
    """The job's instructions with its illustrated examples (cached per spec version)."""
    key = (job.id, job.spec_sha256)
    with _lock:
        cached = _instructions_cache.get(key)
    if cached is not None:
        return cached
    try:
        from cxrlabel.design.instructions import illustrated_examples
        from cxrlabel.design.instructions import instructions_html as design_instructions

        html = design_instructions(spec, illustrated_examples(spec, session, job, data_dir))
    except Exception:  # examples are a nicety; the text must always show
        log.exception("illustrated examples failed for job %s; showing the text only", job.name)
        html = markdown_html(spec.instructions_markdown())
    with _lock:
        _instructions_cache[key] = html
    return html
