"""Group commit for SQLite: the write units (page claims, submissions) that queued while the
previous write transaction ran are run by one thread in ONE transaction, one SAVEPOINT per unit.

Why: SQLite has one writer. Run one transaction per request, every unit pays its own
``BEGIN IMMEDIATE``, ``COMMIT`` (WAL frames of every page it touched, shared pages again and
again), the cross-process ``flock`` and, worst on a busy server, one hand-over of the write lock
from thread to thread, each waiting for Python's GIL while holding SQLite's lock
(docs/scaling.md). Here those are paid once per batch.

Leader/follower: a unit is queued; if no thread is leading, its own thread becomes the leader,
takes the write lock (``writer``: the process's lock and the ``flock``), then takes every queued
unit (up to ``max_batch``) and runs them in order on one connection. Threads that queue meanwhile
sleep on their unit's event. After ``COMMIT`` returns the leader wakes the units of its batch
and hands leadership to the first unit still queued (those that arrived while it ran), so a lone
request commits at once and a batch is exactly what piled up during the previous one.

Guarantees:

* **acknowledged = committed**: ``run`` returns (or raises the unit's own error) only after the
  batch's ``COMMIT`` returned; if the commit fails, every unit of the batch gets that error.
* **one failing unit loses only itself**: its savepoint is rolled back, its exception is raised
  in its own thread, the others commit. If SQLite ended the whole transaction (an I/O error,
  a full disk) or rolling back the savepoint fails, the batch is aborted: every unit gets an
  error and nothing of the batch is stored.
* **units are isolated as serial transactions**: each gets a fresh ``Session`` (its own
  identity map) joined to the shared connection through its savepoint, and sees exactly the
  effects of the units before it, as if they had committed: the audit log's order is the order
  the units ran, which is what ``quality replay`` follows.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

T = TypeVar("T")

DEFAULT_MAX_BATCH = 32


class BatchAborted(RuntimeError):
    """The batch this unit ran in was rolled back as a whole: nothing of it is stored."""


@dataclass(eq=False)
class _Unit(Generic[T]):
    work: Callable[[Session], T]
    wake: threading.Event = field(default_factory=threading.Event)
    done: bool = False
    result: Any = None
    error: BaseException | None = None


@dataclass
class GroupCommitStats:
    batches: int = 0
    units: int = 0
    largest_batch: int = 0


class GroupCommitter:
    """Runs write units for a ``Database`` on SQLite (see the module's docstring)."""

    def __init__(
        self,
        engine: Engine,
        writer: Callable[[], AbstractContextManager[None]],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._engine = engine
        self._writer = writer
        self.max_batch = max_batch
        self._mutex = threading.Lock()
        self._queue: deque[_Unit[Any]] = deque()
        self._leading = False
        self._local = threading.local()
        self.stats = GroupCommitStats()

    def run(self, work: Callable[[Session], T]) -> T:
        """Run ``work(session)`` in the next batch; its return value once the batch committed."""
        if getattr(self._local, "in_unit", False):
            raise RuntimeError("a write unit cannot run another write unit inside it")
        unit: _Unit[T] = _Unit(work)
        with self._mutex:
            self._queue.append(unit)
            lead = not self._leading
            self._leading = True
        if not lead:
            unit.wake.wait()  # woken when its batch committed, or to lead the next batch
        if not unit.done:
            self._lead(unit)
        if unit.error is not None:
            raise unit.error
        return unit.result

    def queued(self) -> int:
        """Units waiting for a batch (tests wait for a batch to form with it)."""
        with self._mutex:
            return len(self._queue)

    def _lead(self, own: _Unit[Any]) -> None:
        """Run one batch; ``own`` (this thread's unit) is at the head of the queue."""
        batch: list[_Unit[Any]] = []
        try:
            with self._writer():  # queued units keep piling up while this waits
                with self._mutex:
                    while self._queue and len(batch) < self.max_batch:
                        batch.append(self._queue.popleft())
                self._run_batch(batch)
        except BaseException as exc:  # the lock could not be taken, or an interrupt
            if not batch:  # failed before taking its batch: only its own unit leaves the queue
                with self._mutex:
                    self._queue.remove(own)
                batch = [own]
            _fail_unfinished(batch, exc)
            raise
        finally:
            self._hand_over(batch)

    def _hand_over(self, batch: list[_Unit[Any]]) -> None:
        with self._mutex:
            successor = self._queue[0] if self._queue else None
            self._leading = successor is not None
        if successor is not None:
            successor.wake.set()  # first: the write lock is free, the next batch can start
        for unit in batch:
            unit.done = True
            unit.wake.set()

    def _run_batch(self, batch: list[_Unit[Any]]) -> None:
        try:
            with self._engine.connect() as conn, conn.begin():  # BEGIN IMMEDIATE ... COMMIT
                for unit in batch:
                    self._run_unit(conn, unit)
        except Exception as exc:  # the commit failed or the batch was aborted
            _fail_unfinished(batch, exc)
        else:
            self.stats.batches += 1
            self.stats.units += len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))

    def _run_unit(self, conn: Connection, unit: _Unit[Any]) -> None:
        self._local.in_unit = True
        try:
            with Session(
                bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False
            ) as session:
                savepoint = session.begin()
                try:
                    unit.result = unit.work(session)
                    savepoint.commit()  # flush + RELEASE SAVEPOINT
                except Exception as exc:  # this unit's own failure
                    unit.error = exc
                    unit.result = None
                    savepoint.rollback()  # ROLLBACK TO SAVEPOINT; if this fails: batch aborted
        finally:
            self._local.in_unit = False
        if unit.error is not None and not _still_in_transaction(conn):
            # SQLite ended the whole transaction (I/O error, full disk): the units before
            # this one are gone too, so none of the batch may be acknowledged.
            raise BatchAborted("the database rolled back the whole batch") from unit.error


def _still_in_transaction(conn: Connection) -> bool:
    dbapi = conn.connection.dbapi_connection
    return bool(getattr(dbapi, "in_transaction", True))


def _fail_unfinished(batch: list[_Unit[Any]], exc: BaseException) -> None:
    """Every unit of a batch that did not commit gets an error (its own one if it failed)."""
    for unit in batch:
        unit.result = None
        if unit.error is None:  # one exception object per unit: each is raised in its thread
            unit.error = BatchAborted(f"the batch was not stored: {exc!r}")
            unit.error.__cause__ = exc
