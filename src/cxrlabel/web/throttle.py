"""Sign-in throttle shared by every worker process (a table: ``storage.models.LoginAttempt``).

Failed sign-ins are counted per (client address, username) and per client address over a
sliding window. It lived in memory, per process, so ``serve --workers N`` (PostgreSQL, or
SQLite with its lock file) gave an attacker N times the budget; the table gives every worker
one budget.

``begin`` checks and reserves an attempt in one transaction, and an attempt still being checked
counts against the budget (a ``pending`` row): 49 concurrent guesses were all let through
against a budget of 10 when the check and the count were separate. Atomic across processes:
SQLite runs write transactions one at a time (``BEGIN IMMEDIATE`` plus the writer lock), and on
PostgreSQL each key's transaction-level advisory lock is taken first, in sorted order (no
deadlock between two attempts sharing keys). The budget is per address *and* username, so an
attacker locks out themselves, not the account's owner signing in from elsewhere; one address
trying many usernames meets ``ip_max_failures``. ``retry_after``/``failed``/``succeeded`` are
the plain per-key calls (sign-up uses them).

Every call is a short database transaction: routes call it from the thread pool.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Delete, delete, func, select, update
from sqlalchemy.orm import Session

from cxrlabel.storage.db import Database
from cxrlabel.storage.locks import LOGIN_THROTTLE, advisory_lock, retry_transient
from cxrlabel.storage.models import LoginAttempt

# A pending attempt whose worker died (killed mid-check) stops counting after this long; a
# password check takes well under a second, or is refused when the hashing pool is full.
PENDING_TTL_S = 120.0


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _lock_key(hashed: str) -> int:
    return int(hashed[:8], 16) - 2**31  # a signed 32-bit key for pg_advisory_xact_lock


def _removed(s: Session, statement: Delete) -> int:
    """Rows a DELETE removed (``execute`` is typed as a plain Result; it is a CursorResult)."""
    return int(cast("CursorResult[Any]", s.execute(statement)).rowcount or 0)


def _at(now: float | None) -> datetime:
    return datetime.fromtimestamp(time.time() if now is None else now, UTC)


class LoginRateLimiter:
    """The throttle over ``db``; ``now`` arguments are Unix seconds (tests move the clock)."""

    def __init__(
        self,
        db: Database,
        max_failures: int = 10,
        window_s: float = 900.0,
        ip_max_failures: int | None = None,
    ) -> None:
        self.db = db
        self.max_failures, self.window_s = max_failures, window_s
        self.ip_max_failures = ip_max_failures or 5 * max_failures

    @staticmethod
    def login_keys(client: str, username: str) -> list[str]:
        name = username.strip().lower()
        return [f"ip+user:{client}\x00{name}", f"ip:{client}"]

    def _limit(self, key: str) -> int:
        return self.ip_max_failures if key.startswith("ip:") else self.max_failures

    def _locked(self, s: Session, keys: list[str]) -> list[str]:
        """The keys' hashes, each key's advisory lock held (PostgreSQL), in sorted order."""
        hashed = [_hash(k) for k in keys]
        for h in sorted(set(hashed)):
            advisory_lock(s, LOGIN_THROTTLE, _lock_key(h))
        return hashed

    def _wait(self, s: Session, key: str, hashed: str, at: datetime, pending: bool) -> int:
        """Seconds before ``key`` may try again (0: now); ``pending`` counts attempts still
        being checked."""
        since = at - timedelta(seconds=self.window_s)
        failed_at = s.scalars(
            select(LoginAttempt.at)
            .where(
                LoginAttempt.key_sha256 == hashed,
                LoginAttempt.at > since,
                LoginAttempt.pending.is_(False),
            )
            .order_by(LoginAttempt.at)
        ).all()
        in_flight: int | None = 0
        if pending:
            in_flight = s.scalar(
                select(func.count())
                .select_from(LoginAttempt)
                .where(
                    LoginAttempt.key_sha256 == hashed,
                    LoginAttempt.pending.is_(True),
                    LoginAttempt.at > at - timedelta(seconds=PENDING_TTL_S),
                )
            )
        limit = self._limit(key)
        if len(failed_at) + (in_flight or 0) < limit:
            return 0
        if len(failed_at) < limit:
            return 1  # only attempts in flight fill the budget: they end in a moment
        oldest = failed_at[len(failed_at) - limit]
        oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=UTC)  # SQLite drops it
        return int(self.window_s - (at - oldest).total_seconds()) + 1

    def _purge(self, s: Session, at: datetime) -> None:
        """Rows that no longer count for anybody (older than the window and the pending TTL)."""
        horizon = at - timedelta(seconds=max(self.window_s, PENDING_TTL_S))
        s.execute(delete(LoginAttempt).where(LoginAttempt.at < horizon))

    def begin(self, keys: list[str], now: float | None = None) -> int:
        """Reserve one attempt on every key, atomically; returns 0 when reserved, else the
        seconds to wait (nothing reserved). Always pair a 0 with ``finish``."""
        at = _at(now)

        def attempt() -> int:
            with self.db.session() as s:
                hashed = self._locked(s, keys)
                self._purge(s, at)
                wait = max(
                    self._wait(s, k, h, at, pending=True) for k, h in zip(keys, hashed, strict=True)
                )
                if wait:
                    return wait
                s.add_all(LoginAttempt(key_sha256=h, at=at, pending=True) for h in hashed)
                return 0

        return retry_transient(attempt)

    def finish(self, keys: list[str], *, failed: bool, now: float | None = None) -> None:
        """End an attempt reserved by ``begin``: a failure is counted, a success clears the
        address+username budget."""
        at = _at(now)

        def attempt() -> None:
            with self.db.session() as s:
                hashed = self._locked(s, keys)
                for h in hashed:
                    row = s.scalar(
                        select(LoginAttempt.id)
                        .where(LoginAttempt.key_sha256 == h, LoginAttempt.pending.is_(True))
                        .order_by(LoginAttempt.id)
                        .limit(1)
                    )
                    if row is None:  # purged as stale: the outcome still counts
                        if failed:
                            s.add(LoginAttempt(key_sha256=h, at=at, pending=False))
                        continue
                    if failed:
                        s.execute(
                            update(LoginAttempt)
                            .where(LoginAttempt.id == row)
                            .values(pending=False, at=at)
                        )
                    else:
                        s.execute(delete(LoginAttempt).where(LoginAttempt.id == row))
                if not failed:
                    s.execute(delete(LoginAttempt).where(LoginAttempt.key_sha256 == hashed[0]))

        retry_transient(attempt)

    def retry_after(self, keys: list[str], now: float | None = None) -> int:
        """Seconds to wait before trying again, 0 when allowed."""
        at = _at(now)
        with self.db.read_session() as s:
            return max((self._wait(s, k, _hash(k), at, pending=False) for k in keys), default=0)

    def failed(self, keys: list[str], now: float | None = None) -> None:
        at = _at(now)
        with self.db.session() as s:
            self._purge(s, at)
            s.add_all(LoginAttempt(key_sha256=_hash(k), at=at, pending=False) for k in keys)

    def succeeded(self, keys: list[str]) -> None:
        with self.db.session() as s:
            s.execute(delete(LoginAttempt).where(LoginAttempt.key_sha256.in_(map(_hash, keys))))

    @staticmethod
    def address_keys(address: str, username: str | None = None) -> list[str]:
        """Every key that budgets ``address``: sign-in across usernames, sign-up, and with
        ``username`` that pair's own budget. The pair keys of other usernames cannot be found
        from the address alone (only hashes are stored); each holds only its own account at
        this address, and is lifted by naming that account."""
        keys = [f"ip:{address}", f"join:{address}"]
        if username is not None:
            keys.insert(0, LoginRateLimiter.login_keys(address, username)[0])
        return keys

    def lift(self, keys: list[str]) -> int:
        """Forget the counted and pending attempts of ``keys`` (an administrator lifting a
        lock-out, e.g. a ward behind one NAT address that reached the per-address budget);
        returns how many rows were removed."""
        with self.db.session() as s:
            hashed = self._locked(s, keys)
            return _removed(s, delete(LoginAttempt).where(LoginAttempt.key_sha256.in_(hashed)))

    def clear(self) -> int:
        """Forget every counted attempt (``user unthrottle --all``; tests); rows removed."""
        with self.db.session() as s:
            return _removed(s, delete(LoginAttempt))
