"""PostgreSQL transaction-level advisory locks, and retrying a transaction that lost a lock race.

On SQLite every write transaction already runs alone (``BEGIN IMMEDIATE`` plus the app's writer
lock, ``storage.db``), so the helpers here do nothing there.

Advisory locks are named by two 32-bit keys: a class (what is locked, below) and the job id.
They live in PostgreSQL's lock manager, not in a table row, so taking one writes nothing (a
shared row lock held by many transactions at once would write a MultiXact into the row each
time).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

# Classes of advisory locks (first key); the second key is the job id.
JOB_QUALITY = 0x43580017  # quality updates of a job: submissions shared, admin commands exclusive
GOLD_BANK = 0x43580018  # the job's gold bank exposure (reveals and retirements)
# Sign-in throttle (web/throttle.py); the second key is a 32-bit hash of the throttle key.
LOGIN_THROTTLE = 0x43580019
# Account creation (annotate/accounts.py, annotate/identities.py), second key 0: "is this
# username free?" and the insert must not interleave with another creation's.
ACCOUNTS = 0x4358001A

_SHARED = text("SELECT pg_advisory_xact_lock_shared(:cls, :key)")
_EXCLUSIVE = text("SELECT pg_advisory_xact_lock(:cls, :key)")

# SQLSTATEs after which the whole transaction may simply be run again: deadlock detected,
# serialization failure. Nothing of the failed attempt was committed.
TRANSIENT_SQLSTATES = frozenset({"40P01", "40001"})
RETRY_ATTEMPTS = 8

T = TypeVar("T")


def is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def advisory_lock(session: Session, cls: int, key: int, *, shared: bool = False) -> None:
    """Take a transaction-level advisory lock (released at commit or rollback); PostgreSQL
    only. Waits for conflicting holders (shared and exclusive conflict, shared ones do not)."""
    if is_postgres(session):
        session.execute(_SHARED if shared else _EXCLUSIVE, {"cls": cls, "key": key})


def is_transient(exc: BaseException) -> bool:
    """A deadlock or serialization failure: the transaction was rolled back and may be rerun."""
    orig = getattr(exc, "orig", None)
    return isinstance(exc, DBAPIError) and getattr(orig, "sqlstate", None) in TRANSIENT_SQLSTATES


def retry_transient(attempt: Callable[[], T], *, attempts: int = RETRY_ATTEMPTS) -> T:
    """Run ``attempt`` (one whole transaction: it opens, commits or rolls back its own session)
    again after a deadlock or serialization failure, so that the client never sees one.

    Only correct for an attempt that commits nothing before it fails, which is what a single
    transaction guarantees; a short random pause lets the transaction that won go first."""
    for number in range(1, attempts + 1):
        try:
            return attempt()
        except DBAPIError as exc:
            if number == attempts or not is_transient(exc):
                raise
            time.sleep(random.uniform(0, 0.005 * number))
    raise AssertionError("unreachable")  # pragma: no cover
