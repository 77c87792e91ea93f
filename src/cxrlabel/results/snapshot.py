"""The QA figures and numbers of a job, computed once per job version and shared by requests.

Computing them reads every judgment of the job and draws eight matplotlib figures: seconds on a
5,000-image job (benchmarks/dashboards.py; most of it is matplotlib's layout and SVG writer).
The admin dashboard page, its 60 s refresh and the QA report download all read this snapshot
instead of recomputing per request.

**Job version.** Every write that changes what the QA report shows adds a row to the job's
audit log in the same transaction (page submissions, the engine's decisions, expert labels,
gold changes, contests, removals, held images); ingest adds images. So
``(last audit id of the job, the job's rows among the latest ids, images in the job, spec
hash)`` changes whenever the report's inputs do (also when a transaction that took an earlier
id commits after a later one: PostgreSQL), and costs three index look-ups, with no extra write
on the annotation path.

**Staleness, stated.** While a crowd works the version changes with every page, so a snapshot
is recomputed at most once per ``min_interval`` seconds (default 60, the dashboard's refresh
period): until then requests get the previous snapshot, whose "generated at" time says how old
it is. A snapshot is also recomputed after ``max_age`` seconds even if the version did not
change, which bounds the staleness after a write that bypasses the audit log (``quality replay
--fix``, hand-made SQL). The web routes pass a read-session factory: an outdated snapshot is
then served at once while one background thread computes its successor (stale while
revalidating), so only a job's first request in a process waits; others arriving meanwhile
wait for that one computation instead of starting their own. ``cxrlabel serve`` also computes
every job's first snapshot in the background as it starts (``warm``), so even the first
dashboard request of a process normally finds one.

The cache lives in the serving process (each ``serve --workers`` process keeps its own) and
holds the latest snapshot of each job. ``cxrlabel report qa`` and the export datasheet do not
use it: they compute from the stored state of the moment.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cxrlabel.jobspec import JobSpec
from cxrlabel.results.qa import QAData, collect_qa, qa_summary
from cxrlabel.results.qa_figures import QAFigure, qa_figures
from cxrlabel.storage.models import AuditEvent, Image, Job

JobVersion = tuple[int, int, int, str]
# Audit ids below the job's largest by more than this are taken to be committed: a late commit
# would need this many audit rows written by others while its transaction was open.
LATE_COMMIT_WINDOW = 10_000
log = logging.getLogger(__name__)


def job_version(session: Session, job: Job) -> JobVersion:
    """Changes whenever an input of the QA report changes (see the module docstring)."""
    last_event = int(
        session.scalar(select(func.max(AuditEvent.id)).where(AuditEvent.job_id == job.id)) or 0
    )
    # PostgreSQL hands out ids when rows are inserted, not when they commit: a page graded in
    # a transaction that took id n and commits after one that took n + 1 leaves the largest id
    # unchanged, and the snapshot taken in between would be served as current for max_age.
    # Rows that commit late are recent, so the count of the job's rows among the latest ids
    # moves when they do (an index range scan of at most LATE_COMMIT_WINDOW entries).
    recent = session.scalar(
        select(func.count(AuditEvent.id)).where(
            AuditEvent.job_id == job.id, AuditEvent.id > last_event - LATE_COMMIT_WINDOW
        )
    )
    images = session.scalar(select(func.count(Image.id)).where(Image.job_id == job.id))
    return last_event, int(recent or 0), int(images or 0), job.spec_sha256


@dataclass(frozen=True)
class QASnapshot:
    qa_job_id: int
    version: JobVersion
    computed_at: float  # the cache's clock (monotonic seconds)
    qa: QAData
    summary: dict[str, Any]
    figures: list[QAFigure]


def compute_snapshot(
    session: Session, job: Job, spec: JobSpec, version: JobVersion, computed_at: float
) -> QASnapshot:
    qa = collect_qa(session, job, spec)
    summary = qa_summary(qa)
    return QASnapshot(job.id, version, computed_at, qa, summary, qa_figures(qa, summary))


class QASnapshots:
    """The latest snapshot of each job, recomputed by the rules in the module docstring."""

    def __init__(
        self,
        min_interval: float = 60.0,
        max_age: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_interval = min_interval
        self.max_age = max_age
        self.clock = clock
        self._latest: dict[int, QASnapshot] = {}
        self._locks: dict[int, threading.Lock] = {}
        self._guard = threading.Lock()
        self._workers: list[threading.Thread] = []

    def get(
        self,
        session: Session,
        job: Job,
        spec: JobSpec,
        reopen: Callable[[], AbstractContextManager[Session]] | None = None,
    ) -> QASnapshot:
        """The job's snapshot. With ``reopen`` (a read-session factory) an outdated snapshot is
        returned at once and its successor computed in a background thread, so only the first
        request of a job in this process waits for the computation."""
        version = job_version(session, job)
        latest = self._latest.get(job.id)
        if latest is not None and self._usable(latest, version):
            return latest
        lock = self._lock_of(job.id)
        if latest is not None:
            if lock.acquire(blocking=False):  # else: another thread is computing the next one
                if reopen is None:
                    return self._compute_holding(lock, session, job, spec, version)
                self._start_refresh(lock, reopen, job.id, spec)
            return latest
        with lock:
            current = self._latest.get(job.id)
            if current is not None and self._usable(current, version):
                return current  # computed by the request we waited for
            return self._store(compute_snapshot(session, job, spec, version, self.clock()))

    def warm(
        self,
        reopen: Callable[[], AbstractContextManager[Session]],
        jobs: list[tuple[int, JobSpec]],
    ) -> None:
        """Compute the snapshots of ``jobs`` (id, spec) in one background thread, so that the
        first dashboard request after the server starts finds one instead of waiting seconds
        for it (a request arriving meanwhile waits for that job's computation only)."""
        ready = threading.Event()

        def compute_all() -> None:
            for job_id, spec in jobs:
                lock = self._lock_of(job_id)
                with lock:
                    if job_id == jobs[0][0]:
                        ready.set()  # the first lock is held: requests now wait for us
                    self._refresh_locked(reopen, job_id, spec)
            ready.set()

        worker = threading.Thread(target=compute_all, name="qa-snapshot-warm", daemon=True)
        self._workers = [w for w in self._workers if w.is_alive()] + [worker]
        worker.start()
        ready.wait(5.0)

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the background computations started so far (tests, shutdown)."""
        for worker in list(self._workers):
            worker.join(timeout)

    def _compute_holding(
        self, lock: threading.Lock, session: Session, job: Job, spec: JobSpec, version: JobVersion
    ) -> QASnapshot:
        try:
            return self._store(compute_snapshot(session, job, spec, version, self.clock()))
        finally:
            lock.release()

    def _start_refresh(
        self,
        lock: threading.Lock,
        reopen: Callable[[], AbstractContextManager[Session]],
        job_id: int,
        spec: JobSpec,
    ) -> None:
        def refresh() -> None:
            try:
                self._refresh_locked(reopen, job_id, spec)
            finally:
                lock.release()

        worker = threading.Thread(target=refresh, name=f"qa-snapshot-{job_id}", daemon=True)
        self._workers = [w for w in self._workers if w.is_alive()] + [worker]
        worker.start()

    def _refresh_locked(
        self, reopen: Callable[[], AbstractContextManager[Session]], job_id: int, spec: JobSpec
    ) -> None:
        """Compute and store a job's snapshot; the caller holds the job's lock."""
        try:
            with reopen() as session:
                job = session.get_one(Job, job_id)
                version = job_version(session, job)
                self._store(compute_snapshot(session, job, spec, version, self.clock()))
        except Exception:  # the previous snapshot stays; the next request tries again
            log.exception("QA snapshot of job %s failed", job_id)

    def _store(self, snapshot: QASnapshot) -> QASnapshot:
        self._latest[snapshot.qa_job_id] = snapshot
        return snapshot

    def _usable(self, snapshot: QASnapshot, version: JobVersion) -> bool:
        age = self.clock() - snapshot.computed_at
        if snapshot.version == version:
            return age < self.max_age
        return age < self.min_interval

    def _lock_of(self, job_id: int) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(job_id, threading.Lock())
