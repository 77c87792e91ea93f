"""What both image paths send the same way: cache headers, media types, the ETag and the check
that a rendition path stays inside the data folder.

The signed ``/img/<token>/<public id>`` URLs are answered by ``images_fast`` (raw ASGI, before
the app stack); the session-checked ``/img/<public id>`` by ``routes/images``. Gold and work
images must get identical headers on both (apart from ETag and length), so the values live here.
No Last-Modified on either: file dates could tell test questions (imported at another time)
from work images.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import AnyStr

CACHE_CONTROL = "private, max-age=31536000, immutable"
MEDIA_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
}
OTHER_MEDIA_TYPE = "application/octet-stream"


def media_type(path: Path) -> str:
    return MEDIA_TYPES.get(path.suffix.lower(), OTHER_MEDIA_TYPE)


def strong_etag(data: bytes) -> str:
    """A strong ETag from the content (quoted; 32 hex digits of its SHA-256)."""
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


def etag_matches(etag: AnyStr, if_none_match: AnyStr) -> bool:
    """Whether a request's ``If-None-Match`` names this ETag (a list or a single tag); bytes
    for the raw ASGI path, text for the route."""
    return etag in if_none_match


def path_inside(data_dir: Path, rel: str) -> Path | None:
    """``rel`` resolved against ``data_dir`` (already resolved), or None when it would leave it
    (a stored path with ``..`` or a link out of the folder)."""
    path = (data_dir / rel).resolve()
    return path if path.is_relative_to(data_dir) else None
