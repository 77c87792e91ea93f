"""Per-annotator opaque ids: what an annotator's browser sees instead of the shared ones.

An image's public id is the same for everyone, so several accounts could pool what each was
shown (a test question's id together with its accepted answer from the missed-gold feedback)
and recognise that image later on another account's work page. Annotators therefore never see
it: every image id, answer id and image ETag they get is an HMAC of the shared value and
*their* user id, under a key derived from the app secret. Two accounts get unrelated values for
the same image; the server maps a value back only within that user's own pages or answers.

Same length and alphabet as a public id (22 url-safe characters), so an alias does not announce
itself either. Admins and experts (review, gold and contest pages) keep the shared ids.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Aliases:
    """HMAC-derived per-user ids for images and answers, and per-user image ETags."""

    def __init__(self, key: bytes) -> None:
        self._key = hashlib.sha256(b"cxrlabel-alias:" + key).digest()

    def _mac(self, kind: str, value: str, user_id: int) -> bytes:
        msg = f"{kind}\x00{value}\x00{user_id}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    def image(self, public_id: str, user_id: int) -> str:
        """The id under which ``user_id`` sees the image ``public_id``."""
        return _b64(self._mac("image", public_id, user_id)[:16])

    def answer(self, judgment_id: int, user_id: int) -> str:
        """The id under which ``user_id`` may name one of their answers (to contest it):
        random-looking, so it tells nothing about when or where on a page it was given."""
        return _b64(self._mac("answer", str(judgment_id), user_id)[:16])

    def etag(self, content_digest: str, user_id: int) -> bytes:
        """A strong ETag for this user: changes with the content, but is not the content
        hash that every account would otherwise get for the same image."""
        return b'"' + _b64(self._mac("etag", content_digest, user_id)[:24]).encode() + b'"'

    def image_map(self, public_ids: Iterable[str], user_id: int) -> dict[str, str]:
        """alias -> public id for the images of one user's page(s)."""
        return {self.image(pid, user_id): pid for pid in public_ids}
