"""Sign in with the hospital's OpenID Connect provider (``Settings.oidc``; web/oidc.py).

``GET /auth/oidc/login`` starts the flow (state, nonce and PKCE verifier in a signed cookie
scoped to ``/auth/oidc``, then a redirect to the provider); ``GET /auth/oidc/callback`` checks
the state against that cookie, exchanges the code, verifies the ID token, maps the provider's
claims to a role and starts an ordinary server-side session (``web/signin.py``), so sign-out,
a password change or an admin disabling the account end it like a password session. Sign-out
of such a session also ends the provider's (``web/routes/auth.py``, RP-initiated logout).
"""

from __future__ import annotations

import hmac
import logging

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import RedirectResponse
from starlette.responses import Response

from cxrlabel.annotate.identities import SignInRefused, sign_in_identity
from cxrlabel.web.deps import get_db, render
from cxrlabel.web.oidc import (
    FLOW_COOKIE,
    FLOW_COOKIE_PATH,
    FLOW_TTL_S,
    Flow,
    OidcClient,
    OidcError,
)
from cxrlabel.web.routes.auth import safe_next
from cxrlabel.web.security import cookie_secure_for
from cxrlabel.web.signin import sign_in

log = logging.getLogger("cxrlabel.web.oidc")
router = APIRouter(include_in_schema=False)


def _client(request: Request) -> OidcClient:
    client = getattr(request.app.state, "oidc", None)
    if client is None:
        raise HTTPException(404, "Sign-in with an identity provider is not configured.")
    return client


@router.get("/auth/oidc/login")
def oidc_login(request: Request, next: str = "/") -> Response:
    client = _client(request)
    flow = Flow.start(safe_next(next))
    try:
        target = client.authorization_url(flow)
    except OidcError as exc:
        return _failure(request, exc, 502)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        FLOW_COOKIE,
        request.app.state.oidc_flows.dumps(flow),
        max_age=FLOW_TTL_S,
        path=FLOW_COOKIE_PATH,
        httponly=True,
        samesite="lax",
        secure=cookie_secure_for(request.url.scheme),
    )
    return response


@router.get("/auth/oidc/callback")
def oidc_callback(
    request: Request, state: str = "", code: str = "", error: str = "", error_description: str = ""
) -> Response:
    client = _client(request)
    flow = request.app.state.oidc_flows.loads(request.cookies.get(FLOW_COOKIE))
    if flow is None:
        return _failure(
            request,
            OidcError(
                "This sign-in was started too long ago or in another browser. Please start again.",
                "no valid flow cookie",
            ),
            400,
        )
    # The state proves this browser started this sign-in (no login CSRF, no injected code).
    if not state or not hmac.compare_digest(state.encode(), flow.state.encode()):
        return _failure(
            request,
            OidcError(
                "This sign-in does not belong to this browser. Please start again.",
                "state mismatch",
            ),
            400,
        )
    if error or not code:
        return _failure(
            request,
            OidcError(
                f"{client.settings.name} did not sign you in"
                f"{': ' + error_description if error_description else '.'}",
                f"provider error {error!r}",
            ),
            403,
        )
    try:
        signed = client.finish(flow, code)
        claims = signed.claims
        with get_db(request).session() as s:
            user = sign_in_identity(s, client.settings, claims)
    except OidcError as exc:
        return _failure(request, exc, 403)
    except SignInRefused as exc:
        log.info("OpenID Connect sign-in refused (%s) for sub %r", exc.code, claims.get("sub"))
        return _ended(
            render(
                request,
                "message.html",
                {
                    "heading": "You cannot sign in to cxrlabel",
                    "text": exc.message,
                    "tone": "error",
                    "link": {"href": "/login", "text": "Back to the sign-in page"},
                },
                403,
            )
        )
    sign_in(request, user, signed.id_token)
    return _ended(RedirectResponse(flow.next_url, status_code=303))


def _failure(request: Request, exc: OidcError, status: int) -> Response:
    log.warning("OpenID Connect sign-in failed: %s", exc.detail)
    return _ended(
        render(
            request,
            "message.html",
            {
                "heading": "Sign-in failed",
                "text": exc.message,
                "tone": "error",
                "link": {"href": "/login", "text": "Back to the sign-in page"},
            },
            status,
        )
    )


def _ended(response: Response) -> Response:
    """The flow cookie is single-use: whatever happened, this sign-in attempt is over."""
    response.delete_cookie(FLOW_COOKIE, path=FLOW_COOKIE_PATH, httponly=True, samesite="lax")
    return response
