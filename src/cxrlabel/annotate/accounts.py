"""User accounts, invites and API tokens.

Passwords are hashed with argon2id (argon2-cffi). Invite and API tokens are random 192-bit
strings; only their SHA-256 is stored, so a database leak does not hand out working links.

Password policy (``check_password_rules``): 8-256 characters, not only whitespace, not the
username nor containing it, and not one of the 10,000 most common passwords of 8+ characters
(``common_passwords.txt.gz``, shipped with the package: no network needed).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import re
import secrets
from datetime import datetime, timedelta
from importlib import resources

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from cxrlabel.annotate.sessions import end_user_sessions
from cxrlabel.errors import EngineError
from cxrlabel.storage.locks import ACCOUNTS, advisory_lock
from cxrlabel.storage.models import AuditEvent, Invite, Job, Role, User, as_utc, utcnow

USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{1,39}$")
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 256  # argon2 handles more, but a cap stops denial of service by huge input
# A year, as the API schema; longer is a mistake (and 1e300 hours overflows a date).
MAX_INVITE_HOURS = 24 * 365

_hasher = PasswordHasher()
# Verified against when the username does not exist, so timing does not reveal valid usernames.
_DUMMY_HASH = _hasher.hash("not-a-real-password-" + secrets.token_hex(8))


class AccountError(EngineError):
    """A refused account operation (bad username, weak password, used-up invite...)."""


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


@functools.cache
def common_passwords() -> frozenset[str]:
    """The shipped list of common passwords, lower-cased (loaded once, ~1 MB in memory)."""
    blob = resources.files("cxrlabel.annotate").joinpath("common_passwords.txt.gz").read_bytes()
    lines = gzip.decompress(blob).decode().splitlines()
    return frozenset(w.lower() for w in lines if w and not w.startswith("#"))


def check_password_rules(password: str, username: str | None = None) -> None:
    """Raise ``AccountError("weak_password")`` with the reason, or return for a good one."""

    def weak(message: str) -> AccountError:
        return AccountError("weak_password", message)

    if len(password) < MIN_PASSWORD_LENGTH:
        raise weak(f"The password needs at least {MIN_PASSWORD_LENGTH} characters.")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise weak("The password is too long.")
    if not password.strip():
        raise weak("The password cannot be only spaces.")
    name = (username or "").strip().lower()
    if name and (password.lower() == name or (len(name) >= 3 and name in password.lower())):
        raise weak("The password cannot contain the username.")
    if password.lower() in common_passwords() or password.strip().lower() in common_passwords():
        raise weak("This password is one of the most common ones; please choose another.")


def lock_account_creation(session: Session) -> None:
    """One account creation at a time (PostgreSQL; SQLite runs writers one at a time): two
    sign-ups taking "nora" and "Nora" at the same instant would otherwise both find the name
    free. Take it before any "is it free?" check; released at commit."""
    advisory_lock(session, ACCOUNTS, 0)


def check_new_account(username: str, password: str, role: str) -> None:
    """``AccountError`` for a bad name, unknown role or weak password: the checks that need no
    database (the CLI runs them before it opens, or starts, an installation)."""
    if not USERNAME_RE.match(username.strip()):
        raise AccountError(
            "bad_username",
            "Usernames are 2-40 characters: letters, digits, '.', '_' or '-', starting with a "
            "letter or digit.",
        )
    if role not in Role.ALL:
        raise AccountError("bad_role", f"Unknown role {role!r}; use one of {', '.join(Role.ALL)}.")
    check_password_rules(password, username.strip())


def create_user(
    session: Session, username: str, password: str, role: str, password_hash: str | None = None
) -> User:
    """Create an account; raises ``AccountError`` for a bad name, weak password, unknown role or
    a username that is taken. ``password_hash``: argon2 of ``password`` computed beforehand
    (the web app hashes on its capped pool, outside the write transaction)."""
    username = username.strip()
    check_new_account(username, password, role)
    lock_account_creation(session)
    taken = session.scalar(select(User.id).where(User.username.ilike(username)))
    if taken is not None:
        raise AccountError("username_taken", f"The username {username!r} is already taken.", 409)
    user = User(
        username=username, password_hash=password_hash or hash_password(password), role=role
    )
    session.add(user)
    session.flush()
    return user


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The active user with this username and password, else None (same cost either way).
    Hashes on the calling thread: the web app uses ``load_credentials`` + ``verify_password``
    instead, to hash on its capped pool (``web/passwords.py``)."""
    user, stored = load_credentials(session, username)
    if not verify_password(stored, password) or user is None or not user.active:
        return None
    if _hasher.check_needs_rehash(stored):
        user.password_hash = hash_password(password)
    return user


def load_credentials(session: Session, username: str) -> tuple[User | None, str]:
    """The user with this username (or None) and the hash to verify against: a dummy hash for
    an unknown name, so timing does not reveal which usernames exist."""
    user = session.scalar(select(User).where(User.username == username.strip()))
    return user, user.password_hash if user is not None else _DUMMY_HASH


def needs_rehash(stored_hash: str) -> bool:
    return stored_hash != _DUMMY_HASH and _hasher.check_needs_rehash(stored_hash)


def verify_password(stored_hash: str, password: str) -> bool:
    """argon2 verification (CPU-heavy: tens of ms)."""
    try:
        return _hasher.verify(stored_hash, password[:MAX_PASSWORD_LENGTH])
    except (VerificationError, InvalidHashError):
        return False


def set_password(
    session: Session,
    user: User,
    password: str,
    *,
    keep_session: str | None = None,
    actor: User | None = None,
) -> int:
    """Set a new password (policy checked) and end every session of the user except
    ``keep_session`` (the browser that changed it). Returns how many sessions ended."""
    check_password_rules(password, user.username)
    user.password_hash = hash_password(password)
    ended = end_user_sessions(session, user.id, keep_token=keep_session)
    session.add(
        AuditEvent(
            at=utcnow(),
            job_id=None,
            actor_id=actor.id if actor else None,
            action="account.password_changed",
            subject=f"user:{user.id}",
            payload={"sessions_ended": ended},
        )
    )
    return ended


def change_own_password(
    session: Session, user: User, current: str, new: str, keep_session: str | None
) -> int:
    """A signed-in user changing their password: the current one must be right."""
    if not verify_password(user.password_hash, current):
        raise AccountError("wrong_password", "The current password is wrong.", 403)
    return set_password(session, user, new, keep_session=keep_session, actor=user)


def set_active(session: Session, user: User, active: bool, actor: User | None = None) -> int:
    """Enable or disable an account; disabling ends all its sessions at once (API tokens
    stop working too: they are only honoured for active users). Returns sessions ended."""
    user.active = active
    ended = 0 if active else end_user_sessions(session, user.id)
    session.add(
        AuditEvent(
            at=utcnow(),
            job_id=None,
            actor_id=actor.id if actor else None,
            action="account.enabled" if active else "account.disabled",
            subject=f"user:{user.id}",
            payload={"sessions_ended": ended},
        )
    )
    return ended


def find_user(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username.strip()))
    if user is None:
        raise AccountError("not_found", f"No user named {username!r}.", 404)
    return user


# --- invites ------------------------------------------------------------------------------------


def create_invite(
    session: Session,
    *,
    now: datetime | None = None,
    role: str = Role.ANNOTATOR,
    max_uses: int = 1,
    expires_hours: float | None = 72.0,
    job: Job | None = None,
    created_by: User | None = None,
) -> tuple[Invite, str]:
    """A new invite and its secret token (shown once; only its hash is stored).

    The join link is ``<base_url>/join/<token>``; see ``invite_link``.
    """
    now = now or utcnow()
    if role not in Role.ALL:
        raise AccountError("bad_role", f"Unknown role {role!r}.")
    if max_uses < 1:
        raise AccountError("bad_invite", "An invite needs at least one use.")
    if expires_hours is not None and not (math.isfinite(expires_hours) and expires_hours > 0):
        # NaN compares false with everything: it passed a ``<= 0`` check and crashed later.
        raise AccountError("bad_invite", "The expiry must be a positive number of hours.")
    if expires_hours is not None and expires_hours > MAX_INVITE_HOURS:
        raise AccountError("bad_invite", f"The expiry can be at most {MAX_INVITE_HOURS} hours.")
    token = secrets.token_urlsafe(24)
    invite = Invite(
        token_sha256=sha256_hex(token),
        job_id=job.id if job is not None else None,
        role=role,
        max_uses=max_uses,
        expires_at=now + timedelta(hours=expires_hours) if expires_hours is not None else None,
        created_by=created_by.id if created_by is not None else None,
        created_at=now,
    )
    session.add(invite)
    session.flush()
    # Who may create accounts is an admin decision: keep it in the append-only audit log.
    session.add(
        AuditEvent(
            at=now,
            job_id=invite.job_id,
            actor_id=invite.created_by,
            action="admin.invite_created",
            subject=f"invite:{invite.id}",
            payload={"role": role, "max_uses": max_uses, "expires_hours": expires_hours},
        )
    )
    return invite, token


def invite_link(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/join/{token}"


def invite_problem(invite: Invite | None, now: datetime) -> str | None:
    """Why this invite cannot be used now, or None when it can."""
    if invite is None:
        return "This invite link is not valid. Please ask for a new one."
    if invite.revoked:
        return "This invite link has been withdrawn. Please ask for a new one."
    if invite.expires_at is not None and as_utc(invite.expires_at) <= now:
        return "This invite link has expired. Please ask for a new one."
    if invite.uses >= invite.max_uses:
        return "This invite link has already been used. Please ask for a new one."
    return None


def find_invite(session: Session, token: str, *, lock: bool = False) -> Invite | None:
    query = select(Invite).where(Invite.token_sha256 == sha256_hex(token))
    if lock:
        query = query.with_for_update()
    return session.scalar(query)


def redeem_invite(
    session: Session,
    token: str,
    username: str,
    password: str,
    now: datetime,
    password_hash: str | None = None,
) -> tuple[User, Invite]:
    """Create an account from an invite; the use count is checked under a row lock so a
    single-use link cannot be used twice by two simultaneous sign-ups."""
    invite = find_invite(session, token, lock=True)
    problem = invite_problem(invite, now)
    if problem is not None:
        raise AccountError("invite_unusable", problem, 410)
    assert invite is not None
    user = create_user(session, username, password, invite.role, password_hash)
    invite.uses += 1
    return user, invite


def revoke_invite(session: Session, invite_id: int, actor: User | None = None) -> Invite:
    invite = session.get(Invite, invite_id)
    if invite is None:
        raise AccountError("not_found", "No such invite.", 404)
    invite.revoked = True
    session.add(
        AuditEvent(
            at=utcnow(),
            job_id=invite.job_id,
            actor_id=actor.id if actor is not None else None,
            action="admin.invite_revoked",
            subject=f"invite:{invite.id}",
            payload={},
        )
    )
    return invite


# --- API tokens ---------------------------------------------------------------------------------


def issue_api_token(session: Session, user: User) -> str:
    """A new API token for the user (replacing any previous one); only its hash is stored."""
    token = "cxr_" + secrets.token_urlsafe(32)
    user.api_token_hash = sha256_hex(token)
    session.flush()
    return token


def user_for_api_token(session: Session, token: str) -> User | None:
    if not token:
        return None
    user = session.scalar(select(User).where(User.api_token_hash == sha256_hex(token)))
    return user if user is not None and user.active else None
