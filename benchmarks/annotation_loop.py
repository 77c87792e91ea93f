"""Closed-loop load generator for the annotator loop of a running cxrlabel server (loopback only).

Each simulated annotator has its own account and API token and its own HTTP client (keep-alive,
up to 6 connections like a browser tab; ``--client raw``, the default, is a small httptools-based
client, benchmarks/_rawhttp.py, that costs the shared CPU far less than ``--client httpx``).
Untimed warm-up: it joins the job (``GET /me``) and passes the quiz (the client reads
test-question answers from the database: it is a benchmark client, not a browser). Then,
together, every annotator repeats until ``--seconds`` have passed:

1. ``GET /api/jobs/{job}/pages/next``           -> a page of ``items_per_page`` images
2. ``GET <image_url>`` for every item            -> the renditions (signed URLs), in parallel
3. (``--think-ms``)                              -> optional pause, "looking at the images":
                                                   uniform in 0.5-1.5 x think, and each
                                                   annotator starts at a random point of one
                                                   think time, so that people do not all click
                                                   at once (a constant pause kept the closed
                                                   loop in lock-step bursts)
4. ``POST /api/jobs/{job}/pages/{id}/submit``   -> one answer per image (test questions right,
                                                   work images random, 74 % PNEUMONIA)

Figures: loops/s, judgments/s (every stored answer; a page of 10 = 10 judgments, 1 of them a
hidden test question, so work judgments/s is also given), p50/p95/p99 per call and per loop,
errors by kind, client CPU, load average; with ``--server-pid`` also the server's CPU and RSS
(whole process tree: uvicorn workers included). Afterwards the database is checked: stored
judgments == acknowledged (``saved`` of every 200 submit), no image above its judgment target,
and ``trusted_judgments`` == untainted work judgments on every image.

Bounded: every worker stops at the deadline, after ``--max-loops`` loops, or after 20
consecutive errors; each request times out after ``--request-timeout`` s; the whole run has a
hard cap. Refuses any URL that does not resolve to a loopback address.

    python benchmarks/annotation_loop.py --url http://127.0.0.1:8765 --data-dir /tmp/lb \
        --annotators 8 --seconds 30 --json
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import random
import resource
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import and_, func, select

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _loop_setup import (
    JOB_NAME,
    count_images_over_target,
    create_annotators,
    database_url,
    gold_answers,
    reference_answers,
    server_secret_key,
    spec_changes,
    untainted_work_counts,
)
from _rawhttp import RawClient, RawHTTPError, RawTimeout

from cxrlabel.jobstore import spec_from_job_row
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import AnnotatorState, Image, ImageStatus, Job, Judgment, User
from cxrlabel.vocab import AnnotatorStatus

MAX_CONSECUTIVE_ERRORS = 20
WARMUP_LIMIT_S = 180.0
PNEUMONIA_SHARE = 0.74
HONEST_ACCURACY = 0.9  # --spammers: the other clients answer the reference label this often


# --- safety --------------------------------------------------------------------------------------


def require_loopback(url: str) -> str:
    """The URL, if its host resolves only to loopback addresses; else SystemExit."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SystemExit(f"refusing {url!r}: need http://127.0.0.1:PORT or http://localhost:PORT")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 80, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise SystemExit(f"refusing {url!r}: cannot resolve host ({exc})") from None
    addresses = {info[4][0] for info in infos}
    if not addresses or not all(ipaddress.ip_address(a).is_loopback for a in addresses):
        raise SystemExit(
            f"refusing {url!r}: load is only generated against loopback "
            f"(resolves to {sorted(addresses)})"
        )
    return url.rstrip("/")


# --- statistics ----------------------------------------------------------------------------------


def percentile(sorted_ms: list[float], p: float) -> float | None:
    """Nearest-rank percentile (as the Label Studio benchmark computes it)."""
    if not sorted_ms:
        return None
    rank = max(1, min(len(sorted_ms), round(p / 100.0 * len(sorted_ms) + 0.5)))
    return round(sorted_ms[rank - 1], 2)


def summary(samples: list[float]) -> dict[str, Any]:
    s = sorted(samples)
    return {
        "count": len(s),
        "p50_ms": percentile(s, 50),
        "p95_ms": percentile(s, 95),
        "p99_ms": percentile(s, 99),
        "mean_ms": round(sum(s) / len(s), 2) if s else None,
        "max_ms": round(s[-1], 2) if s else None,
    }


@dataclass
class Stats:
    latency: dict[str, list[float]] = field(
        default_factory=lambda: {"next": [], "image": [], "submit": [], "loop": []}
    )
    errors: Counter = field(default_factory=Counter)
    loops: int = 0
    judgments_acked: int = 0  # 'saved' of every successful submit in the timed phase
    work_acked: int = 0
    items_completed: int = 0  # items of the pages whose submit was acknowledged (timed phase)
    warmup_acked: int = 0  # quiz pages (before the clock starts)
    image_bytes: int = 0
    stopped: Counter = field(default_factory=Counter)  # why workers stopped


# --- one annotator -------------------------------------------------------------------------------


class Annotator:
    def __init__(
        self,
        index: int,
        client: Any,
        job: str,
        gold: dict[str, str],
        stats: Stats,
        args: argparse.Namespace,
        reference: dict[str, str] | None = None,
    ) -> None:
        self.index, self.client, self.job, self.gold = index, client, job, gold
        self.stats, self.args = stats, args
        self.rng = random.Random(index)
        # --spammers N: the first N answer work at random; the others answer the reference
        # label (a benchmark client reads it from the database) with HONEST_ACCURACY.
        self.reference = None if index < args.spammers else reference
        self.consecutive_errors = 0

    def _error(self, kind: str) -> None:
        self.stats.errors[kind] += 1
        self.consecutive_errors += 1

    async def _call(self, name: str, method: str, url: str, timed: bool, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            r = await self.client.request(method, url, **kw)
        except (httpx.TimeoutException, RawTimeout):
            self._error(f"{name}:timeout")
            return None
        except (httpx.HTTPError, RawHTTPError) as exc:
            self._error(f"{name}:{type(exc).__name__}")
            return None
        ms = (time.perf_counter() - t0) * 1000.0
        if r.status_code != 200:
            self._error(f"{name}:http_{r.status_code}")
            return None
        if timed:
            self.stats.latency[name].append(ms)
        self.consecutive_errors = 0
        return r

    def _answers(self, page: dict) -> list[dict]:
        out = []
        for item in page["items"]:
            pid = item["image_public_id"]
            answer = self.gold.get(pid) or self._work_answer(pid)
            certainty = "definitely" if self.rng.random() < 0.7 else "probably"
            out.append(
                {
                    "image_public_id": pid,
                    "answer": answer,
                    "certainty": certainty,
                    "quality_flag": None,
                }
            )
        return out

    def _work_answer(self, pid: str) -> str:
        truth = self.reference.get(pid) if self.reference else None
        if truth is None:
            return "PNEUMONIA" if self.rng.random() < PNEUMONIA_SHARE else "NORMAL"
        if self.rng.random() < HONEST_ACCURACY:
            return truth
        return "NORMAL" if truth == "PNEUMONIA" else "PNEUMONIA"

    async def _submit(self, page: dict, timed: bool) -> dict | None:
        body = {
            "client_submission_id": page["client_submission_id"],
            "answers": self._answers(page),
        }
        r = await self._call(
            "submit",
            "POST",
            f"/api/jobs/{self.job}/pages/{page['page_id']}/submit",
            timed,
            json=body,
        )
        return r.json() if r is not None else None

    async def warm_up(self) -> bool:
        """Join and pass the quiz (untimed). True when the annotator is active."""
        if await self._call("me", "GET", f"/api/jobs/{self.job}/me", False) is None:
            return False
        for _ in range(10):
            r = await self._call("next", "GET", f"/api/jobs/{self.job}/pages/next", False)
            if r is None:
                return False
            body = r.json()
            page = body["page"]
            if page is None:  # say why, or a failed warm-up is a bare count
                self.stats.errors[f"warmup_no_page:{body.get('reason')}"] += 1
                return False
            if page["kind"] != "quiz":
                return True
            result = await self._submit(page, False)
            if result is None:
                return False
            self.stats.warmup_acked += int(result["saved"])
            if result.get("quiz_passed") is False:
                self.stats.errors["quiz_failed"] += 1
                return False
        self.stats.errors["warmup_quiz_pages_exhausted"] += 1
        return False

    async def _fetch_image(self, url: str) -> None:
        r = await self._call("image", "GET", url, True)
        if r is not None:
            if not r.content:
                self._error("image:empty")
            self.stats.image_bytes += len(r.content)

    async def run(self, deadline: float) -> None:
        """Loop until the deadline (a loop already started is finished)."""
        if self.args.think_ms:  # people do not start at the same instant
            await asyncio.sleep(self.args.think_ms / 1000.0 * self.rng.random())
        while time.perf_counter() < deadline:
            if self.consecutive_errors >= MAX_CONSECUTIVE_ERRORS:
                self.stats.stopped["too_many_errors"] += 1
                return
            if self.stats.loops >= self.args.max_loops:
                self.stats.stopped["max_loops"] += 1
                return
            t0 = time.perf_counter()
            r = await self._call("next", "GET", f"/api/jobs/{self.job}/pages/next", True)
            if r is None:
                continue
            body = r.json()
            page = body["page"]
            if page is None:
                self.stats.stopped[f"no_page:{body.get('reason')}"] += 1
                return
            await asyncio.gather(*(self._fetch_image(i["image_url"]) for i in page["items"]))
            if self.args.think_ms:
                await asyncio.sleep(self.args.think_ms / 1000.0 * self.rng.uniform(0.5, 1.5))
            result = await self._submit(page, True)
            if result is None:
                continue
            if result.get("replayed"):
                self._error("submit:unexpected_replay")
                continue
            self.stats.loops += 1
            self.stats.items_completed += len(page["items"])
            self.stats.judgments_acked += int(result["saved"])
            self.stats.work_acked += int(result["saved"]) - int(result["gold_seen"])
            self.stats.latency["loop"].append((time.perf_counter() - t0) * 1000.0)
        self.stats.stopped["deadline"] += 1


# --- server sampling (/proc) ---------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """pid and all its descendants (uvicorn's worker processes)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _cpu_and_rss(pid: int) -> tuple[float, float]:
    """(CPU seconds, RSS MiB) summed over the process tree."""
    tick = os.sysconf("SC_CLK_TCK")
    cpu = rss = 0.0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / tick
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1]) / 1024.0
        except (OSError, IndexError, ValueError):
            continue
    return cpu, rss


class ServerSampler:
    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.rss_peak = 0.0
        self.rss_idle: float | None = None
        self.cpu0 = 0.0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self.pid is None:
            return
        self.cpu0, self.rss_idle = _cpu_and_rss(self.pid)
        self._task = asyncio.get_running_loop().create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            self.rss_peak = max(self.rss_peak, _cpu_and_rss(self.pid)[1])
            await asyncio.sleep(0.5)

    def stop(self, elapsed: float) -> dict[str, Any] | None:
        if self.pid is None:
            return None
        if self._task:
            self._task.cancel()
        cpu, rss = _cpu_and_rss(self.pid)
        used = cpu - self.cpu0
        return {
            "pid": self.pid,
            "processes": len(_tree(self.pid)),
            "cpu_s": round(used, 2),
            "avg_cores": round(used / elapsed, 2) if elapsed else None,
            "rss_before_mb": round(self.rss_idle or 0.0, 1),
            "rss_peak_mb": round(max(self.rss_peak, rss), 1),
            "rss_after_mb": round(rss, 1),
        }


# --- verification --------------------------------------------------------------------------------


def removed_by_group(
    db: Database, job_name: str, usernames: list[str], spammers: int
) -> dict[str, int]:
    """How many of the spammers (the first ``spammers`` accounts) and of the honest clients
    quality control removed during the run."""
    with db.session() as s:
        job_id = s.scalar(select(Job.id).where(Job.name == job_name))
        removed = set(
            s.scalars(
                select(User.username)
                .join(AnnotatorState, AnnotatorState.user_id == User.id)
                .where(
                    AnnotatorState.job_id == job_id,
                    AnnotatorState.status == AnnotatorStatus.REMOVED,
                    User.username.in_(usernames),
                )
            )
        )
    return {
        "spammers": sum(u in removed for u in usernames[:spammers]),
        "honest": sum(u in removed for u in usernames[spammers:]),
    }


def verify(db: Database, job_name: str, usernames: list[str], acked: int) -> dict[str, Any]:
    """Stored == acknowledged for this run's annotators; no image over its target."""
    with db.session() as s:
        job = s.scalar(select(Job).where(Job.name == job_name))
        spec = spec_from_job_row(job)
        user_ids = select(User.id).where(User.username.in_(usernames))
        stored = int(
            s.scalar(
                select(func.count(Judgment.id)).where(
                    Judgment.job_id == job.id, Judgment.user_id.in_(user_ids)
                )
            )
            or 0
        )
        over_target = count_images_over_target(s, job.id)
        work = untainted_work_counts(job.id)
        over_max = int(
            s.scalar(select(func.count()).select_from(work).where(work.c.n > spec.judgments.max))
            or 0
        )
        count_mismatch = int(
            s.scalar(
                select(func.count(Image.id))
                .select_from(Image)
                .outerjoin(work, work.c.image_id == Image.id)
                .where(
                    and_(
                        Image.job_id == job.id,
                        Image.status != ImageStatus.GOLD,
                        func.coalesce(work.c.n, 0) != Image.trusted_judgments,
                    )
                )
            )
            or 0
        )
        tainted = int(
            s.scalar(
                select(func.count(Judgment.id)).where(
                    Judgment.job_id == job.id,
                    Judgment.user_id.in_(user_ids),
                    Judgment.tainted.is_(True),
                )
            )
            or 0
        )
        inactive = int(
            s.scalar(
                select(func.count())
                .select_from(User)
                .where(User.username.in_(usernames), User.active.is_(False))
            )
            or 0
        )
    ok = stored == acked and over_target == 0 and over_max == 0 and count_mismatch == 0
    return {
        "stored_judgments": stored,
        "acknowledged_judgments": acked,
        "images_over_target": over_target,
        "images_over_max": over_max,
        "trusted_count_mismatches": count_mismatch,
        "tainted_judgments": tainted,
        "inactive_users": inactive,
        "ok": ok,
    }


# --- main ----------------------------------------------------------------------------------------


def _client(args: argparse.Namespace, token: str) -> Any:
    """One client per annotator, up to 6 keep-alive connections (a browser tab)."""
    headers = {"Authorization": f"Bearer {token}"}
    if args.client == "httpx":
        return httpx.AsyncClient(
            base_url=args.url,
            timeout=httpx.Timeout(args.request_timeout),
            headers=headers,
            limits=httpx.Limits(max_connections=6, max_keepalive_connections=6),
        )
    return RawClient(args.url, headers=headers, timeout=args.request_timeout, max_connections=6)


async def _load(
    args: argparse.Namespace,
    tokens: list[str],
    gold: dict[str, str],
    stats: Stats,
    reference: dict[str, str] | None = None,
) -> dict[str, Any]:
    clients = [_client(args, t) for t in tokens]
    workers = [
        Annotator(i, c, args.job, gold, stats, args, reference) for i, c in enumerate(clients)
    ]
    sampler = ServerSampler(args.server_pid)
    try:
        t_warm = time.perf_counter()
        ready = await asyncio.wait_for(
            asyncio.gather(*(w.warm_up() for w in workers)), WARMUP_LIMIT_S
        )
        warm_s = time.perf_counter() - t_warm
        active = [w for w, ok in zip(workers, ready, strict=True) if ok]
        stats.errors.update(
            {"warmup_failed": len(workers) - len(active)} if len(active) < len(workers) else {}
        )
        for w in active:
            w.consecutive_errors = 0
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        load0 = os.getloadavg()
        sampler.start()
        start = time.perf_counter()
        deadline = start + args.seconds
        hard_cap = args.seconds + 2 * args.request_timeout + 30
        await asyncio.wait_for(asyncio.gather(*(w.run(deadline) for w in active)), hard_cap)
        elapsed = time.perf_counter() - start
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        server = sampler.stop(elapsed)
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    client_cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    return {
        "elapsed_s": round(elapsed, 2),
        "warmup_s": round(warm_s, 2),
        "annotators_active": len(active),
        "client_cpu_s": round(client_cpu, 2),
        "loadavg_start": [round(x, 2) for x in load0],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "server": server,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="http://127.0.0.1:PORT (loopback only)")
    ap.add_argument("--annotators", "-c", type=int, default=8)
    ap.add_argument("--seconds", "-d", type=float, default=30.0)
    ap.add_argument(
        "--think-ms",
        type=float,
        default=0.0,
        help="mean pause before each submit (uniform 0.5-1.5x; staggered start)",
    )
    ap.add_argument("--data-dir", type=Path, help="the server's data dir (SQLite DB inside)")
    ap.add_argument("--db", help="database URL (PostgreSQL; default: SQLite in --data-dir)")
    ap.add_argument("--job", default=JOB_NAME)
    ap.add_argument("--prefix", default=None, help="account name prefix [default: per run]")
    ap.add_argument("--server-pid", type=int, default=None, help="sample CPU/RSS of this tree")
    ap.add_argument("--request-timeout", type=float, default=30.0)
    ap.add_argument("--max-loops", type=int, default=1_000_000)
    ap.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default="raw",
        help="HTTP client: raw (httptools, cheap: benchmarks/_rawhttp.py) or httpx",
    )
    ap.add_argument(
        "--spammers",
        type=int,
        default=0,
        help="the first N annotators answer work at random, the others answer the reference "
        f"label {HONEST_ACCURACY:.0%} of the time (a job prepared with _loop_setup.py --harm: "
        "quality control removes the spammers during the load)",
    )
    ap.add_argument("--label", default="", help="free text stored in the JSON")
    ap.add_argument("--json", action="store_true", help="print one JSON line on stdout")
    ap.add_argument("--json-out", type=Path, help="append the JSON line to this file")
    args = ap.parse_args(argv)
    if not 1 <= args.annotators <= 1024:
        ap.error("--annotators must be 1..1024")
    if not 0 < args.seconds <= 600:
        ap.error("--seconds must be in (0, 600]")
    if not (args.db or args.data_dir):
        ap.error("give --data-dir (SQLite) or --db so the results can be checked in the DB")
    if server_secret_key(args.data_dir) is None:
        ap.error(
            "--db without --data-dir: annotators see images under per-user aliases keyed by the "
            "server's secret key, so the client cannot find the test questions' answers; give "
            "the server's --data-dir (its secret_key file) or set CXRLABEL_SECRET_KEY as the "
            "server has it"
        )
    args.url = require_loopback(args.url)
    return args


def _run_loop(coro: Any) -> Any:
    """asyncio.run on uvloop when installed (it comes with uvicorn[standard]): less client CPU."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def run(args: argparse.Namespace) -> dict[str, Any]:
    url = database_url(args.data_dir, args.db)
    db = Database(url)
    try:
        prefix = args.prefix or f"lb{int(time.time()) % 10**6}-{os.getpid() % 1000}"
        accounts = create_annotators(db, args.annotators, prefix)
        gold = gold_answers(db, args.job, args.data_dir)
        reference = reference_answers(db, args.job, args.data_dir) if args.spammers else None
        with db.session() as s:
            job = s.scalar(select(Job).where(Job.name == args.job))
            items_per_page = spec_from_job_row(job).pages.items_per_page
        stats = Stats()
        run_info = _run_loop(_load(args, [t for _u, t in accounts], gold, stats, reference))
        usernames = [u for u, _t in accounts]
        run_info["removed"] = removed_by_group(db, args.job, usernames, args.spammers)
        checked = verify(db, args.job, usernames, stats.judgments_acked + stats.warmup_acked)
        # A submit the client gave up on (timeout) may still have been stored by the server:
        # then stored exceeds acknowledged by whole pages. That is not a loss, but not "ok".
        checked["submit_timeouts"] = stats.errors.get("submit:timeout", 0)
        checked["stored_minus_acked"] = (
            checked["stored_judgments"] - checked["acknowledged_judgments"]
        )
    finally:
        db.dispose()
    elapsed = run_info["elapsed_s"] or 1e-9
    errors = sum(stats.errors.values())
    out = {
        "bench": "annotation-loop",
        "target": "cxrlabel",
        "label": args.label,
        "url": args.url,
        "db": "sqlite" if url.startswith("sqlite") else "postgresql",
        "annotators": args.annotators,
        "think_ms": args.think_ms,
        "client": args.client,
        "duration_target_s": args.seconds,
        **run_info,
        "items_per_page": items_per_page,
        "spec_changes": spec_changes(harm=args.spammers > 0),
        "spammers": args.spammers,
        "loops_completed": stats.loops,
        # Pages near the end of a job hold fewer than items_per_page items: count what was served.
        "items_completed": stats.items_completed,
        "judgments_acknowledged": stats.judgments_acked,
        "loops_per_s": round(stats.loops / elapsed, 2),
        "judgments_per_s": round(stats.judgments_acked / elapsed, 1),
        "work_judgments_per_s": round(stats.work_acked / elapsed, 1),
        "requests_per_s": round(
            sum(len(v) for k, v in stats.latency.items() if k != "loop") / elapsed, 1
        ),
        "image_mb_per_s": round(stats.image_bytes / elapsed / 1e6, 2),
        "latency": {k: summary(v) for k, v in stats.latency.items()},
        "errors": {"total": errors, "by_kind": dict(stats.errors)},
        "stopped": dict(stats.stopped),
        "verify": checked,
        "ok": errors == 0 and checked["ok"],
    }
    return out


def _print_human(r: dict[str, Any]) -> None:
    lat = r["latency"]

    def p(name: str) -> str:
        s = lat[name]
        return f"{s['p50_ms']}/{s['p95_ms']}/{s['p99_ms']} ms"

    srv = r.get("server") or {}
    print(
        f"cxrlabel annotation loop: {r['annotators']} annotators, {r['elapsed_s']} s, "
        f"load avg {r['loadavg_start'][0]} -> {r['loadavg_end'][0]}\n"
        f"  loops/s {r['loops_per_s']}  judgments/s {r['judgments_per_s']} "
        f"(work {r['work_judgments_per_s']})  requests/s {r['requests_per_s']}\n"
        f"  p50/p95/p99  next {p('next')}  image {p('image')}  submit {p('submit')}  "
        f"loop {p('loop')}\n"
        f"  errors {r['errors']}  stopped {r['stopped']}\n"
        f"  verify {r['verify']}\n"
        f"  server cores {srv.get('avg_cores')}  RSS idle {srv.get('rss_before_mb')} MB "
        f"peak {srv.get('rss_peak_mb')} MB  client CPU {r['client_cpu_s']} s",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    _print_human(result)
    line = json.dumps(result, separators=(",", ":"))
    if args.json:
        print(line, flush=True)
    if args.json_out:
        with args.json_out.open("a") as fh:
            fh.write(line + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
