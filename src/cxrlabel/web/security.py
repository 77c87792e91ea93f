"""Sessions, CSRF and security headers (standard library + Starlette; sign-in throttling:
``web/throttle.py``).

Session cookie: ``base64url(json payload).base64url(HMAC-SHA256)``, HttpOnly, SameSite=Lax,
Secure when the request came over https (or always/never, see ``CXRLABEL_COOKIE_SECURE``). The
payload holds the user id, a CSRF token, the issue time and the token of a server-side session
(``annotate/sessions.py``): the cookie alone signs nobody in, so sign-out, a password change or
an admin disabling the account ends it for good. Signing in issues a fresh session (no
fixation). The signing key comes from ``CXRLABEL_SECRET_KEY`` or ``<data dir>/secret_key``
(created once, mode 0600), so several workers share it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

SESSION_COOKIE = "cxrlabel_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SESSION_MAX_AGE_S = 14 * 24 * 3600

CSP = (
    "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# The OpenAPI page loads Swagger UI from a CDN with an inline bootstrap script.
DOCS_CSP = (
    "default-src 'self'; img-src 'self' data: https://fastapi.tiangolo.com; "
    "script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def load_secret_key(data_dir: Path) -> bytes:
    env = os.environ.get("CXRLABEL_SECRET_KEY")
    if env:
        return env.encode()
    path = data_dir / "secret_key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        try:  # O_EXCL: when several workers start at once, exactly one writes the key
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
    for _ in range(50):  # another worker may still be writing it
        text = path.read_text().strip()
        if text:
            return text.encode()
        time.sleep(0.05)
    raise RuntimeError(f"secret key file {path} is empty")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class SessionData:
    user_id: int | None = None
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    issued: float = field(default_factory=time.time)
    sid: str | None = None  # token of the server-side session (user_sessions row)
    changed: bool = False  # must be written back to the cookie

    def to_payload(self) -> dict[str, Any]:
        return {"u": self.user_id, "c": self.csrf, "t": int(self.issued), "s": self.sid}


class SessionSigner:
    def __init__(self, key: bytes) -> None:
        self._key = hashlib.sha256(b"cxrlabel-session:" + key).digest()

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())

    def dumps(self, session: SessionData) -> str:
        body = _b64(json.dumps(session.to_payload(), separators=(",", ":")).encode())
        return f"{body}.{self._mac(body)}"

    def loads(self, cookie: str | None, now: float | None = None) -> SessionData | None:
        if not cookie or "." not in cookie or len(cookie) > 4096:
            return None
        body, mac = cookie.rsplit(".", 1)
        if not cookie.isascii() or not hmac.compare_digest(mac, self._mac(body)):
            return None
        try:
            data = json.loads(_unb64(body))
            session = SessionData(
                user_id=data["u"], csrf=str(data["c"]), issued=float(data["t"]), sid=data.get("s")
            )
        except (ValueError, KeyError, TypeError):
            return None
        if session.user_id is not None and not isinstance(session.sid, str):
            session.user_id = None  # signed before server-side sessions: sign in again
        if (now or time.time()) - session.issued > SESSION_MAX_AGE_S:
            return None
        return session


class ImageUrlSigner:
    """Signed, expiring image URLs: ``/img/<expiry>.<user id>.<mac>/<public id>``.

    Issued with a page (the page's reservation end + a grace period, so every URL of one page
    carries the same expiry and a prefetched page keeps the URLs the browser already cached).
    The MAC (HMAC-SHA256 over public id, user id and expiry, with a key derived from the app
    secret) proves the image was put on that user's page; checking it needs no database, so
    the image handler (``web/images_fast.py``) runs outside the app stack. A URL is a
    capability, like a presigned object-store URL: whoever holds it may fetch that one image
    until it expires. Gold and work images get the same shape, expiry and headers.
    """

    GRACE_S = 600  # after the reservation ends: a slow annotator's page still shows its images

    def __init__(self, key: bytes) -> None:
        self._key = hashlib.sha256(b"cxrlabel-image-url:" + key).digest()

    def _mac(self, public_id: str, user_id: int, expires: int) -> str:
        msg = f"{public_id}\x00{user_id}\x00{expires}".encode()
        return _b64(hmac.new(self._key, msg, hashlib.sha256).digest()[:16])

    def url(self, public_id: str, user_id: int, expires: int) -> str:
        return f"/img/{expires}.{user_id}.{self._mac(public_id, user_id, expires)}/{public_id}"

    def verify(self, token: str, public_id: str, now: float | None = None) -> int | None:
        """The user id ``token`` (``<expiry>.<user id>.<mac>``) was issued to for
        ``public_id``, if it is genuine and has not expired; else None."""
        parts = token.split(".")
        if (
            len(token) > 96
            or len(parts) != 3
            or not token.isascii()
            or not parts[0].isdigit()
            or not parts[1].isdigit()
        ):
            return None
        expires, user_id = int(parts[0]), int(parts[1])
        if expires < (now if now is not None else time.time()):
            return None
        expected = self._mac(public_id, user_id, expires)
        return user_id if hmac.compare_digest(parts[2].encode(), expected.encode()) else None


def cookie_secure_for(scheme: str) -> bool:
    """``CXRLABEL_COOKIE_SECURE``: ``auto`` (default: Secure when the request is https; run
    uvicorn with --proxy-headers behind a TLS proxy), ``1`` (always) or ``0`` (never)."""
    mode = os.environ.get("CXRLABEL_COOKIE_SECURE", "auto").lower()
    if mode in ("1", "true", "yes", "always"):
        return True
    if mode in ("0", "false", "no", "never"):
        return False
    return scheme == "https"


def hsts_header(scheme: str) -> tuple[bytes, bytes] | None:
    """``Strict-Transport-Security`` for responses served over HTTPS: the request came over
    https (behind a TLS proxy, uvicorn's ``--proxy-headers`` turns a trusted
    ``X-Forwarded-Proto: https`` into the scheme; ``cxrlabel serve`` enables it), or the site
    is declared https-only with ``CXRLABEL_COOKIE_SECURE=1``. ``CXRLABEL_HSTS_MAX_AGE``:
    seconds (default a year; 0 turns the header off)."""
    if not (scheme == "https" or cookie_secure_for("http")):
        return None
    max_age = os.environ.get("CXRLABEL_HSTS_MAX_AGE", "31536000").strip()
    if not max_age.isdigit() or int(max_age) == 0:
        return None
    return (b"strict-transport-security", f"max-age={int(max_age)}".encode())


def cookie_secure(request: Request) -> bool:
    return cookie_secure_for(request.url.scheme)


def session_cookie_header(signer: SessionSigner, session: SessionData, *, secure: bool) -> bytes:
    """The ``Set-Cookie`` value for ``session`` (Starlette formats it)."""
    response = Response()
    response.set_cookie(
        SESSION_COOKIE,
        signer.dumps(session),
        max_age=SESSION_MAX_AGE_S,
        path="/",
        httponly=True,
        samesite="lax",
        secure=secure,
    )
    return next(v for k, v in response.raw_headers if k == b"set-cookie")


def write_session_cookie(
    response: Response, request: Request, signer: SessionSigner, session: SessionData
) -> None:
    response.headers.append(
        "set-cookie",
        session_cookie_header(signer, session, secure=cookie_secure(request)).decode("latin-1"),
    )


def csrf_ok(session: SessionData, supplied: str | None) -> bool:
    # Compare bytes: compare_digest refuses non-ASCII str, and a forged token may be anything.
    return bool(supplied) and hmac.compare_digest(str(supplied).encode(), session.csrf.encode())


def _header_list(csp: str) -> list[tuple[bytes, bytes]]:
    return [
        (k.encode(), v.encode())
        for k, v in (
            ("content-security-policy", csp),
            ("x-content-type-options", "nosniff"),
            ("x-frame-options", "DENY"),
            ("referrer-policy", "no-referrer"),  # invite tokens live in URLs
            ("cross-origin-opener-policy", "same-origin"),
            ("permissions-policy", "camera=(), microphone=(), geolocation=()"),
        )
    ]


# Encoded once: the pure-ASGI middleware (web/middleware.py) and the image handler
# (web/images_fast.py) add them to raw response headers without building header objects.
SECURITY_HEADERS = _header_list(CSP)
DOCS_SECURITY_HEADERS = _header_list(DOCS_CSP)
NO_STORE = (b"cache-control", b"no-store")  # pages may hold personal data; images override


def security_header_list(path: str) -> list[tuple[bytes, bytes]]:
    docs = path.startswith("/api/docs") or path.startswith("/api/redoc")
    return DOCS_SECURITY_HEADERS if docs else SECURITY_HEADERS


def add_security_headers(
    raw: list[tuple[bytes, bytes]], path: str, *, scheme: str
) -> list[tuple[bytes, bytes]]:
    """``raw`` (ASGI response headers) plus every security header it does not set itself,
    HSTS included when the response goes out over HTTPS (``hsts_header``). Every raw response
    builds its headers here, the signed images too, so no kind of response lacks one."""
    present = {k.lower() for k, _v in raw}
    wanted = list(security_header_list(path))
    hsts = hsts_header(scheme)
    if hsts is not None:
        wanted.append(hsts)
    out = list(raw)
    out.extend(h for h in wanted if h[0] not in present)
    if b"cache-control" not in present:
        out.append(NO_STORE)
    return out
