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
            _header(scope, b"authorization") is not None and not session.user_id)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = add_security_headers(list(message.get("headers", ())), path)
                current: SessionData = state["session"]  # a route may have replaced it
                if current.changed and not skip_cookie:
                    secure = cookie_secure_for(scope.get("scheme", "http"))
                    headers.append((b"set-cookie",
                                    session_cookie_header(self.signer, current, secure=secure)))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
