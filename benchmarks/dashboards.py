"""Admin dashboard and QA report response times, against a baseline commit in the same run.

Needs a worked job: an installation's data dir (SQLite) where a simulated crowd has labelled a
job, e.g. the full 5,206-image Kermany job::

    CXRLABEL_DATA_DIR=/tmp/dash nice -n 10 cxrlabel simulate \\
        --images /work/shared/data/kermany/images --crowd realistic --seed 7 \\
        --into-job pneumonia-pediatric

Each tree (the baseline commit checked out into a temporary git worktree, and this tree) gets
its own copy of that database (SQLite backup API; the benchmark adds an admin with an API
token), and serves the real app in-process (``TestClient``, the full ASGI stack) in a fresh
interpreter with ``PYTHONPATH`` = the tree's ``src``. Timed routes, ``--repeat`` requests each:

- ``/admin`` (job progress), ``/admin/jobs/<job>/dashboard`` (the QA dashboard page),
  its ``?partial=1`` refresh, and ``/admin/jobs/<job>/reports/qa.html`` (the QA report);
- the refresh again, "job changing": before each request one audit row is added to the job (as
  every page submission does), so the job's version moves between requests.

A tree whose ``create_app`` takes ``warm_dashboards`` is started as ``cxrlabel serve`` starts it:
it computes the job's QA snapshot at start-up, which the probe waits for and reports as the
"warm-up at start-up" row, before timing any route. The first request of each route is shown
apart ("first", mean over rounds): it is where a cache, if any, is cold (the QA snapshot is
shared by the dashboard, its refresh and the report, so without the warm-up only the
dashboard's first request computes it). p50/p95 are over all requests, first
included. Trees run one after the other, ``--rounds`` times, in alternating order, so a load
drift on a shared machine hits both alike.

Usage::

    python benchmarks/dashboards.py --data-dir /tmp/dash [--baseline main] [--repeat 20]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Runs in the tree's interpreter: serve the app, time each route, print one JSON line.
PROBE = """
import json, sys, time
from pathlib import Path
from fastapi.testclient import TestClient
from sqlalchemy import select
from cxrlabel.annotate.accounts import issue_api_token
from cxrlabel.config import Settings
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import AuditEvent, Job, User
from cxrlabel.web.app import create_app

data_dir, job_name, repeat = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
db = Database(f"sqlite:///{data_dir}/cxrlabel.sqlite3")
with db.session() as s:
    user = s.scalar(select(User).where(User.username == "bench-admin"))
    if user is None:
        user = User(username="bench-admin", password_hash="x", role="admin")
        s.add(user)
        s.flush()
    token = issue_api_token(s, user)
headers = {"Authorization": f"Bearer {token}"}
routes = ["/admin", f"/admin/jobs/{job_name}/dashboard",
          f"/admin/jobs/{job_name}/dashboard?partial=1",
          f"/admin/jobs/{job_name}/reports/qa.html"]
out = {}
# As `cxrlabel serve` builds it: trees whose create_app can warm the QA snapshots at start-up
# do so, and the probe waits for that before timing (reported apart as "warm-up").
import inspect
warms = "warm_dashboards" in inspect.signature(create_app).parameters
app = create_app(Settings(data_dir=data_dir), db=db, **({"warm_dashboards": True} if warms else {}))
start = time.perf_counter()
with TestClient(app) as client:
    if warms:
        app.state.qa_snapshots.wait()
        out["warm-up at start-up"] = [time.perf_counter() - start]
    client.get("/healthz")
    for route in routes:
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            r = client.get(route, headers=headers)
            times.append(time.perf_counter() - start)
            if r.status_code != 200:
                raise SystemExit(f"{route}: HTTP {r.status_code} {r.text[:300]}")
        out[route] = times
    # The job changing under the dashboard, as while a crowd works: before each request one
    # audit row for the job (every page submission adds at least one), so its version moves.
    with db.session() as s:
        job_id = s.scalar(select(Job.id).where(Job.name == job_name))
    route = f"/admin/jobs/{job_name}/dashboard?partial=1"
    times = []
    for _ in range(repeat):
        with db.session() as s:
            s.add(AuditEvent(job_id=job_id, action="benchmark_touch", payload={}))
        start = time.perf_counter()
        r = client.get(route, headers=headers)
        times.append(time.perf_counter() - start)
        if r.status_code != 200:
            raise SystemExit(f"{route}: HTTP {r.status_code} {r.text[:300]}")
    out[route + " (job changing)"] = times
print("RESULT " + json.dumps(out))
"""


def copy_database(src_dir: Path, dst_dir: Path) -> None:
    dst_dir.mkdir(parents=True)
    src = sqlite3.connect(f"file:{src_dir / 'cxrlabel.sqlite3'}?mode=ro", uri=True)
    dst = sqlite3.connect(dst_dir / "cxrlabel.sqlite3")
    with dst:
        src.backup(dst)
    src.close()
    dst.close()
    secrets = src_dir / "secrets"
    if secrets.is_dir():
        subprocess.run(["cp", "-a", str(secrets), str(dst_dir / "secrets")], check=True)


def run_tree(src: Path, data_dir: Path, job: str, repeat: int) -> dict[str, list[float]]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(data_dir), job, str(repeat)],
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin", "CXRLABEL_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{src}: probe failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    result: dict[str, list[float]] = json.loads(lines[-1].removeprefix("RESULT "))
    return result


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        required=True,
        help="Data dir of an installation with a worked job (SQLite).",
    )
    parser.add_argument("--job", default="pneumonia-pediatric")
    parser.add_argument("--baseline", default="main", help="Commit to compare against.")
    parser.add_argument("--repeat", type=int, default=10, help="Requests per route and round.")
    parser.add_argument("--rounds", type=int, default=2, help="Rounds (tree order alternates).")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dashboards-") as tmp:
        tmp_dir = Path(tmp)
        base = tmp_dir / "baseline"
        subprocess.run(
            [
                "git",
                "-C",
                str(REPO),
                "worktree",
                "add",
                "--detach",
                "--quiet",
                str(base),
                args.baseline,
            ],
            check=True,
        )
        try:
            trees = {f"baseline {args.baseline}": base / "src", "this tree": REPO / "src"}
            results: dict[tuple[str, str], list[float]] = {}
            firsts: dict[tuple[str, str], list[float]] = {}
            for round_no in range(args.rounds):
                order = list(trees.items())
                for tree, src in order if round_no == 0 else order[::-1]:
                    data = tmp_dir / f"data-{round_no}-{tree.replace(' ', '_')}"
                    copy_database(args.data_dir, data)
                    for route, times in run_tree(src, data, args.job, args.repeat).items():
                        results.setdefault((route, tree), []).extend(times)
                        firsts.setdefault((route, tree), []).append(times[0])
        finally:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], check=False
            )
    print_table(results, firsts, list(trees), args)


def print_table(results: dict, firsts: dict, trees: list[str], args: argparse.Namespace) -> None:
    print(
        f"dashboards on job {args.job!r} ({args.data_dir}), {args.rounds * args.repeat} "
        f"requests a route and tree ({args.rounds} rounds), ms"
    )
    print(f"{'route':48} {'tree':16} {'first':>8} {'p50':>8} {'p95':>8} {'max':>8}")
    for route in dict.fromkeys(r for r, _ in results):
        p50s = {}
        for tree in trees:
            if (route, tree) not in results:  # the warm-up row: only trees that warm
                continue
            times = [t * 1000 for t in results[(route, tree)]]
            first = statistics.mean(firsts[(route, tree)]) * 1000
            p50s[tree] = percentile(times, 0.5)
            print(
                f"{route[-48:]:48} {tree[:16]:16} {first:8.0f} {p50s[tree]:8.1f} "
                f"{percentile(times, 0.95):8.1f} {max(times):8.1f}"
            )
        if len(p50s) == len(trees):
            base, new = (p50s[t] for t in trees)
            print(f"{'':48} {'p50 speed-up':16} {base / new:8.1f}x")


if __name__ == "__main__":
    main()
