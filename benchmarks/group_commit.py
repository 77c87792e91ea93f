"""SQLite group commit on vs off, in the same run: the annotation loop against a fresh server
per row, `CXRLABEL_SQLITE_GROUP_COMMIT=0` (one transaction per `next`/`submit`, the baseline)
and on (default batch of 32), alternating which goes first.

    python benchmarks/_loop_setup.py --data-dir /tmp/gc-bench/template      # once, not timed
    python benchmarks/group_commit.py --template /tmp/gc-bench/template \\
        --rows 8:0:20 32:0:20 256:20000:60 384:20000:60 512:20000:60

A row is ``annotators:think_ms:seconds`` (``think_ms`` 0: closed loop, clients never pause;
20000: human pace, a pause of 10-30 s before each submit, staggered start). Every run: a copy of
the template's database, `cxrlabel serve --no-access-log` on a free loopback port, then
benchmarks/annotation_loop.py (next -> 10 images -> submit), then the checks: stored =
acknowledged, no image above its target, and `quality replay` equal to the stored state.
Prints a markdown table (with the load average at the start of each run: the machine is
shared) and appends every run's JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

MODES = {"off": "0", "on": "32"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fresh_copy(template: Path, into: Path) -> None:
    if into.exists():
        shutil.rmtree(into)
    into.mkdir(parents=True)
    shutil.copy2(template / "cxrlabel.sqlite3", into / "cxrlabel.sqlite3")
    # Hard links, like `cp -al`: the server refuses image paths that leave its data dir.
    shutil.copytree(template / "renditions", into / "renditions", copy_function=os.link)


def start_server(data_dir: Path, mode: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "CXRLABEL_SQLITE_GROUP_COMMIT": MODES[mode],
    }
    log = (data_dir / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "cxrlabel"), "--data-dir", str(data_dir), "serve"]
        + ["--port", str(port), "--no-access-log"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, port
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: see {data_dir / 'server.log'}") from None
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server did not start in 120 s")


def stop_server(proc: subprocess.Popen) -> None:
    with_group = os.getpgid(proc.pid)
    os.killpg(with_group, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(with_group, signal.SIGKILL)
        proc.wait(30)


def replay_matches(data_dir: Path) -> bool:
    from _loop_setup import JOB_NAME
    from sqlalchemy import select

    from cxrlabel.jobstore import spec_from_job_row
    from cxrlabel.quality.audit import verify_replay
    from cxrlabel.storage.db import Database
    from cxrlabel.storage.models import Job

    db = Database(f"sqlite:///{data_dir / 'cxrlabel.sqlite3'}")
    try:
        with db.read_session() as s:
            job = s.scalar(select(Job).where(Job.name == JOB_NAME))
            return bool(verify_replay(s, job, spec_from_job_row(job)).matched)
    finally:
        db.dispose()


def run_one(args: argparse.Namespace, mode: str, row: tuple[int, int, int]) -> dict[str, Any]:
    annotators, think_ms, seconds = row
    data_dir = args.work / f"{mode}-c{annotators}-t{think_ms}"
    fresh_copy(args.template, data_dir)
    proc, port = start_server(data_dir, mode)
    try:
        server_pid = proc.pid
        out = subprocess.run(
            [sys.executable, str(HERE / "annotation_loop.py"), "--url", f"http://127.0.0.1:{port}"]
            + ["--data-dir", str(data_dir), "--annotators", str(annotators)]
            + ["--seconds", str(seconds), "--think-ms", str(think_ms)]
            + ["--server-pid", str(server_pid), "--label", f"gc-{mode}", "--json"],
            capture_output=True,
            text=True,
            timeout=seconds + 600,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )
    finally:
        stop_server(proc)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"annotation_loop failed: {out.stderr[-2000:]}")
    result = json.loads(lines[-1])
    result["group_commit"] = mode
    result["replay_matches"] = replay_matches(data_dir)
    shutil.move(data_dir / "server.log", args.work / f"{data_dir.name}.server.log")
    shutil.rmtree(data_dir, ignore_errors=True)
    return result


def table_row(r: dict[str, Any]) -> str:
    lat, v, srv = r["latency"], r["verify"], r.get("server") or {}

    def ms(name: str) -> str:
        s = lat.get(name) or {}
        return f"{s.get('p50_ms')} / {s.get('p95_ms')} / {s.get('p99_ms')}"

    think = "closed" if not r["think_ms"] else f"{r['think_ms'] / 1000:g} s"
    over = v["images_over_target"] + v["images_over_max"]
    return (
        f"| {r['annotators']} | {think} | {r['group_commit']} | {r['judgments_per_s']} "
        f"| {ms('next')} | {ms('submit')} | {r['errors']['total']} "
        f"| {v['stored_judgments']} = {v['acknowledged_judgments']} | {over} "
        f"| {'yes' if r['replay_matches'] else 'NO'} | {srv.get('avg_cores')} "
        f"| {r['loadavg_start'][0]} |"
    )


HEADER = (
    "| annotators | think | group commit | judgments/s | next p50/p95/p99 ms "
    "| submit p50/p95/p99 ms | errors | stored = acked | over-assigned | replay equal "
    "| server cores | load avg |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def parse_row(text: str) -> tuple[int, int, int]:
    annotators, think_ms, seconds = (int(x) for x in text.split(":"))
    return annotators, think_ms, seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--template", type=Path, required=True, help="from _loop_setup.py")
    ap.add_argument("--rows", nargs="+", type=parse_row, default=[(8, 0, 20), (32, 0, 20)])
    ap.add_argument("--work", type=Path, default=Path("/tmp/gc-bench/runs"))
    ap.add_argument("--out", type=Path, default=None, help="append each run's JSON here")
    ap.add_argument("--modes", nargs="+", choices=sorted(MODES), default=["off", "on"])
    args = ap.parse_args(argv)
    lines = []
    for i, row in enumerate(args.rows):
        modes = args.modes if i % 2 == 0 else list(reversed(args.modes))  # alternate who's first
        for mode in modes:
            result = run_one(args, mode, row)
            lines.append(table_row(result))
            print(lines[-1], file=sys.stderr, flush=True)
            if args.out:
                with args.out.open("a") as fh:
                    fh.write(json.dumps(result, separators=(",", ":")) + "\n")
    print(HEADER)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
