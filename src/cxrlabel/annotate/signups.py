"""Sign-up limits and duplicate-account signals (no web code).

One multi-use invite link gave an attacker as many accounts as they wanted (issue 18). Each
link already has a use cap (``invites.max_uses``); on top of it:

- **Rate limits**: at most ``CXRLABEL_SIGNUPS_PER_INVITE_HOUR`` (default 20) accounts per
  invite link and ``CXRLABEL_SIGNUPS_PER_NETWORK_HOUR`` (default 10) per client network (IPv4
  /24, IPv6 /48; not for loopback or unknown addresses, which behind a proxy without
  ``--proxy-headers`` would be everyone) in any hour, counted in the database (``signups``),
  so every worker process sees the same count. A refusal is a 429 and creates nothing.
- **Signals for the admin** (``duplicate_signals``; admin page ``/admin/invites``,
  ``cxrlabel invite signals``): accounts created from one browser (same device cookie), from one
  network, or whose answers are near-identical (same answer *and* certainty on almost every
  image both answered). These are leads for a person to look at, not verdicts: a ward's
  shared PC or a hospital NAT gives honest "same device/network" groups.
"""

from __future__ import annotations

import ipaddress
import os
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session, aliased

from cxrlabel.annotate.accounts import AccountError, sha256_hex
from cxrlabel.storage.models import Invite, Job, Judgment, Signup, User

WINDOW = timedelta(hours=1)
SAME_ANSWERS_MIN_COMMON = 10  # images both answered before a pattern is compared
SAME_ANSWERS_MIN_FRACTION = 0.95  # identical (answer, certainty) on at least this share


def _limit(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default


def per_invite_limit() -> int:
    return _limit("CXRLABEL_SIGNUPS_PER_INVITE_HOUR", 20)


def per_network_limit() -> int:
    return _limit("CXRLABEL_SIGNUPS_PER_NETWORK_HOUR", 10)


def network_of(address: str | None) -> str:
    """The client's network: IPv4 /24, IPv6 /48 (one household or NAT, roughly)."""
    try:
        ip = ipaddress.ip_address((address or "").strip())
    except ValueError:
        return "unknown"
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def device_hash(cookie: str | None) -> str | None:
    return sha256_hex(cookie) if cookie else None


def _shared_by_everyone(network: str) -> bool:
    """Loopback or unknown: the server sees no client addresses (a reverse proxy without
    ``--proxy-headers``, a local test): a per-network limit would limit everyone together."""
    if network == "unknown":
        return True
    return ipaddress.ip_network(network).is_loopback


def check_signup_allowed(session: Session, invite: Invite, network: str, now: datetime) -> None:
    """Raise a 429 ``too_many_signups`` when this link or network is over its hourly limit."""
    since = now - WINDOW
    by_invite = (
        session.scalar(
            select(func.count(Signup.id)).where(
                Signup.invite_id == invite.id, Signup.created_at > since
            )
        )
        or 0
    )
    by_network = (
        0
        if _shared_by_everyone(network)
        else session.scalar(
            select(func.count(Signup.id)).where(
                Signup.network == network, Signup.created_at > since
            )
        )
        or 0
    )
    if by_invite >= per_invite_limit() or by_network >= per_network_limit():
        raise AccountError(
            "too_many_signups",
            "Too many accounts were created here recently. Please try again in an hour.",
            429,
        )


def record_signup(
    session: Session, user: User, invite: Invite, network: str, device: str | None, now: datetime
) -> None:
    session.add(
        Signup(user_id=user.id, invite_id=invite.id, network=network, device=device, created_at=now)
    )


@dataclass(frozen=True)
class Signal:
    kind: str  # same_device | same_network | same_answers
    usernames: tuple[str, ...]
    detail: str


def duplicate_signals(session: Session, job: Job | None = None) -> list[Signal]:
    """Groups of accounts that may be one person (strongest kind first)."""
    names = dict(session.execute(select(User.id, User.username)).all())
    out = _grouped(session, Signup.device, "same_device", names, "created from one browser")
    out += _grouped(session, Signup.network, "same_network", names, "signed up from")
    jobs = [job] if job is not None else list(session.scalars(select(Job).order_by(Job.id)))
    for j in jobs:
        out += _same_answers(session, j, names)
    return out


def _grouped(session: Session, column, kind: str, names: dict[int, str], what: str) -> list[Signal]:
    groups: dict[str, list[int]] = defaultdict(list)
    for key, user_id in session.execute(
        select(column, Signup.user_id).where(column.is_not(None)).order_by(Signup.id)
    ):
        groups[key].append(user_id)
    return [
        Signal(
            kind,
            tuple(names.get(u, str(u)) for u in users),
            f"{len(users)} accounts {what}" + (f" {key}" if kind == "same_network" else ""),
        )
        for key, users in groups.items()
        if len(users) > 1 and not (kind == "same_network" and _shared_by_everyone(key))
    ]


def _same_answers(session: Session, job: Job, names: dict[int, str]) -> list[Signal]:
    """Pairs whose (answer, certainty) agree on nearly every image both answered."""
    a, b = aliased(Judgment), aliased(Judgment)
    same = func.sum(case((and_(a.answer == b.answer, a.certainty == b.certainty), 1), else_=0))
    rows = session.execute(
        select(a.user_id, b.user_id, func.count(), same)
        .join(b, and_(b.image_id == a.image_id, b.job_id == a.job_id, b.user_id > a.user_id))
        .where(a.job_id == job.id)
        .group_by(a.user_id, b.user_id)
        .having(func.count() >= SAME_ANSWERS_MIN_COMMON)
    )
    out = []
    for first, second, common, identical in rows:
        if identical / common >= SAME_ANSWERS_MIN_FRACTION:
            out.append(
                Signal(
                    "same_answers",
                    (names.get(first, str(first)), names.get(second, str(second))),
                    f"job {job.name}: identical answer and certainty on "
                    f"{identical} of {common} shared images",
                )
            )
    return out
