"""Image renditions by opaque public id, never original files.

Every image URL is ``/img/<public_id>`` with identical headers for gold and work images (strong
ETag from the content, ``immutable``), and no Last-Modified header: file dates could tell test
questions (imported at another time) from work images. Headers, media types, ETag and the path
check are shared with the signed-URL path (``web/imagefiles.py``).
"""

from __future__ import annotations

import threading
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Request
from sqlalchemy import select
from starlette.responses import Response

from cxrlabel.storage.models import Image, Page, PageItem, Role, User
from cxrlabel.web.deps import current_user, get_db
from cxrlabel.web.imagefiles import (
    CACHE_CONTROL,
    etag_matches,
    media_type,
    path_inside,
    strong_etag,
)

router = APIRouter(include_in_schema=False)

_etags: dict[tuple[str, int, int], str] = {}
_lock = threading.Lock()


def _etag(path: Path, data: bytes) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _lock:
        tag = _etags.get(key)
        if tag is None:
            tag = strong_etag(data)
            _etags[key] = tag
    return tag


def _rendition_if_allowed(session, user: User, public_id: str) -> str | None:
    """The rendition path of an image this user may see, in one query (None otherwise)."""
    query = select(Image.rendition_path).where(Image.public_id == public_id)
    if user.role not in (Role.ADMIN, Role.EXPERT):
        # Annotators: only images that were put on one of their own pages.
        query = query.where(
            select(PageItem.id).join(Page, Page.id == PageItem.page_id)
            .where(PageItem.image_id == Image.id, Page.user_id == user.id).exists()
        )
    return session.scalar(query)


@router.get("/img/{public_id}")
def image(request: Request, public_id: str, user: User = Depends(current_user)) -> Response:
    with get_db(request).read_session() as s:  # reads only: never waits for SQLite's writer
        rel = _rendition_if_allowed(s, user, public_id)
    return _file_response(request, rel)


@router.get("/thumb/{public_id}")
def thumbnail(request: Request, public_id: str, user: User = Depends(current_user)) -> Response:
    """Small previews for the expert queue and admin pages (never for annotators)."""
    rel = None
    if user.role in (Role.ADMIN, Role.EXPERT):
        with get_db(request).read_session() as s:
            rel = s.scalar(select(Image.thumb_path).where(Image.public_id == public_id))
    return _file_response(request, rel)


def _file_response(request: Request, rel: str | None) -> Response:
    data_dir: Path = request.app.state.settings.data_dir.resolve()
    if rel is None:
        raise HTTPException(404, "no such image")  # same answer: existence is not revealed
    path = path_inside(data_dir, rel)
    if path is None or not path.is_file():
        raise HTTPException(404, "no such image")
    data = path.read_bytes()
    etag = _etag(path, data)
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL, "Vary": "Cookie"}
    if etag_matches(etag, request.headers.get("if-none-match", "")):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=media_type(path), headers=headers)
