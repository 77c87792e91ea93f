"""Drive a *running* cxrlabel server over its REST API as many concurrent simulated annotators.

Used by load tests: each simulated annotator is a real user with an API token, working in its
own thread with its own ``httpx.Client``: ``GET /api/jobs/<job>/pages/next``, answer every item
as its persona would, ``POST /api/jobs/<job>/pages/<id>/submit``, repeat. Latencies and errors
are recorded per call.

Safety bounds (this is a load generator): loopback addresses only, at most
``MAX_ANNOTATORS`` annotators, and every run stops at ``time_limit_s``.

The server uses its real clock, so a persona's page time is only simulated when
``time_scale`` > 0 (sleep ``time_scale`` x the persona's page time). With the default 0 pages
come back in milliseconds and the speed trap will (correctly) flag everyone: set
``time_scale`` or a job with ``pages.min_seconds_per_page = 0`` for throughput tests.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlparse

import httpx
import numpy as np
from sqlalchemy import select

from cxrlabel.annotate.accounts import issue_api_token
from cxrlabel.annotate.aliases import Aliases
from cxrlabel.jobspec import JobSpec
from cxrlabel.sim.crowd import CrowdSpec
from cxrlabel.sim.engine import UNUSABLE_PASSWORD, Truth, _ordered_certainties, _Usernames
from cxrlabel.sim.personas import Persona
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import Image, Role, User

MAX_ANNOTATORS = 500
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class HttpAnnotator:
    username: str
    token: str
    persona: Persona
    seed: int
    user_id: int = 0  # the server shows this user images under their own aliases


@dataclass
class HttpStats:
    pages_submitted: int = 0
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # "<status> <code>" -> count
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"next": [], "submit": []})
    stopped_by: Counter[str] = field(default_factory=Counter)  # why each annotator stopped
    wall_seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, kind: str, seconds: float, error: str | None = None) -> None:
        with self._lock:
            self.requests += 1
            self.latencies[kind].append(seconds)
            if error:
                self.errors[error] += 1

    def summary(self) -> dict[str, object]:
        out: dict[str, object] = {
            "pages_submitted": self.pages_submitted,
            "requests": self.requests,
            "errors": dict(self.errors),
            "stopped_by": dict(self.stopped_by),
            "wall_seconds": round(self.wall_seconds, 3),
            "pages_per_second": round(self.pages_submitted / self.wall_seconds, 2)
            if self.wall_seconds
            else None,
        }
        for kind, values in self.latencies.items():
            if values:
                p50, p95, p99 = np.percentile(values, [50, 95, 99])
                out[f"{kind}_ms"] = {
                    "p50": round(p50 * 1000, 1),
                    "p95": round(p95 * 1000, 1),
                    "p99": round(p99 * 1000, 1),
                    "n": len(values),
                }
        return out


def check_loopback(base_url: str) -> None:
    host = urlparse(base_url).hostname
    if host not in LOOPBACK:
        raise ValueError(f"{base_url}: the HTTP driver only talks to loopback addresses")


def create_annotators(db: Database, crowd: CrowdSpec, n: int, seed: int = 0) -> list[HttpAnnotator]:
    """``n`` real annotator accounts (``sim-<persona>-<k>``) with fresh API tokens."""
    if not 1 <= n <= MAX_ANNOTATORS:
        raise ValueError(f"annotators must be between 1 and {MAX_ANNOTATORS}")
    roster = crowd.roster(np.random.default_rng([seed, 31]), n)
    names = _Usernames(db)
    out = []
    with db.session() as session:
        for index, persona in enumerate(roster):
            user = User(
                username=names.next(persona.name),
                password_hash=UNUSABLE_PASSWORD,
                role=Role.ANNOTATOR,
            )
            session.add(user)
            session.flush()
            out.append(
                HttpAnnotator(
                    user.username,
                    issue_api_token(session, user),
                    persona,
                    seed * 100003 + index,
                    user.id,
                )
            )
    return out


def truth_by_public_id(db: Database, job_id: int, truth: Truth) -> Truth:
    """Re-key a ``Truth`` (by image id) by the public ids the API shows."""
    with db.session() as session:
        public = dict(
            session.execute(select(Image.id, Image.public_id).where(Image.job_id == job_id)).all()
        )
    return Truth(
        {public[i]: v for i, v in truth.label.items() if i in public},
        {public[i]: v for i, v in truth.difficulty.items() if i in public},
    )


def truth_for(truth: Truth, aliases: Aliases | None, user_id: int) -> Truth:
    """``truth`` (keyed by public id) re-keyed by the ids one annotator sees: their own
    aliases (``annotate/aliases.py``; the simulator knows the server's key, a browser never
    does)."""
    if aliases is None:
        return truth
    return Truth(
        {aliases.image(pid, user_id): v for pid, v in truth.label.items()},
        {aliases.image(pid, user_id): v for pid, v in truth.difficulty.items()},
    )


def drive(
    base_url: str,
    job: str,
    spec: JobSpec,
    annotators: Sequence[HttpAnnotator],
    truth: Truth,
    *,
    aliases: Aliases | None = None,
    pages_per_annotator: int = 5,
    time_limit_s: float = 60.0,
    time_scale: float = 0.0,
    request_timeout_s: float = 30.0,
) -> HttpStats:
    """Run every annotator concurrently until their pages are done, no work is left, or the
    time limit passes. ``truth`` must be keyed by public id (``truth_by_public_id``);
    ``aliases`` (built from the server's secret key) maps it to what each annotator sees."""
    check_loopback(base_url)
    if len(annotators) > MAX_ANNOTATORS:
        raise ValueError(f"at most {MAX_ANNOTATORS} annotators")
    stats = HttpStats()
    deadline = time.monotonic() + time_limit_s
    started = time.monotonic()
    worker = _Worker(
        base_url.rstrip("/"),
        job,
        spec,
        truth,
        stats,
        deadline,
        pages_per_annotator,
        time_scale,
        request_timeout_s,
        aliases,
    )
    with ThreadPoolExecutor(max_workers=max(1, len(annotators))) as pool:
        list(pool.map(worker.run, annotators))
    stats.wall_seconds = time.monotonic() - started
    return stats


@dataclass
class _Worker:
    base: str
    job: str
    spec: JobSpec
    truth: Truth
    stats: HttpStats
    deadline: float
    pages: int
    time_scale: float
    timeout: float
    aliases: Aliases | None = None

    def run(self, annotator: HttpAnnotator) -> None:
        rng = np.random.default_rng(annotator.seed)
        truth = truth_for(self.truth, self.aliases, annotator.user_id)
        headers = {"Authorization": f"Bearer {annotator.token}"}
        labels, certainties = self.spec.label_values, _ordered_certainties(self.spec)
        work_pages = 0
        with httpx.Client(base_url=self.base, headers=headers, timeout=self.timeout) as client:
            for _ in range(self.pages):
                if time.monotonic() > self.deadline:
                    return self._stop("time_limit")
                page = self._call(client, "next", "GET", f"/api/jobs/{self.job}/pages/next")
                if page is None:
                    return self._stop("error")
                if page.get("page") is None:
                    return self._stop(page.get("reason") or "no_page")
                body = page["page"]
                is_quiz = body["kind"] == "quiz"
                answers = []
                for item in body["items"]:
                    pid = item["image_public_id"]
                    a = annotator.persona.answer(
                        rng,
                        truth.label[pid],
                        truth.difficulty.get(pid, 0.5),
                        labels,
                        certainties,
                        [],
                        pages_done=work_pages,
                        is_quiz=is_quiz,
                    )
                    answers.append(
                        {
                            "image_public_id": pid,
                            "answer": a.answer,
                            "certainty": a.certainty,
                            "quality_flag": None,
                        }
                    )
                if self.time_scale > 0:
                    time.sleep(self.time_scale * annotator.persona.page_seconds(rng, len(answers)))
                result = self._call(
                    client,
                    "submit",
                    "POST",
                    f"/api/jobs/{self.job}/pages/{body['page_id']}/submit",
                    json={"client_submission_id": body["client_submission_id"], "answers": answers},
                )
                if result is None:
                    continue  # e.g. page expired: ask for a new one
                with self.stats._lock:
                    self.stats.pages_submitted += 1
                work_pages += 0 if is_quiz else 1
                if result.get("annotator_status") in ("removed", "disqualified"):
                    return self._stop(result["annotator_status"])
        return self._stop("pages_done")

    def _stop(self, reason: str) -> None:
        with self.stats._lock:
            self.stats.stopped_by[reason] += 1

    def _call(
        self, client: httpx.Client, kind: str, method: str, url: str, json: dict | None = None
    ) -> dict | None:
        started = time.perf_counter()
        try:
            response = client.request(method, url, json=json)
        except httpx.HTTPError as exc:
            self.stats.add(kind, time.perf_counter() - started, f"transport {type(exc).__name__}")
            return None
        elapsed = time.perf_counter() - started
        if response.status_code >= 400:
            code = _error_code(response)
            self.stats.add(kind, elapsed, f"{response.status_code} {code}")
            return None
        self.stats.add(kind, elapsed)
        return response.json()


def _error_code(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", {}).get("code", ""))
    except ValueError:
        return ""
