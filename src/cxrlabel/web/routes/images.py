"""Image renditions by opaque public id, never original files.

Every image URL is ``/img/<id>`` with identical headers for gold and work images (strong ETag,
``immutable``), and no Last-Modified header: file dates could tell test questions (imported at
another time) from work images. Headers, media types and the path check are shared with the
signed-URL path (``web/imagefiles.py``). An annotator names an image by their own alias
(``annotate/aliases.py``: only images on their own pages resolve) and gets a per-user ETag;
admins and experts use the shared public id.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Request
from sqlalchemy import select
from starlette.responses import Response

from cxrlabel.annotate.aliases import Aliases
from cxrlabel.storage.models import Image, Role, User
from cxrlabel.web.deps import current_user, get_db
from cxrlabel.web.imagefiles import CACHE_CONTROL, etag_matches, media_type, path_inside
from cxrlabel.web.images_fast import user_images

router = APIRouter(include_in_schema=False)

_hashes: dict[tuple[str, int, int], str] = {}
_lock = threading.Lock()


def _content_hash(path: Path, data: bytes) -> str:
    """sha256 of the file, cached by (path, size, mtime); never sent as is (per-user ETag)."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _lock:
        digest = _hashes.get(key)
        if digest is None:
            digest = hashlib.sha256(data).hexdigest()
            _hashes[key] = digest
    return digest


def _rendition_if_allowed(session, user: User, image_id: str, aliases: Aliases) -> str | None:
    """The rendition path of an image this user may see (None otherwise). Annotators name
    images by their alias, which only resolves among the images of their own pages."""
    if user.role in (Role.ADMIN, Role.EXPERT):
        return session.scalar(select(Image.rendition_path).where(Image.public_id == image_id))
    for public_id, rel in user_images(session, user.id):
        if hmac.compare_digest(aliases.image(public_id, user.id), image_id):
            return rel
    return None


@router.get("/img/{public_id}")
def image(request: Request, public_id: str, user: User = Depends(current_user)) -> Response:
    aliases = request.app.state.image_urls.aliases
    with get_db(request).read_session() as s:  # reads only: never waits for SQLite's writer
        rel = _rendition_if_allowed(s, user, public_id, aliases)
    return _file_response(request, rel, aliases, user)


@router.get("/thumb/{public_id}")
def thumbnail(request: Request, public_id: str, user: User = Depends(current_user)) -> Response:
    """Small previews for the expert queue and admin pages (never for annotators)."""
    rel = None
    if user.role in (Role.ADMIN, Role.EXPERT):
        with get_db(request).read_session() as s:
            rel = s.scalar(select(Image.thumb_path).where(Image.public_id == public_id))
    return _file_response(request, rel, request.app.state.image_urls.aliases, user)


def _file_response(request: Request, rel: str | None, aliases: Aliases, user: User) -> Response:
    data_dir: Path = request.app.state.settings.data_dir.resolve()
    if rel is None:
        raise HTTPException(404, "no such image")  # same answer: existence is not revealed
    path = path_inside(data_dir, rel)
    if path is None or not path.is_file():
        raise HTTPException(404, "no such image")
    data = path.read_bytes()
    etag = aliases.etag(_content_hash(path, data), user.id).decode()
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL, "Vary": "Cookie"}
    if etag_matches(etag, request.headers.get("if-none-match", "")):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=media_type(path), headers=headers)
