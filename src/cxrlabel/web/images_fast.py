"""Signed image URLs (``/img/<expiry>.<user>.<mac>/<public id>``) served outside the app stack.

The annotator's pages and the page API hand out signed URLs (``security.ImageUrlSigner``):
the MAC proves the image is on one of that user's pages, so serving one needs no session, no
token look-up and no permission query. This pure ASGI middleware sits in front of everything
else and answers those URLs itself: check the MAC and expiry, find the rendition, send its
bytes with ``immutable`` cache headers and a strong ETag (304 on ``If-None-Match``). Every other
request, including the unsigned ``/img/<public id>`` that the review, feedback and admin pages
use (session + permission query, ``routes/images.py``), passes through untouched.

Answers: 403 for a forged, altered or expired signature, 404 for a valid one whose image or
file is gone; neither sends any file bytes. Gold and work images get byte-identical headers
apart from ETag and length.

Files are read in the event loop (renditions are ~50-200 KB and normally in the page cache: a
thread hop would cost more than the read). The server offers no ``http.response.zerocopysend``
(uvicorn does not implement it); if one does, it is used.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections import OrderedDict
from datetime import UTC
from pathlib import Path

import anyio.to_thread
from sqlalchemy import select
from starlette.types import ASGIApp, Receive, Scope, Send

from cxrlabel.annotate.assignment import ServedPage
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import Image, Page, PageItem
from cxrlabel.web.imagefiles import (
    CACHE_CONTROL,
    MEDIA_TYPES,
    OTHER_MEDIA_TYPE,
    etag_matches,
    path_inside,
    strong_etag,
)
from cxrlabel.web.security import SECURITY_HEADERS, ImageUrlSigner

# Raw ASGI headers are bytes: the shared values (``imagefiles``), encoded once.
_CACHE_CONTROL = CACHE_CONTROL.encode()
_MEDIA_BYTES = {k: v.encode() for k, v in MEDIA_TYPES.items()}
_OTHER_MEDIA_BYTES = OTHER_MEDIA_TYPE.encode()
_PUBLIC_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ZEROCOPY = "http.response.zerocopysend"


class _Entry:
    __slots__ = ("etag", "path", "rel")

    def __init__(self, rel: str) -> None:
        self.rel = rel  # as stored in the database, relative to the data dir
        self.path: Path | None = None  # resolved and checked on first use
        self.etag: bytes | None = None  # strong: hash of the content, set on first read


class RenditionStore:
    """Public id -> rendition file, bounded LRU. Filled when a signed URL is issued (the page
    is served by this process); a miss (URL issued by another worker, or before a restart)
    costs one read-only query."""

    def __init__(self, data_dir: Path, db: Database, max_entries: int = 50_000) -> None:
        self.data_dir = data_dir.resolve()
        self.db = db
        self.max_entries = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, public_id: str, rendition_path: str | None) -> None:
        """Cheap (a dict insert): called for every image of every page served."""
        if not rendition_path:
            return
        with self._lock:
            if public_id in self._entries:
                self._entries.move_to_end(public_id)
                return
            self._entries[public_id] = _Entry(rendition_path)
            if len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def resolve(self, entry: _Entry) -> Path | None:
        """The entry's file inside the data dir (None when the path would leave it)."""
        if entry.path is None:
            entry.path = path_inside(self.data_dir, entry.rel)
        return entry.path

    def cached(self, public_id: str) -> _Entry | None:
        with self._lock:
            return self._entries.get(public_id)

    def load(self, public_id: str, user_id: int | None = None) -> _Entry | None:
        """The entry, from the database on a miss (blocking: call from a worker thread). With
        the URL's user, the whole page it came from is remembered in the same read: the other
        images of that page then hit the map (one miss per page, not per image)."""
        entry = self.cached(public_id)
        if entry is not None:
            return entry
        with self.db.read_session() as s:
            image = s.execute(select(Image.id, Image.rendition_path)
                              .where(Image.public_id == public_id)).first()
            if image is None:
                return None
            self.remember(public_id, image.rendition_path)
            if user_id is not None:
                page_id = (select(PageItem.page_id).join(Page, Page.id == PageItem.page_id)
                           .where(PageItem.image_id == image.id, Page.user_id == user_id)
                           .order_by(PageItem.page_id.desc()).limit(1).scalar_subquery())
                for pid, rel in s.execute(
                        select(Image.public_id, Image.rendition_path)
                        .join(PageItem, PageItem.image_id == Image.id)
                        .where(PageItem.page_id == page_id)):
                    self.remember(pid, rel)
        return self.cached(public_id)


def _read(path: Path) -> bytes | None:
    try:
        with open(path, "rb", buffering=0) as fh:
            return fh.read()
    except OSError:  # gone, or a directory
        return None


class SignedImages:
    """ASGI middleware: answers ``/img/<token>/<public id>``, passes everything else on."""

    def __init__(self, app: ASGIApp, *, signer: ImageUrlSigner, store: RenditionStore) -> None:
        self.app, self.signer, self.store = app, signer, store
        self._loading: dict[int, asyncio.Future] = {}  # user id -> a miss being looked up

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith("/img/") and path.count("/") == 3:
                await self._serve(scope, send, path[5:])
                return
        await self.app(scope, receive, send)

    async def _load(self, public_id: str, user_id: int) -> _Entry | None:
        """A miss: one read in a worker thread. A browser asks for a page's images at once, so
        concurrent misses of one user wait for the first one's read (it loads the whole page)
        instead of each running its own."""
        running = self._loading.get(user_id)
        if running is not None:
            await asyncio.shield(running)
            entry = self.store.cached(public_id)
            if entry is not None:
                return entry
        done = asyncio.get_running_loop().create_future()
        self._loading[user_id] = done
        try:
            return await anyio.to_thread.run_sync(self.store.load, public_id, user_id)
        finally:
            done.set_result(None)
            if self._loading.get(user_id) is done:
                del self._loading[user_id]

    async def _answer(self, send: Send, status: int, text: bytes, extra=()) -> None:
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(text)).encode()), (b"cache-control", b"no-store"),
            *extra, *SECURITY_HEADERS]})
        await send({"type": "http.response.body", "body": text})

    async def _serve(self, scope: Scope, send: Send, rest: str) -> None:
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            await self._answer(send, 405, b"method not allowed", [(b"allow", b"GET, HEAD")])
            return
        token, _, public_id = rest.partition("/")
        user_id = self.signer.verify(token, public_id)
        if user_id is None:
            await self._answer(send, 403, b"this image link is not valid or has expired")
            return
        entry = None
        if _PUBLIC_ID.fullmatch(public_id):
            entry = self.store.cached(public_id) or await self._load(public_id, user_id)
        path = self.store.resolve(entry) if entry is not None else None
        data = None
        if entry is not None and path is not None and (entry.etag is None or _ZEROCOPY not in
                                                      scope.get("extensions", {})):
            data = _read(path)
            if data is not None and entry.etag is None:
                entry.etag = strong_etag(data).encode()
        if entry is None or path is None or entry.etag is None:
            await self._answer(send, 404, b"no such image")
            return
        headers = [(b"etag", entry.etag), (b"cache-control", _CACHE_CONTROL),
                   *SECURITY_HEADERS]
        if etag_matches(entry.etag, _if_none_match(scope)):
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        if data is None:  # zero-copy: the server sends the file itself
            await self._zerocopy(send, path, _media_type(path), headers, method == "HEAD")
            return
        headers += [(b"content-type", _media_type(path)),
                    (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else data})

    async def _zerocopy(self, send: Send, path: Path, media_type: bytes, headers: list,
                        head: bool) -> None:
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed below, after the send
        except OSError:
            await self._answer(send, 404, b"no such image")
            return
        with fh:
            size = os.fstat(fh.fileno()).st_size
            headers += [(b"content-type", media_type),
                        (b"content-length", str(size).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            if head:
                await send({"type": "http.response.body", "body": b""})
            else:
                await send({"type": _ZEROCOPY, "file": fh, "count": size})


def _media_type(path: Path) -> bytes:
    return _MEDIA_BYTES.get(path.suffix.lower(), _OTHER_MEDIA_BYTES)


def _if_none_match(scope: Scope) -> bytes:
    for key, value in scope["headers"]:
        if key == b"if-none-match":
            return value
    return b""


class ImageUrls:
    """Issues the signed URLs of a page's images (and remembers where their files are)."""

    def __init__(self, signer: ImageUrlSigner, store: RenditionStore) -> None:
        self.signer, self.store = signer, store

    def expiry(self, page: Page | ServedPage) -> int:
        """Same for every image of the page, and the same each time the page is served, so
        the URLs the browser prefetched are the ones the page shows."""
        ends = page.expires_at
        if ends.tzinfo is None:  # SQLite returns naive UTC datetimes
            ends = ends.replace(tzinfo=UTC)
        return int(ends.timestamp()) + self.signer.GRACE_S

    def page_items(self, page: Page | ServedPage) -> list[dict[str, str]]:
        expires = self.expiry(page)
        out = []
        for item in page.items:
            image = item.image
            self.store.remember(image.public_id, image.rendition_path)
            out.append({"public_id": image.public_id,
                        "src": self.signer.url(image.public_id, page.user_id, expires)})
        return out
