"""Reliability load run: hundreds of annotators with think time against a real server (loopback).

Builds on the performance benchmark's client (``annotation_loop.py``: the same annotator loop,
statistics and database check) and adds what a reliability run needs:

* think time per page drawn from a log-normal (median ``--think-median-s``), and a share of
  annotators (``--no-think-share``) who never pause (scripts, impatient people);
* a share of submits sent twice with the same client id (double click / retry): the second
  must come back ``replayed`` and store nothing;
* a submit that fails on the network (server killed, timeout) is retried with the same client
  id until acknowledged, as the browser does: so "acknowledged" means the client saw a 200;
* stricter checks afterwards: no duplicate judgment, no half-stored page, every acknowledged
  page stored, no image above its target, and the quality state replays to the stored one.

It prepares a fresh data dir (``_loop_setup.prepare_job``), starts ``cxrlabel serve`` itself
(``--workers``; ``--pg`` starts a throwaway PostgreSQL 15 cluster), runs for ``--seconds``,
stops the server and prints per-endpoint p50/p95/p99, throughput and errors.

    python benchmarks/load.py --annotators 200 --seconds 300                 # SQLite, 1 process
    python benchmarks/load.py --annotators 200 --seconds 300 --pg --workers 2  # PostgreSQL

Bounded: ``--seconds`` <= 900, ``--annotators`` <= 512, every request times out, the run has a
hard cap, and the server is only ever bound to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _loop_setup import (  # noqa: E402
    JOB_NAME,
    count_images_over_target,
    create_annotators,
    database_url,
    fresh_data_dir,
    gold_answers,
    parse_run_args,
    prepare_job,
    run_database,
    untainted_work_counts,
)
from annotation_loop import Annotator, Stats, summary  # noqa: E402

from cxrlabel.jobstore import spec_from_job_row  # noqa: E402
from cxrlabel.quality.audit import verify_replay  # noqa: E402
from cxrlabel.storage.db import Database  # noqa: E402
from cxrlabel.storage.models import (  # noqa: E402
    Image,
    Job,
    Judgment,
    Page,
    PageItem,
    Submission,
    User,
)

RETRY_PAUSE_S = 0.5


# --- server ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``cxrlabel serve`` in its own process group (so kill -9 reaches every worker)."""

    def __init__(
        self, data_dir: Path, db_url: str | None, workers: int, port: int, log: Path
    ) -> None:
        self.data_dir, self.db_url, self.workers, self.port = data_dir, db_url, workers, port
        self.log = log
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0) -> None:
        cmd = [sys.executable, "-m", "cxrlabel.cli", "--data-dir", str(self.data_dir)]
        if self.db_url:
            cmd += ["--db", self.db_url]
        cmd += [
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("CXRLABEL_DB", None)
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log}")
            try:
                if httpx.get(f"{self.url}/login", timeout=2).status_code == 200:
                    if self.workers > 1:
                        time.sleep(1.0)  # let every worker finish starting
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"server did not answer within {timeout} s; see {self.log}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (uvicorn's supervisor and its workers)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


# --- the annotator -----------------------------------------------------------------------------


@dataclass
class Ledger:
    """What clients were told: page public id -> judgments saved (from 200 responses)."""

    acked: dict[str, int] = field(default_factory=dict)
    replays_expected: int = 0
    replays_ok: int = 0
    retried_after_error: int = 0


class ReliableAnnotator(Annotator):
    """The performance client's annotator with think time, double submits and retries."""

    def __init__(
        self,
        *args: Any,
        ledger: Ledger,
        think_median_s: float,
        no_think: bool,
        double_submit_share: float,
        **kw: Any,
    ) -> None:
        super().__init__(*args, **kw)
        self.ledger, self.think_median_s, self.no_think = ledger, think_median_s, no_think
        self.double_submit_share = double_submit_share
        self.walk_away: asyncio.Event | None = None  # set: leave now, even mid-page

    def gone(self) -> bool:
        return self.walk_away is not None and self.walk_away.is_set()

    async def warm_up(self) -> bool:
        """Join and pass the quiz, retrying network errors (a keep-alive connection the
        server closed just as a request went out) like a person reloading the page."""
        for attempt in range(6):
            if await super().warm_up():
                self.consecutive_errors = 0
                return True
            await asyncio.sleep(1.0 + attempt)
        return False

    def think_s(self) -> float:
        if self.no_think:
            return 0.0
        return min(120.0, self.rng.lognormvariate(math.log(self.think_median_s), 0.6))

    async def _submit_until_acked(self, page: dict, body: dict, deadline: float) -> dict | None:
        """Retry on network errors and 5xx with the same client id, as the browser does; a
        4xx is final (e.g. 409 page_expired: the page was not stored, nothing to retry)."""
        url = f"/api/jobs/{self.job}/pages/{page['page_id']}/submit"
        tries = 0
        while time.perf_counter() < deadline + 60:
            tries += 1
            t0 = time.perf_counter()
            try:
                r = await self.client.post(url, json=body)
            except httpx.HTTPError as exc:
                self._error(f"submit:{type(exc).__name__}")
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            if r.status_code == 200:
                self.stats.latency["submit"].append((time.perf_counter() - t0) * 1000.0)
                self.consecutive_errors = 0
                if tries > 1:
                    self.ledger.retried_after_error += 1
                return r.json()
            self._error(f"submit:http_{r.status_code}")
            if r.status_code < 500:
                return None
            await asyncio.sleep(RETRY_PAUSE_S)
        return None  # gave up: this page was never acknowledged

    async def run(self, deadline: float) -> None:  # one readable loop
        while time.perf_counter() < deadline and not self.gone():
            if self.consecutive_errors >= 200:
                self.stats.stopped["too_many_errors"] += 1
                return
            t0 = time.perf_counter()
            r = await self._call("next", "GET", f"/api/jobs/{self.job}/pages/next", True)
            if r is None:
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            body = r.json()
            page = body["page"]
            if page is None:
                if body.get("reason") == "no_work_now":
                    await asyncio.sleep(2.0)
                    continue
                self.stats.stopped[f"no_page:{body.get('reason')}"] += 1
                return
            await asyncio.gather(*(self._fetch_image(i["image_url"]) for i in page["items"]))
            pause = self.think_s()
            if pause:
                await asyncio.sleep(min(pause, max(0.0, deadline - time.perf_counter()) + 1))
            if self.gone():
                break  # the page stays reserved until it expires
            submit = {
                "client_submission_id": page["client_submission_id"],
                "answers": self._answers(page),
            }
            result = await self._submit_until_acked(page, submit, deadline)
            if result is None:
                continue
            self.ledger.acked[page["page_id"]] = int(result["saved"])
            if self.rng.random() < self.double_submit_share:
                self.ledger.replays_expected += 1
                again = await self._submit_until_acked(page, submit, deadline)
                if (
                    again is not None
                    and again.get("replayed")
                    and again.get("saved") == result.get("saved")
                ):
                    self.ledger.replays_ok += 1
            self.stats.loops += 1
            self.stats.judgments_acked += int(result["saved"])
            self.stats.work_acked += int(result["saved"]) - int(result["gold_seen"])
            self.stats.latency["loop"].append((time.perf_counter() - t0) * 1000.0)
        self.stats.stopped["walked_away" if self.gone() else "deadline"] += 1


# --- checks ------------------------------------------------------------------------------------


def check_database(
    db: Database, job_name: str, usernames: list[str], ledger: Ledger, warmup_pages: dict[str, int]
) -> dict[str, Any]:
    """Lost, duplicated, half-stored and over-target work, plus a replay of the quality log."""
    acked = {**warmup_pages, **ledger.acked}
    with db.session() as s:
        job = s.scalar(select(Job).where(Job.name == job_name))
        spec = spec_from_job_row(job)
        users = select(User.id).where(User.username.in_(usernames))
        per_page = dict(
            s.execute(
                select(Page.public_id, func.count(Judgment.id))
                .join(Judgment, Judgment.page_id == Page.id)
                .where(Page.job_id == job.id, Page.user_id.in_(users))
                .group_by(Page.public_id)
            ).all()
        )
        items = dict(
            s.execute(
                select(Page.public_id, func.count(PageItem.id))
                .join(PageItem, PageItem.page_id == Page.id)
                .where(
                    Page.job_id == job.id, Page.user_id.in_(users), Page.submitted_at.is_not(None)
                )
                .group_by(Page.public_id)
            ).all()
        )
        submissions = dict(
            s.execute(
                select(Page.public_id, func.count(Submission.id))
                .join(Submission, Submission.page_id == Page.id)
                .where(Page.job_id == job.id, Page.user_id.in_(users))
                .group_by(Page.public_id)
            ).all()
        )
        duplicates = int(
            s.scalar(
                select(func.count()).select_from(
                    select(Judgment.user_id, Judgment.image_id)
                    .where(Judgment.job_id == job.id)
                    .group_by(Judgment.user_id, Judgment.image_id)
                    .having(func.count() > 1)
                    .subquery()
                )
            )
            or 0
        )
        work = untainted_work_counts(job.id)
        over_target = int(
            s.scalar(
                select(func.count())
                .select_from(work)
                .join(Image, Image.id == work.c.image_id)
                .where((work.c.n > Image.judgment_target) | (work.c.n > spec.judgments.max))
            )
            or 0
        )
        over_target_status = count_images_over_target(s, job.id)
        replay = verify_replay(s, job, spec)
    lost = {pid: n for pid, n in acked.items() if per_page.get(pid, 0) != n}
    half = {
        pid: (per_page.get(pid, 0), n)
        for pid, n in items.items()
        if per_page.get(pid, 0) != n or submissions.get(pid, 0) != 1
    }
    unacked = sorted(set(per_page) - set(acked))  # stored, but the client never heard back
    stored = sum(per_page.values())
    out = {
        "acknowledged_pages": len(acked),
        "acknowledged_judgments": sum(acked.values()),
        "stored_judgments": stored,
        "lost_pages": len(lost),
        "lost_judgments": sum(n - per_page.get(pid, 0) for pid, n in lost.items()),
        "stored_not_acknowledged_pages": len(unacked),
        "half_stored_pages": len(half),
        "duplicate_judgments": duplicates,
        "images_over_target": over_target + over_target_status,
        "replay_matched": replay.matched,
        "replay_differences": replay.differences[:5],
        "replay_events": replay.events,
        "double_submits": ledger.replays_expected,
        "double_submits_replayed": ledger.replays_ok,
    }
    out["ok"] = (
        not lost
        and not half
        and duplicates == 0
        and out["images_over_target"] == 0
        and replay.matched
        and ledger.replays_ok == ledger.replays_expected
    )
    return out


# --- the run -----------------------------------------------------------------------------------


@dataclass
class LoadConfig:
    annotators: int = 200
    seconds: float = 300.0
    think_median_s: float = 15.0
    no_think_share: float = 0.1
    double_submit_share: float = 0.05
    request_timeout: float = 60.0
    seed: int = 1


async def drive(
    url: str,
    job: str,
    tokens: list[str],
    gold: dict[str, str],
    cfg: LoadConfig,
    stats: Stats,
    ledger: Ledger,
    *,
    during: Any = None,
) -> dict[str, Any]:
    """Warm up every annotator (quiz), then run the loop for ``cfg.seconds``. ``during`` is an
    optional coroutine function ``(start_time, annotators) -> None`` run alongside (the crash
    run's kill -9)."""
    args = argparse.Namespace(max_loops=10**9, think_ms=0, spammers=0)
    limits = httpx.Limits(max_connections=6, max_keepalive_connections=6)
    clients = [
        httpx.AsyncClient(
            base_url=url,
            timeout=httpx.Timeout(cfg.request_timeout),
            limits=limits,
            headers={"Authorization": f"Bearer {t}"},
        )
        for t in tokens
    ]
    n_fast = round(cfg.no_think_share * len(tokens))
    workers = [
        ReliableAnnotator(
            i,
            c,
            job,
            gold,
            stats,
            args,
            ledger=ledger,
            think_median_s=cfg.think_median_s,
            no_think=i < n_fast,
            double_submit_share=cfg.double_submit_share,
        )
        for i, c in enumerate(clients)
    ]
    try:
        t0 = time.perf_counter()
        ready = await asyncio.wait_for(asyncio.gather(*(w.warm_up() for w in workers)), 600)
        warm = time.perf_counter() - t0
        active = [w for w, ok in zip(workers, ready, strict=True) if ok]
        load0 = os.getloadavg()
        start = time.perf_counter()
        tasks = [w.run(start + cfg.seconds) for w in active]
        if during is not None:
            tasks.append(during(start, active))
        await asyncio.wait_for(asyncio.gather(*tasks), cfg.seconds + 300)
        elapsed = time.perf_counter() - start
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    return {
        "elapsed_s": round(elapsed, 1),
        "warmup_s": round(warm, 1),
        "annotators_active": len(active),
        "annotators_no_think": n_fast,
        "loadavg_start": [round(x, 2) for x in load0],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }


def figures(stats: Stats, info: dict[str, Any]) -> dict[str, Any]:
    elapsed = info["elapsed_s"] or 1e-9
    five_xx = sum(n for k, n in stats.errors.items() if ":http_5" in k)
    return {
        "latency": {k: summary(v) for k, v in stats.latency.items()},
        "throughput": {
            "requests_per_s": round(
                sum(len(v) for k, v in stats.latency.items() if k != "loop") / elapsed, 1
            ),
            "pages_per_s": round(stats.loops / elapsed, 2),
            "judgments_per_s": round(stats.judgments_acked / elapsed, 1),
            "work_judgments_per_s": round(stats.work_acked / elapsed, 1),
            "submits_per_s": round(len(stats.latency["submit"]) / elapsed, 2),
        },
        "errors": dict(stats.errors),
        "http_5xx": five_xx,
        "stopped": dict(stats.stopped),
    }


def prepare(
    data_dir: Path,
    db_url: str | None,
    *,
    images: int,
    gold: int,
    annotators: int,
    spec_edits: dict[str, str] | None = None,
) -> tuple[str, list[str], list[str], dict[str, str]]:
    """A fresh job; returns (database url, usernames, tokens, gold answers)."""
    import hashlib
    import re

    url = database_url(data_dir, db_url)
    db = Database(url)
    try:
        prepare_job(db, data_dir, n_images=images, n_gold=gold, n_files=16)
        if spec_edits:
            with db.session() as s:
                job = s.scalar(select(Job).where(Job.name == JOB_NAME))
                text = job.spec_toml
                for key, value in spec_edits.items():
                    text = re.sub(rf"(?m)^{key} = .*$", f"{key} = {value}", text, count=1)
                job.spec_toml, job.spec_sha256 = text, hashlib.sha256(text.encode()).hexdigest()
        accounts = create_annotators(db, annotators, "rel")
        answers = gold_answers(db, data_dir=data_dir)
    finally:
        db.dispose()
    return url, [u for u, _ in accounts], [t for _, t in accounts], answers


def warmup_pages(db_url: str, usernames: list[str]) -> dict[str, int]:
    """Quiz pages submitted during warm-up (acknowledged before the timed loop started)."""
    db = Database(db_url)
    try:
        with db.session() as s:
            rows = s.execute(
                select(Page.public_id, func.count(Judgment.id))
                .join(Judgment, Judgment.page_id == Page.id)
                .join(User, User.id == Page.user_id)
                .where(User.username.in_(usernames), Page.kind == "quiz")
                .group_by(Page.public_id)
            ).all()
        return dict(rows)
    finally:
        db.dispose()


def run(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = fresh_data_dir(args.data_dir)
    with run_database(args.db, args.pg) as db_url:
        url, usernames, tokens, gold = prepare(
            data_dir, db_url, images=args.images, gold=args.gold, annotators=args.annotators
        )
        server = Server(
            data_dir, db_url, args.workers, args.port or free_port(), data_dir / "server.log"
        )
        server.start()
        cfg = LoadConfig(
            annotators=args.annotators,
            seconds=args.seconds,
            think_median_s=args.think_median_s,
            no_think_share=args.no_think_share,
            double_submit_share=args.double_submit_share,
        )
        stats, ledger = Stats(), Ledger()
        try:
            info = asyncio.run(drive(server.url, JOB_NAME, tokens, gold, cfg, stats, ledger))
        finally:
            server.stop()
        quiz = warmup_pages(url, usernames)
        db = Database(url)
        try:
            checked = check_database(db, JOB_NAME, usernames, ledger, quiz)
        finally:
            db.dispose()
    result = {
        "bench": "reliability-load",
        "db": "postgresql" if db_url else "sqlite",
        "workers": args.workers,
        "annotators": args.annotators,
        "think_median_s": args.think_median_s,
        "no_think_share": args.no_think_share,
        "images": args.images,
        "gold": args.gold,
        **info,
        **figures(stats, info),
        "verify": checked,
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
    }
    result["ok"] = (
        checked["ok"] and result["http_5xx"] == 0 and result["annotators_active"] == args.annotators
    )
    return result


def print_human(r: dict[str, Any]) -> None:
    lines = [
        f"reliability load: {r['annotators']} annotators ({r['annotators_active']} active "
        f"after the quiz, {r['annotators_no_think']} without think time), {r['db']}, "
        f"{r['workers']} worker(s), {r['elapsed_s']} s (warm-up {r['warmup_s']} s)",
        f"  {r['uptime']}",
        "  endpoint   count     p50 ms    p95 ms    p99 ms",
    ]
    for name, s in r["latency"].items():
        lines.append(
            f"  {name:<9}{s['count']:>7}{s['p50_ms'] or 0:>11}{s['p95_ms'] or 0:>10}"
            f"{s['p99_ms'] or 0:>10}"
        )
    lines.append(f"  throughput {r['throughput']}")
    lines.append(f"  errors {r['errors']}  5xx {r['http_5xx']}  stopped {r['stopped']}")
    lines.append(f"  verify {r['verify']}")
    lines.append(f"  OK: {r['ok']}")
    print("\n".join(lines), file=sys.stderr)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--double-submit-share", type=float, default=0.05)
    return parse_run_args(
        ap,
        argv,
        annotators=200,
        seconds=300.0,
        think_median_s=15.0,
        no_think_share=0.1,
        images=20000,
        gold=1500,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print_human(result)
    if args.json_out:
        with args.json_out.open("a") as fh:
            fh.write(json.dumps(result) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
