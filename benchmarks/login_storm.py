"""A normal request's latency during a storm of failed sign-ins (issue 18), before and after.

Each password check is argon2 (tens of ms of CPU). Before issue 18 it ran on the request
thread pool: 120 concurrent failed sign-ins held every thread, and every other request (any
sync route) queued behind them. Now it runs on ``web/passwords.py``'s pool (2 hashes at once,
64 waiting, then 503) and the request threads stay free.

Two servers, one after the other in the same run, on the same fresh data dir:

* ``baseline``: argon2 on the shared request thread pool (``InlinePasswordPool``, the
  behaviour before issue 18);
* ``capped``: the default ``PasswordPool``.

Both get the login throttle switched off (a budget of 10**6), so the storm really reaches
argon2 (the throttle alone would refuse it after 10 failures; that is tested elsewhere). For
each: a signed-in client sends ``GET /account`` (a sync route: it needs a request thread) one
after the other for ``--seconds`` while ``--storm`` clients send wrong passwords in a loop;
the script prints p50/p95/max of the normal request and how many sign-ins were answered
(401) or refused as busy (503).

    python benchmarks/login_storm.py                  # 120 concurrent, 15 s per mode
    python benchmarks/login_storm.py --storm 60 --seconds 10

The attackers run in their own process, so the measuring client's event loop is not the busy
one. Bounded: the servers bind 127.0.0.1 only, every request has a timeout, ``--seconds`` <=
120.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

PASSWORD = "correct horse battery staple"
USERNAME = "bench-user"


def serve(data_dir: str, port: int, mode: str) -> None:
    """The server process: the app with the chosen hashing pool and no throttle."""
    import uvicorn

    from cxrlabel.config import Settings
    from cxrlabel.web.app import create_app
    from cxrlabel.web.passwords import InlinePasswordPool, PasswordPool
    from cxrlabel.web.throttle import LoginRateLimiter

    app = create_app(Settings(data_dir=Path(data_dir)))
    app.state.login_limiter = LoginRateLimiter(app.state.db, max_failures=10**6)
    app.state.password_pool = InlinePasswordPool() if mode == "baseline" else PasswordPool()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def prepare(data_dir: Path) -> None:
    from cxrlabel.annotate.accounts import create_user
    from cxrlabel.config import Settings
    from cxrlabel.storage.db import Database

    db = Database(Settings(data_dir=data_dir).database_url)
    with db.session() as s:
        create_user(s, USERNAME, PASSWORD, "annotator")
    db.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_up(base: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=2) as client:
        for _ in range(200):
            try:
                if (await client.get("/login")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the server did not start")


def csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


async def storm(base: str, clients: int, seconds: float) -> dict:
    """``clients`` loops of wrong passwords for ``seconds`` (its own process: the measuring
    client's event loop must not be the one that is busy)."""
    codes: list[int] = []
    # One client, one connection per attacker: building an httpx client per attacker costs
    # ~50 ms of CPU (an SSL context each) and made the attackers, not the server, the bottleneck.
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        token = csrf((await client.get("/login")).text)
        form = {"username": USERNAME, "password": "wrong password!", "csrf_token": token}
        end = time.monotonic() + seconds

        async def one() -> None:
            while time.monotonic() < end:
                try:
                    codes.append((await client.post("/login", data=form)).status_code)
                except httpx.HTTPError:
                    codes.append(0)

        await asyncio.gather(*(one() for _ in range(clients)))
    others = Counter(c for c in codes if c not in (401, 503))  # 0 = network error/timeout
    return {
        "logins_401": codes.count(401),
        "logins_503": codes.count(503),
        "logins_other": dict(others),
    }


async def measure(base: str, seconds: float) -> dict:
    async with httpx.AsyncClient(base_url=base, timeout=120) as me:
        # Signing in is the set-up, not the measurement: during a storm the capped pool may
        # answer "busy, try again in a moment" (503), and a person would press again.
        for busy in range(60):  # noqa: B007 - reported below
            token = csrf((await me.get("/login")).text)
            r = await me.post(
                "/login", data={"username": USERNAME, "password": PASSWORD, "csrf_token": token}
            )
            if r.status_code != 503:
                break
            await asyncio.sleep(0.5)
        assert r.status_code == 303, r.status_code
        latencies, end = [], time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            r = await me.get("/account")
            latencies.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200, r.status_code
            await asyncio.sleep(0.05)
    latencies.sort()
    return {
        "sign_in_retries": busy,
        "requests": len(latencies),
        "p50_ms": round(statistics.median(latencies), 1),
        "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 1),
        "max_ms": round(latencies[-1], 1),
    }


def run_mode(data_dir: Path, mode: str, clients: int, seconds: float) -> dict:
    port = free_port()
    env = {**os.environ, "CXRLABEL_DATA_DIR": str(data_dir)}
    server = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            mode,
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
        ],
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(wait_up(base))
        quiet = asyncio.run(measure(base, min(seconds, 3.0)))
        attackers = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--storm-client",
                base,
                "--storm",
                str(clients),
                "--seconds",
                str(seconds + 2),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)  # let the storm fill the queues
        loaded = asyncio.run(measure(base, seconds))
        out, _ = attackers.communicate(timeout=seconds + 120)
        counts = json.loads(out.strip().splitlines()[-1])
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"mode": mode, "quiet_p50_ms": quiet["p50_ms"], **loaded, **counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storm", type=int, default=120, help="concurrent failed sign-ins")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--serve", choices=("baseline", "capped"), help=argparse.SUPPRESS)
    parser.add_argument("--storm-client", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    seconds = min(max(args.seconds, 2.0), 125.0)
    if args.serve:
        serve(args.data_dir, args.port, args.serve)
        return
    if args.storm_client:
        print(json.dumps(asyncio.run(storm(args.storm_client, args.storm, seconds))))
        return
    with tempfile.TemporaryDirectory(prefix="login-storm-") as tmp:
        data_dir = Path(tmp)
        prepare(data_dir)
        rows = [run_mode(data_dir, mode, args.storm, seconds) for mode in ("baseline", "capped")]
    print(f"GET /account while {args.storm} clients send wrong passwords ({seconds:.0f} s each)")
    print(
        f"{'mode':10} {'quiet p50':>9} {'p50':>8} {'p95':>8} {'max':>8} {'n':>5} "
        f"{'401s':>6} {'503s':>6} {'sign-in retries':>15}"
    )
    for r in rows:
        print(
            f"{r['mode']:10} {r['quiet_p50_ms']:>9} {r['p50_ms']:>8} {r['p95_ms']:>8} "
            f"{r['max_ms']:>8} {r['requests']:>5} {r['logins_401']:>6} {r['logins_503']:>6} "
            f"{r['sign_in_retries']:>15}"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
