"""Server-side sign-in sessions: start, look up, touch, end (issue 18).

The browser's signed cookie carries a random session token (``web/security.py``); the
database keeps only its SHA-256 in ``user_sessions``, so a session ends for good when its row
is deleted: on sign-out, on a password change, when an admin disables the account, or when it
has been idle or alive too long (``SessionPolicy``). Looking a session up is one indexed read
(token hash joined to its user); ``last_seen_at`` is written at most once per
``TOUCH_INTERVAL`` so the annotation loop stays read-only here.

Public API (also for other sign-in methods, e.g. OpenID Connect; see docs/contracts.md):
``start_session``, ``end_session``, ``end_user_sessions``, ``session_user``, ``touch_session``.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from cxrlabel.storage.models import User, UserSession, as_utc

TOUCH_INTERVAL = timedelta(minutes=1)


@dataclass(frozen=True)
class SessionPolicy:
    idle: timedelta = timedelta(hours=8)
    absolute: timedelta = timedelta(days=7)

    @classmethod
    def from_settings(cls, settings: object) -> SessionPolicy:
        return cls(
            idle=timedelta(minutes=float(getattr(settings, "session_idle_minutes", 480))),
            absolute=timedelta(hours=float(getattr(settings, "session_max_hours", 168))),
        )


@dataclass(frozen=True)
class ActiveSession:
    user: User
    needs_touch: bool  # last_seen_at is older than TOUCH_INTERVAL


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(
    session: Session, user_id: int, now: datetime, id_token: str | None = None
) -> str:
    """A new session for the user; returns the token the cookie must carry (shown once).
    ``id_token``: the provider's ID token when the user signed in through OpenID Connect."""
    token = secrets.token_urlsafe(32)
    session.add(
        UserSession(
            token_sha256=token_hash(token),
            user_id=user_id,
            created_at=now,
            last_seen_at=now,
            id_token=id_token,
        )
    )
    session.flush()
    return token


def end_session(session: Session, token: str | None) -> str | None:
    """End one session (sign-out). Unknown or missing tokens are ignored. Returns the ID token
    the session was opened with (OpenID Connect sign-ins), for ending the provider's session."""
    if not token:
        return None
    row = session.scalar(select(UserSession).where(UserSession.token_sha256 == token_hash(token)))
    if row is None:
        return None
    id_token = row.id_token
    session.delete(row)
    return id_token


def end_user_sessions(session: Session, user_id: int, *, keep_token: str | None = None) -> int:
    """End every session of the user (password change, account disabled); ``keep_token``
    spares one (the browser that changed its own password). Returns how many ended."""
    query = delete(UserSession).where(UserSession.user_id == user_id)
    if keep_token:
        query = query.where(UserSession.token_sha256 != token_hash(keep_token))
    return _rows_changed(session.execute(query))


_LOOKUP = select(User, UserSession.created_at, UserSession.last_seen_at).join(
    UserSession, UserSession.user_id == User.id
)


def session_user(
    session: Session, token: str, now: datetime, policy: SessionPolicy
) -> ActiveSession | None:
    """The active user of a live session, else None (unknown, ended, timed out, disabled).
    One indexed read; never writes (see ``touch_session``)."""
    row = session.execute(_LOOKUP.where(UserSession.token_sha256 == token_hash(token))).first()
    if row is None:
        return None
    user, created, last_seen = row
    created, last_seen = as_utc(created), as_utc(last_seen)
    if not user.active or now - last_seen > policy.idle or now - created > policy.absolute:
        return None
    return ActiveSession(user=user, needs_touch=now - last_seen >= TOUCH_INTERVAL)


def touch_session(session: Session, token: str, now: datetime) -> None:
    session.execute(
        update(UserSession)
        .where(UserSession.token_sha256 == token_hash(token))
        .values(last_seen_at=now)
    )


def purge_expired_sessions(session: Session, now: datetime, policy: SessionPolicy) -> int:
    """Delete sessions past either timeout (housekeeping; lookups already refuse them)."""
    query = delete(UserSession).where(
        (UserSession.last_seen_at < now - policy.idle)
        | (UserSession.created_at < now - policy.absolute)
    )
    return _rows_changed(session.execute(query))


def _rows_changed(result: Any) -> int:
    """Rows a DELETE/UPDATE touched (a CursorResult's rowcount; typed as plain Result)."""
    return int(getattr(result, "rowcount", 0) or 0)
