"""Signed image URLs (``/img/<expiry>.<user>.<mac>/<alias>``) served outside the app stack.

The annotator's pages and the page API hand out signed URLs (``security.ImageUrlSigner``):
the MAC proves the image is on one of that user's pages, so serving one needs no session, no
token look-up and no permission query. This pure ASGI middleware sits in front of everything
else and answers those URLs itself: check the MAC and expiry, find the rendition, send its
bytes with ``immutable`` cache headers and a strong ETag (304 on ``If-None-Match``). Every other
request, including the unsigned ``/img/<id>`` that the review, feedback and admin pages
use (session + permission query, ``routes/images.py``), passes through untouched.

The last path segment is the annotator's own alias of the image (``annotate/aliases.py``) and the
ETag is an HMAC of the content hash and the user: neither matches what another account gets
for the same image, so accounts cannot pool what they were shown by id or header.

Answers: 403 for a forged, altered or expired signature, 404 for a valid one whose image or
file is gone; neither sends any file bytes. Gold and work images get byte-identical headers
apart from ETag and length.

Files are read in the event loop (renditions are ~50-200 KB and normally in the page cache: a
thread hop would cost more than the read). The server offers no ``http.response.zerocopysend``
(uvicorn does not implement it); if one does, it is used.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import threading
from collections import OrderedDict
from datetime import UTC
from pathlib import Path

import anyio.to_thread
from sqlalchemy import select
from starlette.types import ASGIApp, Receive, Scope, Send

from cxrlabel.annotate.aliases import Aliases
from cxrlabel.annotate.assignment import ServedPage
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import Image, Page, PageItem
from cxrlabel.web.imagefiles import (
    CACHE_CONTROL,
    MEDIA_TYPES,
    OTHER_MEDIA_TYPE,
    etag_matches,
    path_inside,
)
from cxrlabel.web.security import ImageUrlSigner, add_security_headers

# Raw ASGI headers are bytes: the shared values (``imagefiles``), encoded once.
_CACHE_CONTROL = CACHE_CONTROL.encode()
_MEDIA_BYTES = {k: v.encode() for k, v in MEDIA_TYPES.items()}
_OTHER_MEDIA_BYTES = OTHER_MEDIA_TYPE.encode()
_PUBLIC_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ZEROCOPY = "http.response.zerocopysend"


class _Entry:
    __slots__ = ("etag", "path", "rel", "user_id")

    def __init__(self, rel: str, user_id: int) -> None:
        self.rel = rel  # as stored in the database, relative to the data dir
        self.user_id = user_id  # the alias is this user's: so is the ETag
        self.path: Path | None = None  # resolved and checked on first use
        self.etag: bytes | None = None  # strong: per-user HMAC of the content hash (1st read)


class RenditionStore:
    """(User, alias) -> rendition file, bounded LRU. Filled when a signed URL is issued (the
    page is served by this process); a miss (URL issued by another worker, or before a
    restart) costs one read-only query."""

    RECENT_PAGES = 64  # a miss looks for the alias among the user's latest pages

    def __init__(
        self, data_dir: Path, db: Database, aliases: Aliases, max_entries: int = 50_000
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.db = db
        self.aliases = aliases
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[int, str], _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, user_id: int, alias: str, rendition_path: str | None) -> None:
        """Cheap (a dict insert): called for every image of every page served."""
        if not rendition_path:
            return
        key = (user_id, alias)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return
            self._entries[key] = _Entry(rendition_path, user_id)
            if len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def resolve(self, entry: _Entry) -> Path | None:
        """The entry's file inside the data dir (None when the path would leave it)."""
        if entry.path is None:
            entry.path = path_inside(self.data_dir, entry.rel)
        return entry.path

    def cached(self, user_id: int, alias: str) -> _Entry | None:
        with self._lock:
            return self._entries.get((user_id, alias))

    def load(self, alias: str, user_id: int) -> _Entry | None:
        """The entry, from the database on a miss (blocking: call from a worker thread). An
        alias cannot be looked up, only recomputed: the images of the user's latest pages
        are read in one query and all remembered (one miss per page, not per image)."""
        entry = self.cached(user_id, alias)
        if entry is not None:
            return entry
        with self.db.read_session() as s:
            rows = user_images(s, user_id, self.RECENT_PAGES)
        for public_id, rel in rows:
            self.remember(user_id, self.aliases.image(public_id, user_id), rel)
        return self.cached(user_id, alias)


def user_images(session, user_id: int, recent_pages: int | None = None) -> list:
    """(public id, rendition path) of every image on the user's pages (the latest
    ``recent_pages`` only, when given): what an alias of theirs may name."""
    pages = select(Page.id).where(Page.user_id == user_id)
    if recent_pages is not None:
        pages = pages.order_by(Page.id.desc()).limit(recent_pages)
    return list(
        session.execute(
            select(Image.public_id, Image.rendition_path)
            .join(PageItem, PageItem.image_id == Image.id)
            .where(PageItem.page_id.in_(pages.scalar_subquery()))
            .distinct()
        ).all()
    )


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

    async def _load(self, alias: str, user_id: int) -> _Entry | None:
        """A miss: one read in a worker thread. A browser asks for a page's images at once, so
        concurrent misses of one user wait for the first one's read (it loads the whole page)
        instead of each running its own."""
        running = self._loading.get(user_id)
        if running is not None:
            await asyncio.shield(running)
            entry = self.store.cached(user_id, alias)
            if entry is not None:
                return entry
        done = asyncio.get_running_loop().create_future()
        self._loading[user_id] = done
        try:
            return await anyio.to_thread.run_sync(self.store.load, alias, user_id)
        finally:
            done.set_result(None)
            if self._loading.get(user_id) is done:
                del self._loading[user_id]

    async def _answer(self, scope: Scope, send: Send, status: int, text: bytes, extra=()) -> None:
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(text)).encode()),
            (b"cache-control", b"no-store"),
            *extra,
        ]
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": _with_security_headers(scope, headers),
            }
        )
        await send({"type": "http.response.body", "body": text})

    async def _serve(self, scope: Scope, send: Send, rest: str) -> None:
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            await self._answer(scope, send, 405, b"method not allowed", [(b"allow", b"GET, HEAD")])
            return
        token, _, alias = rest.partition("/")
        user_id = self.signer.verify(token, alias)
        if user_id is None:
            await self._answer(scope, send, 403, b"this image link is not valid or has expired")
            return
        entry = None
        if _PUBLIC_ID.fullmatch(alias):
            entry = self.store.cached(user_id, alias) or await self._load(alias, user_id)
        path = self.store.resolve(entry) if entry is not None else None
        data = None
        if (
            entry is not None
            and path is not None
            and (entry.etag is None or _ZEROCOPY not in scope.get("extensions", {}))
        ):
            data = _read(path)
            if data is not None and entry.etag is None:
                entry.etag = self.store.aliases.etag(hashlib.sha256(data).hexdigest(), user_id)
        if entry is None or path is None or entry.etag is None:
            await self._answer(scope, send, 404, b"no such image")
            return
        headers = _with_security_headers(
            scope, [(b"etag", entry.etag), (b"cache-control", _CACHE_CONTROL)]
        )
        if etag_matches(entry.etag, _if_none_match(scope)):
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        if data is None:  # zero-copy: the server sends the file itself
            await self._zerocopy(scope, send, path, _media_type(path), headers, method == "HEAD")
            return
        headers += [
            (b"content-type", _media_type(path)),
            (b"content-length", str(len(data)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else data})

    async def _zerocopy(
        self, scope: Scope, send: Send, path: Path, media_type: bytes, headers: list, head: bool
    ) -> None:
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed below, after the send
        except OSError:
            await self._answer(scope, send, 404, b"no such image")
            return
        with fh:
            size = os.fstat(fh.fileno()).st_size
            headers += [(b"content-type", media_type), (b"content-length", str(size).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            if head:
                await send({"type": "http.response.body", "body": b""})
            else:
                await send({"type": _ZEROCOPY, "file": fh, "count": size})


def _with_security_headers(scope: Scope, headers: list) -> list:
    """The app's security headers (HSTS over HTTPS too): these responses bypass the session
    middleware that adds them to every other response."""
    return add_security_headers(headers, scope["path"], scheme=scope.get("scheme", "http"))


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

    # Expiries are rounded up to this step: a held (prefetched) page's reservation restarts
    # when the page before it is submitted, and an expiry that followed it to the second
    # changed the URLs the browser had already prefetched (a cache miss; a test that failed
    # whenever the restart crossed a second boundary, issue 24).
    EXPIRY_STEP_S = 300

    def expiry(self, page: Page | ServedPage) -> int:
        """Same for every image of the page, and the same each time the page is served (also
        after its reservation restarts within the step), so the URLs the browser prefetched
        are the ones the page shows. Never before the reservation's end plus the grace."""
        ends = page.expires_at
        if ends.tzinfo is None:  # SQLite returns naive UTC datetimes
            ends = ends.replace(tzinfo=UTC)
        earliest = int(ends.timestamp()) + self.signer.GRACE_S
        return -(-earliest // self.EXPIRY_STEP_S) * self.EXPIRY_STEP_S

    @property
    def aliases(self) -> Aliases:
        return self.store.aliases

    def page_items(self, page: Page | ServedPage) -> list[dict[str, str]]:
        """``{"public_id": <the user's alias>, "src": <signed URL>}`` per item, in order."""
        expires = self.expiry(page)
        out = []
        for item in page.items:
            image = item.image
            alias = self.aliases.image(image.public_id, page.user_id)
            self.store.remember(page.user_id, alias, image.rendition_path)
            out.append({"public_id": alias, "src": self.signer.url(alias, page.user_id, expires)})
        return out
