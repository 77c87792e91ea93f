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
from contextvars import ContextVar
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

# Set while ``retry_transient`` runs an attempt again after a ``LockEscalation`` or a deadlock:
# that attempt grades its page holding the job's quality lock exclusively (``job_lock_alone``).
_ALONE: ContextVar[bool] = ContextVar("cxrlabel_job_lock_alone", default=False)
# Set while ``retry_transient`` runs any attempt: only such a transaction can be run again.
_RERUNNABLE: ContextVar[bool] = ContextVar("cxrlabel_rerunnable", default=False)


class LockEscalation(Exception):
    """A page's grading needs rows outside the ones it locked in the lock order (a removal
    re-evaluates every image of the removed annotator) while other pages of the job may be
    graded side by side. Taking them now could deadlock; instead the transaction is rolled
    back and ``retry_transient`` runs it again with the job's quality lock held exclusively,
    so nothing else of the job is being graded while it locks them."""


def job_lock_alone() -> bool:
    """Whether this attempt should take the job's quality lock exclusively (see ``_ALONE``)."""
    return _ALONE.get()


def can_escalate() -> bool:
    """Whether raising ``LockEscalation`` gets this transaction run again (it runs inside
    ``retry_transient``, as the web app's and the simulator's submits do, not yet alone).
    A caller's own bare transaction cannot be: there rows are locked out of order, as before,
    and PostgreSQL fails one side of a rare deadlock."""
    return _RERUNNABLE.get() and not _ALONE.get()


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
    transaction guarantees; a short random pause lets the transaction that won go first.
    After a ``LockEscalation`` or a deadlock the next attempts grade alone (``job_lock_alone``):
    under CI load, pages that re-ran side by side deadlocked again, eight times in a row."""
    alone, rerunnable = None, _RERUNNABLE.set(True)
    try:
        for number in range(1, attempts + 1):
            try:
                return attempt()
            except LockEscalation:
                if _ALONE.get() or number == attempts:
                    raise  # an attempt holding the job lock alone never needs to escalate
            except DBAPIError as exc:
                if number == attempts or not is_transient(exc):
                    raise
                time.sleep(random.uniform(0, 0.005 * number))
            if alone is None:
                alone = _ALONE.set(True)
    finally:
        if alone is not None:
            _ALONE.reset(alone)
        _RERUNNABLE.reset(rerunnable)
    raise AssertionError("unreachable")  # pragma: no cover
