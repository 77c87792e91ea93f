"""The job store: a job's stored spec, parsed once per version, for the CLI, the web and quality.

A job row keeps the TOML text of its spec and the text's SHA-256. ``spec_of`` parses the text
once per (job name, digest) and keeps the result, so the web app's every request, the quality
commands and the CLI share one parse; editing the job file (``ensure_job``) changes the digest,
which is a new cache entry. No Typer, Rich or web imports here: ``context.get_job`` turns the
errors into CLI failures and ``web.deps.job_and_spec`` into a 404.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from cxrlabel.jobspec import JobSpec, JobSpecError, load_job, parse_job, resolve_job_path
from cxrlabel.storage.models import Job, utcnow

_spec_cache: dict[tuple[str, str], JobSpec] = {}
_spec_lock = threading.Lock()


def spec_from_job_row(job: Job) -> JobSpec:
    """Parse a job row's stored spec (uncached: ``spec_of`` is the cached way)."""
    return parse_job(job.spec_toml, f"job {job.name} (stored)", _job_base_dir(job.name))


def _job_base_dir(name: str) -> Path:
    try:
        return resolve_job_path(name).parent
    except JobSpecError:
        return Path(".")


def spec_of(job: Job) -> JobSpec:
    """The parsed spec of a job row, parsed once per (job name, text digest).

    The digest is computed from the row's text, not read from ``spec_sha256``: a simulation
    sweep rewrites a copy's spec text in place (``sim.sweep``), and hashing a few kilobytes
    costs microseconds against the milliseconds of a parse."""
    digest = hashlib.sha256(job.spec_toml.encode()).hexdigest()
    return cached_spec(job.name, digest, lambda: job)


def cached_spec(name: str, sha: str, load_row: Callable[[], Job]) -> JobSpec:
    """The parsed spec of job ``name`` whose text has digest ``sha``; ``load_row`` is called
    (for the text) only on a cache miss, so a caller holding just the name and the stored digest
    reads no more (the web app's per-page path). The name is part of the key because relative
    paths in a spec resolve against its job's folder."""
    key = (name, sha)
    with _spec_lock:
        spec = _spec_cache.get(key)
    if spec is None:
        spec = spec_from_job_row(load_row())
        with _spec_lock:
            _spec_cache[key] = spec
    return spec


def ensure_job(session: Session, spec_path: Path) -> tuple[Job, JobSpec]:
    """Create the job from its file, or update the stored spec when the file changed."""
    spec = load_job(spec_path)
    text = spec_path.read_text(encoding="utf-8")
    digest = hashlib.sha256(text.encode()).hexdigest()
    job = session.scalar(select(Job).where(Job.name == spec.name))
    if job is None:
        job = Job(name=spec.name, spec_toml=text, spec_sha256=digest)
        session.add(job)
        session.flush()
    elif job.spec_sha256 != digest:
        job.spec_toml, job.spec_sha256, job.updated_at = text, digest, utcnow()
    return job, spec


def find_job(session: Session, name: str) -> Job | None:
    """A stored job by name, or None."""
    return session.scalar(select(Job).where(Job.name == name))


def job_names(session: Session) -> list[str]:
    return list(session.scalars(select(Job.name)).all())
