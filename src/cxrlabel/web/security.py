"""Sessions, CSRF, login rate limiting and security headers (standard library + Starlette).

Session cookie: ``base64url(json payload).base64url(HMAC-SHA256)``, HttpOnly, SameSite=Lax,
Secure when the request came over https (or always/never, see ``CXRLABEL_COOKIE_SECURE``). The
payload holds the user id, a CSRF token, the issue time and a fingerprint of the password hash,
so changing a password signs out every other session. Signing in issues a fresh session (no
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
import threading
import time
from collections import deque
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


def password_fingerprint(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


@dataclass
class SessionData:
    user_id: int | None = None
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    issued: float = field(default_factory=time.time)
    pw: str | None = None  # fingerprint of the password hash at sign-in
    changed: bool = False  # must be written back to the cookie

    def to_payload(self) -> dict[str, Any]:
        return {"u": self.user_id, "c": self.csrf, "t": int(self.issued), "p": self.pw}


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
            session = SessionData(user_id=data["u"], csrf=str(data["c"]),
                                  issued=float(data["t"]), pw=data.get("p"))
        except (ValueError, KeyError, TypeError):
            return None
        if (now or time.time()) - session.issued > SESSION_MAX_AGE_S:
            return None
        return session


def cookie_secure(request: Request) -> bool:
    """``CXRLABEL_COOKIE_SECURE``: ``auto`` (default: Secure when the request is https; run
    uvicorn with --proxy-headers behind a TLS proxy), ``1`` (always) or ``0`` (never)."""
    mode = os.environ.get("CXRLABEL_COOKIE_SECURE", "auto").lower()
    if mode in ("1", "true", "yes", "always"):
        return True
    if mode in ("0", "false", "no", "never"):
        return False
    return request.url.scheme == "https"


def write_session_cookie(response: Response, request: Request, signer: SessionSigner,
                         session: SessionData) -> None:
    response.set_cookie(
        SESSION_COOKIE, signer.dumps(session), max_age=SESSION_MAX_AGE_S, path="/",
        httponly=True, samesite="lax", secure=cookie_secure(request),
    )


def csrf_ok(session: SessionData, supplied: str | None) -> bool:
    # Compare bytes: compare_digest refuses non-ASCII str, and a forged token may be anything.
    return bool(supplied) and hmac.compare_digest(str(supplied).encode(), session.csrf.encode())


def security_headers(response: Response, path: str) -> None:
    headers = response.headers
    docs = path.startswith("/api/docs") or path.startswith("/api/redoc")
    headers.setdefault("Content-Security-Policy", DOCS_CSP if docs else CSP)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")  # invite tokens live in URLs
    headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    headers.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
    if "cache-control" not in headers:
        headers["Cache-Control"] = "no-store"  # pages may hold personal data; images override


class LoginRateLimiter:
    """At most ``max_failures`` failed sign-ins per ``window_s`` per client address and per
    username (in memory, per worker process)."""

    def __init__(self, max_failures: int = 10, window_s: float = 900.0) -> None:
        self.max_failures, self.window_s = max_failures, window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._failures.setdefault(key, deque())
        while q and now - q[0] > self.window_s:
            q.popleft()
        return q

    def retry_after(self, keys: list[str], now: float | None = None) -> int:
        """Seconds to wait before trying again, 0 when allowed."""
        now = now or time.monotonic()
        with self._lock:
            waits = [
                int(self.window_s - (now - q[0])) + 1
                for q in (self._recent(k, now) for k in keys) if len(q) >= self.max_failures
            ]
        return max(waits, default=0)

    def failed(self, keys: list[str], now: float | None = None) -> None:
        now = now or time.monotonic()
        with self._lock:
            for key in keys:
                self._recent(key, now).append(now)

    def succeeded(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)
