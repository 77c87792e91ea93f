"""Start and end a browser's sign-in session (the web half of ``annotate/sessions.py``).

Every way of signing in (password, invite sign-up, OpenID Connect) ends in ``sign_in``; it
creates a server-side session and a fresh cookie (new CSRF token: no session fixation).
``sign_out`` ends the current one; ``annotate.sessions.end_user_sessions`` ends all of a user's.
See docs/contracts.md.
"""

from __future__ import annotations

from starlette.requests import Request

from cxrlabel.annotate.sessions import (
    SessionPolicy,
    end_session,
    purge_expired_sessions,
    start_session,
)
from cxrlabel.storage.models import User, utcnow
from cxrlabel.web.security import SessionData


def sign_in(request: Request, user: User, id_token: str | None = None) -> None:
    """Sign ``user`` in on this browser: a new server-side session, written to the cookie
    when the response starts (``web/middleware.py``). ``id_token``: an OpenID Connect
    sign-in's ID token, kept so that sign-out can end the provider's session too."""
    db, now = request.app.state.db, utcnow()
    policy = SessionPolicy.from_settings(request.app.state.settings)
    with db.session() as s:
        purge_expired_sessions(s, now, policy)  # keeps the table to the live sessions
        token = start_session(s, user.id, now, id_token)
    request.state.session = SessionData(user_id=user.id, sid=token, changed=True)
    request.state.user = user


def sign_out(request: Request) -> str | None:
    """End this browser's session (its token stops working everywhere, even if replayed).
    Returns the ID token it was opened with, if it was an OpenID Connect sign-in."""
    current: SessionData = request.state.session
    id_token = None
    if current.sid:
        with request.app.state.db.session() as s:
            id_token = end_session(s, current.sid)
    request.state.session = SessionData(changed=True)
    request.state.user = None
    return id_token
