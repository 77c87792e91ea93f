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


def sign_in(request: Request, user: User) -> None:
    """Sign ``user`` in on this browser: a new server-side session, written to the cookie
    when the response starts (``web/middleware.py``)."""
    db, now = request.app.state.db, utcnow()
    policy = SessionPolicy.from_settings(request.app.state.settings)
    with db.session() as s:
        purge_expired_sessions(s, now, policy)  # keeps the table to the live sessions
        token = start_session(s, user.id, now)
    request.state.session = SessionData(user_id=user.id, sid=token, changed=True)
    request.state.user = user


def sign_out(request: Request) -> None:
    """End this browser's session (its token stops working everywhere, even if replayed)."""
    current: SessionData = request.state.session
    if current.sid:
        with request.app.state.db.session() as s:
            end_session(s, current.sid)
    request.state.session = SessionData(changed=True)
    request.state.user = None
