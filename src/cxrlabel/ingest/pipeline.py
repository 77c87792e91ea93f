"""Ingest orchestration: find files -> decode (worker processes) -> dedup -> files -> DB rows.

Write order, chosen so that a crash or kill at any point leaves no half-written row or file:

1. Rendition and thumbnail are written to a temporary name and renamed (all-or-nothing files).
2. Image rows, issues and run counters of a batch are committed in one transaction, only after
   the batch's files exist. A failure while writing one image's files removes that image's
   files and records a failure; a failed commit removes the whole batch's files.
3. A kill between (1) and (2) leaves files that no row names; the next run deletes them before
   starting (under a per-job lock, so it never deletes files of a run still in progress).

Re-running is idempotent: a file whose bytes are already ingested is "already present" (same
path) or an "exact duplicate" (another path), without being decoded again.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from cxrlabel.ingest.decode import DEFAULT_LIMITS, DecodeError, DecodeLimits, read_limited
from cxrlabel.ingest.dedup import NEAR_DUP_MAX_MAD, NEAR_DUP_MAX_PHASH, signature_from_file
from cxrlabel.ingest.deid import load_or_create_salt
from cxrlabel.ingest.patient import choose_patient_id, patient_id_from_name
from cxrlabel.ingest.phash import PhashIndex, to_hex
from cxrlabel.ingest.renditions import (
    job_dir,
    relative_paths,
    remove_quietly,
    sweep_orphans,
    write_atomic,
)
from cxrlabel.ingest.sources import SourceItem, discover
from cxrlabel.ingest.worker import Processed, mean_abs_diff, process_safely
from cxrlabel.jobspec import JobSpec
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import (
    Image,
    ImageStatus,
    IngestIssue,
    IngestRun,
    Job,
    new_public_id,
    utcnow,
)

BATCH_SIZE = 100
IN_FLIGHT_PER_WORKER = 8

FAILED, EXACT, NEAR = "failed", "exact_duplicate", "near_duplicate"


class IngestBusy(RuntimeError):
    """Another ingest holds this job's lock."""


@dataclass(frozen=True)
class IssueRecord:
    source_path: str
    kind: str  # failed | exact_duplicate | near_duplicate
    reason: str
    duplicate_of_path: str | None = None
    distance: int | None = None


@dataclass
class IngestSummary:
    run_id: int
    source: str
    total: int = 0
    ingested: int = 0
    already_present: int = 0
    issues: list[IssueRecord] = field(default_factory=list)
    burned_in: list[str] = field(default_factory=list)  # source paths, admin-only
    swept_orphans: int = 0
    seconds: float = 0.0

    def of_kind(self, kind: str) -> list[IssueRecord]:
        return [i for i in self.issues if i.kind == kind]

    @property
    def failed(self) -> list[IssueRecord]:
        return self.of_kind(FAILED)

    def nothing_usable(self) -> str | None:
        """Why nothing usable came in (no file, or every file failed), else None: a script or
        a demo must not carry on as if the images were there."""
        if self.total == 0:
            return f"no image files found in {self.source!r}"
        if len(self.failed) == self.total:
            return f"no image could be read from {self.source!r}: all {self.total} file(s) failed"
        return None

    @property
    def exact_duplicates(self) -> list[IssueRecord]:
        return self.of_kind(EXACT)

    @property
    def near_duplicates(self) -> list[IssueRecord]:
        return self.of_kind(NEAR)


@dataclass
class _Known:
    """An accepted image (earlier run or this one), as needed for duplicate checks."""

    source_path: str
    label: str | None
    thumb_path: str
    image_id: int | None = None
    row: Image | None = None  # set while the row is not yet committed
    sig: np.ndarray | None = None

    @property
    def id(self) -> int | None:
        return self.row.id if self.row is not None else self.image_id


@dataclass
class _Pending:
    issue: IssueRecord
    target: _Known | None = None


@dataclass
class _Batch:
    images: list[tuple[Image, _Known]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    issues: list[_Pending] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)  # paths whose old issue is now fixed

    def __len__(self) -> int:
        return len(self.images) + len(self.issues)


@dataclass(frozen=True)
class _Early:
    """An item settled in the main process, before any decoding."""

    kind: str  # failed | already_present | exact_duplicate
    reason: str = ""
    target: _Known | None = None


def ingest(
    db: Database,
    data_dir: Path,
    job: Job,
    spec: JobSpec,
    source: Path | str,
    *,
    workers: int = 0,
    limits: DecodeLimits = DEFAULT_LIMITS,
    console: Console | None = None,
    batch_size: int = BATCH_SIZE,
    items: list[SourceItem] | None = None,
) -> IngestSummary:
    """Ingest a folder, CSV manifest or file into ``job``. Raises SourceError for a bad PATH.

    ``workers`` > 0 decodes in that many worker processes; 0 decodes inline. ``console``
    shows a progress bar when given. ``items`` replaces discovering ``source`` (a DICOMweb
    server lists its own, see ingest/dicomweb.py); ``source`` then only names the run.
    """
    started = time.perf_counter()
    if items is None:
        items = discover(Path(source), spec.label_values)
    data_dir = Path(data_dir)
    salt = load_or_create_salt(data_dir)
    with _job_lock(data_dir, job.name):
        ingestor = _Ingestor(db, data_dir, job, spec, str(source), batch_size)
        summary = ingestor.summary
        summary.total = len(items)
        try:
            with _progress(console, len(items)) as advance:
                for item, sha, outcome in _outcomes(
                    items, ingestor.precheck, salt, limits, workers
                ):
                    ingestor.handle(item, sha, outcome)
                    advance()
            ingestor.commit(finished=True)
        finally:
            ingestor.discard_uncommitted()
    db.refresh_statistics("images")
    summary.seconds = time.perf_counter() - started
    return summary


# --- ordered, bounded parallel processing ------------------------------------------------------

Outcome = _Early | Processed | str


def _outcomes(
    items: list[SourceItem],
    precheck: Callable[[SourceItem], tuple[str, bytes | _Early]],
    salt: bytes,
    limits: DecodeLimits,
    workers: int,
) -> Iterator[tuple[SourceItem, str, Outcome]]:
    """(item, sha256, outcome) in input order; at most a few items in flight at once."""
    if workers <= 0:
        for item in items:
            sha, data = precheck(item)
            yield (
                item,
                sha,
                data if isinstance(data, _Early) else process_safely(data, salt, limits),
            )
        return
    window: deque[tuple[SourceItem, str, Future | _Early]] = deque()
    # spawn, not fork: the main process has threads (Rich refresh) and open DB connections.
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        try:
            for item in items:
                sha, data = precheck(item)
                job = (
                    data
                    if isinstance(data, _Early)
                    else pool.submit(process_safely, data, salt, limits)
                )
                window.append((item, sha, job))
                while len(window) >= workers * IN_FLIGHT_PER_WORKER:
                    yield _resolve(window.popleft())
            while window:
                yield _resolve(window.popleft())
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _resolve(entry: tuple[SourceItem, str, Future | _Early]) -> tuple[SourceItem, str, Outcome]:
    item, sha, job = entry
    if isinstance(job, _Early):
        return item, sha, job
    try:
        return item, sha, job.result()
    except Exception as exc:  # a crashed worker fails this file, not the run
        return item, sha, f"internal error while processing ({type(exc).__name__})"


# --- the main-process side: dedup, files, rows ------------------------------------------------


class _Ingestor:
    def __init__(
        self, db: Database, data_dir: Path, job: Job, spec: JobSpec, source: str, batch_size: int
    ) -> None:
        self.db, self.data_dir, self.spec, self.batch_size = db, data_dir, spec, batch_size
        self.job_id, self.job_name = job.id, job.name
        self.by_sha: dict[str, _Known] = {}
        self.by_pixels: dict[str, _Known] = {}
        self.index = PhashIndex()
        self.knowns: list[_Known] = []
        self.old_issue_paths: set[str] = set()
        self.batch = _Batch()
        self.made_dirs: set[Path] = set()
        public_ids = self._load_state()
        swept = sweep_orphans(data_dir, job.name, public_ids)
        with db.session() as s:
            run = IngestRun(job_id=self.job_id, source=source)
            s.add(run)
            s.flush()
            run_id = run.id
        self.summary = IngestSummary(run_id=run_id, source=source, swept_orphans=len(swept))

    def _load_state(self) -> set[str]:
        with self.db.session() as s:
            rows = s.execute(
                select(
                    Image.id,
                    Image.public_id,
                    Image.sha256,
                    Image.pixel_sha256,
                    Image.phash,
                    Image.source_path,
                    Image.reference_label,
                    Image.thumb_path,
                )
                .where(Image.job_id == self.job_id)
                .order_by(Image.id)
            ).all()
            self.old_issue_paths = set(
                s.scalars(select(IngestIssue.source_path).where(IngestIssue.job_id == self.job_id))
            )
            # What a remote source need not send again: accepted images and duplicates
            # (failures are retried: they may have been a network error).
            self.pulled = {r.source_path for r in rows} | set(
                s.scalars(
                    select(IngestIssue.source_path).where(
                        IngestIssue.job_id == self.job_id, IngestIssue.kind != FAILED
                    )
                )
            )
        for r in rows:
            known = _Known(r.source_path, r.reference_label, r.thumb_path, image_id=r.id)
            self._remember(known, r.sha256, r.pixel_sha256, int(r.phash, 16))
        return {r.public_id for r in rows}

    def _remember(self, known: _Known, sha: str, pixel_sha: str, phash_value: int) -> None:
        self.by_sha.setdefault(sha, known)
        self.by_pixels.setdefault(pixel_sha, known)
        self.index.add(len(self.knowns), phash_value)
        self.knowns.append(known)

    # Step 1, before decoding: cheap checks that also make a re-run fast.
    def precheck(self, item: SourceItem) -> tuple[str, bytes | _Early]:
        if item.problem:
            return "", _Early(FAILED, item.problem)
        if item.fetch is not None and item.path in self.pulled:
            return "", _Early("already_present")  # never downloaded again
        try:
            data = item.fetch() if item.fetch is not None else read_limited(item.path)
        except DecodeError as exc:
            return "", _Early(FAILED, exc.reason)
        sha = hashlib.sha256(data).hexdigest()
        known = self.by_sha.get(sha)
        if known is not None:
            return sha, self._identical(item, known)
        return sha, data

    def _identical(self, item: SourceItem, known: _Known) -> _Early:
        if known.source_path == item.path:
            return _Early("already_present")
        return _Early(EXACT, "byte-identical to an ingested image", known)

    # Step 2, in input order: decide and write.
    def handle(self, item: SourceItem, sha: str, outcome: Outcome) -> None:
        if isinstance(outcome, _Early):
            if outcome.kind == "already_present":
                self.summary.already_present += 1
            else:
                self._issue(item.path, outcome.kind, outcome.reason, outcome.target)
        elif isinstance(outcome, str):
            self._issue(item.path, FAILED, outcome)
        elif sha in self.by_sha:  # the same bytes earlier in this run
            early = self._identical(item, self.by_sha[sha])
            self.handle(item, sha, early)
            return
        elif outcome.pixel_sha256 in self.by_pixels:
            self._issue(
                item.path,
                EXACT,
                "same pixels as an ingested image (lossless re-encode)",
                self.by_pixels[outcome.pixel_sha256],
            )
        else:
            near = self._near_duplicate(outcome)
            if near is not None:
                known, distance, mad = near
                self._issue(
                    item.path, NEAR, _near_reason(distance, mad, item.label, known), known, distance
                )
            else:
                self._accept(item, sha, outcome)
        if len(self.batch) >= self.batch_size:
            self.commit()

    def _near_duplicate(self, p: Processed) -> tuple[_Known, int, float] | None:
        for position, distance in self.index.within(p.phash, NEAR_DUP_MAX_PHASH):
            known = self.knowns[position]
            sig = self._signature(known)
            if sig is None:
                continue
            mad = mean_abs_diff(sig, p.signature)
            if mad <= NEAR_DUP_MAX_MAD:
                return known, distance, mad
        return None

    def _signature(self, known: _Known) -> np.ndarray | None:
        if known.sig is None:  # an image from an earlier run: use its thumbnail
            try:
                known.sig = signature_from_file(self.data_dir / known.thumb_path)
            except OSError:
                return None
        return known.sig

    def _accept(self, item: SourceItem, sha: str, p: Processed) -> None:
        public_id = new_public_id()
        rel_rendition, rel_thumb = relative_paths(self.job_name, public_id)
        files = [self.data_dir / rel_rendition, self.data_dir / rel_thumb]
        try:
            self._ensure_dir(files[0].parent)
            write_atomic(files[0], p.rendition, make_dirs=False)
            write_atomic(files[1], p.thumb, make_dirs=False)
        except Exception as exc:  # disk full, read-only dir...
            remove_quietly(files)
            self._issue(item.path, FAILED, f"could not write rendition ({_brief(exc)})")
            return
        self.batch.files.extend(files)  # from now on a failure before commit removes them
        patient = choose_patient_id(
            manifest_id=item.patient_id,
            dicom_pseudonym=p.dicom_pseudonym,
            name_id=patient_id_from_name(item.path, self.spec.ingest.patient_id_pattern),
        )
        row = Image(
            job_id=self.job_id,
            public_id=public_id,
            source_path=item.path,
            source_format=p.source_format,
            sha256=sha,
            pixel_sha256=p.pixel_sha256,
            phash=to_hex(p.phash),
            width=p.width,
            height=p.height,
            patient_id=patient,
            reference_label=item.label,
            rendition_path=rel_rendition,
            thumb_path=rel_thumb,
            burned_in_annotation=p.burned_in_annotation,
            # Burned-in text may identify the patient: held until an admin has looked.
            status=ImageStatus.HELD if p.burned_in_annotation else ImageStatus.NEEDS_JUDGMENTS,
            judgment_target=self.spec.judgments.min,
            trusted_judgments=0,
        )
        known = _Known(item.path, item.label, rel_thumb, row=row, sig=p.signature)
        self._remember(known, sha, p.pixel_sha256, p.phash)
        self.batch.images.append((row, known))
        if item.path in self.old_issue_paths:
            self.batch.resolved.append(item.path)
        if p.burned_in_annotation:
            self.summary.burned_in.append(item.path)

    def _ensure_dir(self, folder: Path) -> None:
        if folder not in self.made_dirs:  # one mkdir per folder, not per file
            folder.mkdir(parents=True, exist_ok=True)
            self.made_dirs.add(folder)

    def _issue(
        self,
        path: str,
        kind: str,
        reason: str,
        target: _Known | None = None,
        distance: int | None = None,
    ) -> None:
        record = IssueRecord(path, kind, reason, target.source_path if target else None, distance)
        self.summary.issues.append(record)
        self.batch.issues.append(_Pending(record, target))

    # Step 3: one transaction per batch, after the batch's files exist.
    def commit(self, finished: bool = False) -> None:
        batch = self.batch
        try:
            with self.db.session() as s:
                s.add_all([row for row, _ in batch.images])
                s.flush()
                for pending in batch.issues:
                    self._upsert_issue(s, pending)
                if batch.resolved:
                    s.execute(
                        delete(IngestIssue).where(
                            IngestIssue.job_id == self.job_id,
                            IngestIssue.source_path.in_(batch.resolved),
                        )
                    )
                self._update_run(s, finished)
        except BaseException:
            remove_quietly(batch.files)
            self.batch = _Batch()
            raise
        for row, known in batch.images:
            known.image_id, known.row = row.id, None
        self.summary.ingested += len(batch.images)
        self.batch = _Batch()

    def _upsert_issue(self, s: Session, pending: _Pending) -> None:
        record = pending.issue
        duplicate_of = pending.target.id if pending.target else None
        issue = s.scalar(
            select(IngestIssue).where(
                IngestIssue.job_id == self.job_id, IngestIssue.source_path == record.source_path
            )
        )
        if issue is None:
            issue = IngestIssue(job_id=self.job_id, source_path=record.source_path)
            s.add(issue)
        issue.run_id, issue.kind, issue.reason = self.summary.run_id, record.kind, record.reason
        issue.duplicate_of, issue.distance = duplicate_of, record.distance
        issue.created_at = utcnow()

    def _update_run(self, s: Session, finished: bool) -> None:
        run = s.get(IngestRun, self.summary.run_id)
        assert run is not None
        summary, batch = self.summary, self.batch
        run.ingested = summary.ingested + len(batch.images)
        run.already_present = summary.already_present
        run.duplicates = len(summary.exact_duplicates) + len(summary.near_duplicates)
        run.failed = len(summary.failed)
        if finished:
            run.finished_at = utcnow()

    def discard_uncommitted(self) -> None:
        """After an error: files of rows that were never committed must not stay behind."""
        remove_quietly(self.batch.files)
        self.batch = _Batch()


def _near_reason(distance: int, mad: float, label: str | None, known: _Known) -> str:
    reason = (
        f"near duplicate of an ingested image (pHash distance {distance}, "
        f"mean abs. difference {mad:.1f}/255 at 64x64)"
    )
    if label and known.label and label != known.label:
        reason += f"; reference labels differ ({label} vs {known.label})"
    return reason


def _brief(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or (str(exc).splitlines() or [""])[0][:80]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextmanager
def _job_lock(data_dir: Path, job_name: str) -> Iterator[None]:
    folder = data_dir / job_dir(job_name)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".ingest.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IngestBusy(f"another ingest is running for job {job_name!r}") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:6.1f} img/s" if speed else "   ... img/s", style="progress.data.speed")


@contextmanager
def _progress(console: Console | None, total: int) -> Iterator[Callable[[], None]]:
    if console is None:
        yield lambda: None
        return
    columns = (
        TextColumn("ingest"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("ingest", total=total)
        yield lambda: progress.advance(task)
