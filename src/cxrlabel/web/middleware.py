"""Session cookie and security headers as a pure ASGI middleware.

It was a ``@app.middleware("http")`` (Starlette's ``BaseHTTPMiddleware``), which runs every
request in a task group with memory streams between the middleware and the app: measurable CPU
per request when a page costs a dozen requests (docs/benchmarks.md, issue 11). This one only
reads the cookie header, puts the session in ``scope["state"]`` (what ``request.state`` reads)
and adds headers to ``http.response.start``.
"""

from __future__ import annotations

from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cxrlabel.web.security import (
    SESSION_COOKIE,
    SessionData,
    SessionSigner,
    add_security_headers,
    cookie_secure_for,
    session_cookie_header,
)

# Responses that never (re)write the session cookie: static files and images.
NO_COOKIE_PREFIXES = ("/static/", "/img/")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def session_cookie(scope: Scope) -> str | None:
    raw = _header(scope, b"cookie")
    if raw is None or SESSION_COOKIE.encode() not in raw:
        return None
    return cookie_parser(raw.decode("latin-1")).get(SESSION_COOKIE)  # as request.cookies


class SessionMiddleware:
    """``request.state.session`` for every HTTP request (anonymous ones carry a CSRF token);
    writes the cookie back when a route changed the session (sign in / out) and adds the
    security headers of ``web/security.py`` to every response."""

    def __init__(self, app: ASGIApp, signer: SessionSigner) -> None:
        self.app, self.signer = app, signer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        session = self.signer.loads(session_cookie(scope))
        if session is None:
            session = SessionData(changed=True)  # anonymous: carries the CSRF token
        state = scope.setdefault("state", {})
        state["session"] = session
        path: str = scope["path"]
        # A bearer-token API client has no use for a cookie: do not sign one per call.
        skip_cookie = path.startswith(NO_COOKIE_PREFIXES) or (
            _header(scope, b"authorization") is not None and not session.user_id
        )

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = add_security_headers(
                    list(message.get("headers", ())), path, scheme=scope.get("scheme", "http")
                )
                current: SessionData = state["session"]  # a route may have replaced it
                if current.changed and not skip_cookie:
                    secure = cookie_secure_for(scope.get("scheme", "http"))
                    headers.append(
                        (b"set-cookie", session_cookie_header(self.signer, current, secure=secure))
                    )
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --- request body limits ---------------------------------------------------------------------

KIB, MIB = 1024, 1024 * 1024
ANONYMOUS_BODY_LIMIT = 64 * KIB  # sign-in and sign-up forms are a few hundred bytes
DEFAULT_BODY_LIMIT = 1 * MIB  # a submitted page of answers is a few KiB
# (path prefix, limit) for signed-in callers, first match wins.
ROUTE_BODY_LIMITS: tuple[tuple[str, int], ...] = (
    ("/api/model/predict", 65 * MIB),  # one DICOM (up to 64 MiB, web/routes/model.py) + form
)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class BodyTooLarge(Exception):
    pass


def body_limit_for(path: str, signed_in: bool) -> int:
    if not signed_in:
        return ANONYMOUS_BODY_LIMIT
    return next(
        (limit for prefix, limit in ROUTE_BODY_LIMITS if path.startswith(prefix)),
        DEFAULT_BODY_LIMIT,
    )


def _too_large_body(limit: int) -> bytes:
    return (
        b'{"error":{"code":"request_too_large","message":"The request body is larger than '
        + f"this route accepts ({limit} bytes)".encode()
        + b'."}}'
    )


async def _send_413(scope: Scope, send: Send, limit: int) -> None:
    body = _too_large_body(limit)
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *add_security_headers([], "/", scheme=scope.get("scheme", "http")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Refuse request bodies over the route's limit before anything parses them (413): from
    ``Content-Length`` at once, and by counting the bytes as they stream in (a chunked body or a
    lying length). Anonymous callers (no signed-in session cookie, no bearer header) get the
    small limit everywhere, so an anonymous 400 MiB JSON body is refused before sign-in checks,
    CSRF or JSON parsing (before issue 18 it was parsed first and took the server from 264 to
    1,457 MiB). Runs inside ``SessionMiddleware`` (it reads the session it decoded)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        session = scope.get("state", {}).get("session")
        signed_in = (session is not None and session.user_id is not None) or (
            _header(scope, b"authorization") is not None
        )
        limit = body_limit_for(scope["path"], signed_in)
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _send_413(scope, send, limit)
            return
        await self._counted(scope, receive, send, limit)

    async def _counted(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        seen, over, started = 0, False, False

        async def counting_receive() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    over = True
                    raise BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over:  # the app turned our exception into its own error: answer 413 instead
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await _send_413(scope, send, limit)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            if not started:
                await _send_413(scope, send, limit)
