"""Sample what PostgreSQL backends of one database are doing, for ``loop_postgres.sh WAITS=1``.

Every ``--interval`` seconds until ``--seconds`` pass: ``pg_stat_activity`` of the database's
other backends (state, wait event, the statement's first words). Prints the share of samples
per (state, wait, statement): where the run's transactions spend their time, e.g. how many
submits are queued on a row lock and behind which statement.

    python benchmarks/_pg_waits.py --port 5432 --db bench_run_1 --seconds 20
"""

from __future__ import annotations

import argparse
import re
import time
from collections import Counter

import psycopg

SAMPLE = """
SELECT state, coalesce(wait_event_type || ':' || wait_event, 'on CPU') AS wait, query
FROM pg_stat_activity
WHERE datname = %s AND pid <> pg_backend_pid() AND backend_type = 'client backend'
"""


def statement_kind(sql: str) -> str:
    """The statement's verb and main table, e.g. ``SELECT jobs ... FOR NO KEY UPDATE``."""
    sql = " ".join(sql.split())
    verb = sql.split(" ", 1)[0].upper() if sql else "-"
    table = re.search(r"\b(?:FROM|INTO|UPDATE)\s+(\w+)", sql, re.IGNORECASE)
    lock = re.search(r"FOR (NO KEY UPDATE|UPDATE|SHARE|KEY SHARE)( SKIP LOCKED)?", sql)
    return " ".join(
        p
        for p in (
            verb,
            table.group(1) if table else "",
            "FOR " + lock.group(1) + (lock.group(2) or "") if lock else "",
        )
        if p
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--interval", type=float, default=0.1)
    args = ap.parse_args()
    seen: Counter[tuple[str, str, str]] = Counter()
    samples = 0
    with psycopg.connect(
        f"host=127.0.0.1 port={args.port} user=postgres dbname={args.db}", autocommit=True
    ) as conn:
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            samples += 1
            for state, wait, query in conn.execute(SAMPLE, (args.db,)):
                if state == "idle":
                    continue
                seen[(state, wait, statement_kind(query or ""))] += 1
            time.sleep(args.interval)
    print(f"# pg_stat_activity, {samples} samples: mean backends per sample in each state")
    for (state, wait, kind), n in seen.most_common(15):
        print(f"  {n / samples:6.2f}  {state:<20} {wait:<28} {kind}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
