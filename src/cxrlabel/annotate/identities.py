"""Who an OpenID Connect sign-in is: role from the provider's claims, and the user it signs
in as (found by issuer + subject, linked to an admin-created user by username, or created).

No web imports: ``web/routes/oidc.py`` calls ``sign_in_identity`` after it has verified the
ID token (``web/oidc.py``).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cxrlabel.annotate.accounts import USERNAME_RE, lock_account_creation
from cxrlabel.config import OidcSettings
from cxrlabel.errors import EngineError
from cxrlabel.storage.models import AuditEvent, Role, User, UserIdentity, utcnow

# When several claim values map to roles, the most powerful one wins.
ROLE_RANK = {Role.ANNOTATOR: 0, Role.EXPERT: 1, Role.ADMIN: 2}
# Never a valid argon2 hash: a provisioned user has no password until an admin sets one.
NO_PASSWORD = "!oidc-only"


class SignInRefused(EngineError):
    """The provider vouched for the person, but cxrlabel does not let them in."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message, 403)


def role_from_claims(claims: Mapping[str, Any], claim: str, roles: Mapping[str, str]) -> str | None:
    """The highest role any value of ``claims[claim]`` maps to (a list or one string), else
    None."""
    values = claims.get(claim)
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list):
        return None
    mapped = [roles[v] for v in values if isinstance(v, str) and v in roles]
    return max(mapped, key=ROLE_RANK.__getitem__, default=None)


def sign_in_identity(session: Session, settings: OidcSettings, claims: Mapping[str, Any]) -> User:
    """The active user these verified claims sign in as, with the role the provider's claims
    give now (so removing someone from a group takes effect at their next sign-in). Raises
    ``SignInRefused`` with a message for the person."""
    role = role_from_claims(claims, settings.role_claim, settings.roles)
    if role is None:
        raise SignInRefused(
            "oidc_unmapped",
            (
                f"Your account at {settings.name} is not in a group that may use cxrlabel "
                f"(claim '{settings.role_claim}'). Ask the administrator to grant access."
            ),
        )
    subject = str(claims["sub"])
    if not subject or len(subject) > 255:  # the column's size; OpenID Connect allows 255
        raise SignInRefused("oidc_bad_subject", f"{settings.name} sent an unusable account id.")
    user = _bound_user(session, settings, subject)
    if user is None:
        user = _link_or_create(session, settings, claims, role)
    if not user.active:
        raise SignInRefused("account_disabled", "This account is disabled.")
    if user.role != role:
        session.add(
            AuditEvent(
                at=utcnow(),
                job_id=None,
                actor_id=None,
                action="account.role_from_provider",
                subject=f"user:{user.id}",
                payload={"from": user.role, "to": role},
            )
        )
        user.role = role
    return user


def _bound_user(session: Session, settings: OidcSettings, subject: str) -> User | None:
    """The user this provider account (issuer + subject) is bound to, if any."""
    return session.scalar(
        select(User)
        .join(UserIdentity, UserIdentity.user_id == User.id)
        .where(UserIdentity.issuer == settings.issuer, UserIdentity.subject == subject)
    )


def _link_or_create(
    session: Session, settings: OidcSettings, claims: Mapping[str, Any], role: str
) -> User:
    """First sign-in of this provider account: bind it to the user an admin created with
    exactly this username, or (``provision = auto``) to a new user."""
    # Then look again: the same person's sign-in in a second tab may have bound this
    # account while this one waited for the lock.
    lock_account_creation(session)
    bound = _bound_user(session, settings, str(claims["sub"]))
    if bound is not None:
        return bound
    wanted = _claimed_username(claims, settings.username_claim)
    user = session.scalar(select(User).where(User.username == wanted)) if wanted else None
    if user is not None and _has_identity(session, user.id, settings.issuer):
        user = None  # that username belongs to another account at this provider
    if user is None:
        if settings.provision != "auto":
            raise SignInRefused(
                "oidc_no_account",
                (
                    f"There is no cxrlabel account for you yet ({settings.name} says "
                    f"'{wanted or claims['sub']}'). Ask the administrator to create one."
                ),
            )
        user = User(
            username=_free_username(session, wanted or f"user-{claims['sub']}"),
            password_hash=NO_PASSWORD,
            role=role,
            active=True,
        )
        session.add(user)
        session.flush()
        action = "account.created_by_provider"
    else:
        action = "account.linked_to_provider"
    session.add(UserIdentity(issuer=settings.issuer, subject=str(claims["sub"]), user_id=user.id))
    session.add(
        AuditEvent(
            at=utcnow(),
            job_id=None,
            actor_id=None,
            action=action,
            subject=f"user:{user.id}",
            payload={"issuer": settings.issuer, "role": role},
        )
    )
    session.flush()
    return user


def _claimed_username(claims: Mapping[str, Any], claim: str) -> str | None:
    value = claims.get(claim)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _has_identity(session: Session, user_id: int, issuer: str) -> bool:
    return (
        session.scalar(
            select(UserIdentity.id).where(
                UserIdentity.user_id == user_id, UserIdentity.issuer == issuer
            )
        )
        is not None
    )


def _free_username(session: Session, wanted: str) -> str:
    """``wanted`` made a valid username (other characters become '_'), with a suffix when it
    is taken: a new account never takes over an existing one."""
    base = re.sub(r"[^A-Za-z0-9_.\-]", "_", wanted)[:32].strip("_.-") or "user"
    if not USERNAME_RE.match(base):
        base = f"u{base}"[:32]
    candidate = base
    while session.scalar(select(User.id).where(User.username == candidate)) is not None:
        candidate = f"{base}-{secrets.token_hex(3)}"
    return candidate
