"""Ingest benchmark: the 5,206 shared Kermany images into a fresh temporary data dir.

Prints images/s, peak memory (RSS) and total time for the default configuration (2 worker
processes) and for the named baseline, single-process inline decoding (--workers 0), each in
a fresh interpreter so that the memory figures do not mix. Target: under 2 minutes on 2 cores.

    python benchmarks/ingest.py [--workers 2] [--no-baseline] [--source DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

TARGET_SECONDS = 120.0


def run_one(source: Path, workers: int) -> dict:
    """Ingest in this process; the figures as a dict."""
    from sqlalchemy import select

    from cxrlabel.ingest.pipeline import ingest
    from cxrlabel.jobspec import resolve_job_path
    from cxrlabel.jobstore import ensure_job
    from cxrlabel.storage.db import Database
    from cxrlabel.storage.models import Image

    with tempfile.TemporaryDirectory(prefix="cxrlabel-bench-") as tmp:
        data_dir = Path(tmp)
        db = Database(f"sqlite:///{data_dir / 'cxrlabel.sqlite3'}")
        with db.session() as s:
            job, spec = ensure_job(s, resolve_job_path(None))
        start = time.perf_counter()
        summary = ingest(db, data_dir, job, spec, source, workers=workers)
        seconds = time.perf_counter() - start
        with db.session() as s:
            labels = Counter(s.scalars(select(Image.reference_label)))
        db.dispose()
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    own, children = me.ru_maxrss / 1024, kids.ru_maxrss / 1024
    return {
        "workers": workers,
        "seconds": seconds,
        "images": summary.total,
        "ingested": summary.ingested,
        "near_duplicates": len(summary.near_duplicates),
        "exact_duplicates": len(summary.exact_duplicates),
        "failed": len(summary.failed),
        "labels": dict(labels),
        "peak_rss_main_mib": own,
        "peak_rss_worker_mib": children,
        "cpu_main_s": me.ru_utime + me.ru_stime,
        "cpu_workers_s": kids.ru_utime + kids.ru_stime,
    }


def measure(source: Path, workers: int) -> dict:
    """Run one configuration in a fresh interpreter (clean peak-RSS figures)."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--workers", str(workers), "--source", str(source)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(name: str, r: dict) -> None:
    rate = r["images"] / r["seconds"]
    print(
        f"{name:<34} {r['seconds']:7.1f} s  {rate:7.1f} images/s  "
        f"peak RSS main {r['peak_rss_main_mib']:6.0f} MiB, per worker "
        f"{r['peak_rss_worker_mib']:6.0f} MiB   ingested {r['ingested']} "
        f"labels {r['labels']} near-dup {r['near_duplicates']} "
        f"exact-dup {r['exact_duplicates']} failed {r['failed']}"
    )
    # CPU seconds show how much of the wall time was ours on a shared machine.
    print(
        f"{'':<34} CPU: main {r['cpu_main_s']:.1f} s (incl. start-up), workers "
        f"{r['cpu_workers_s']:.1f} s"
    )


def main() -> None:
    from cxrlabel.config import shared_data_dir

    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--source", type=Path, default=shared_data_dir() / "kermany" / "images")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.source, args.workers)))
        return
    if not args.source.exists():
        sys.exit(f"shared data not found: {args.source}")
    print(f"source: {args.source}")
    result = measure(args.source, args.workers)
    report(f"cxrlabel ingest, {args.workers} workers", result)
    if not args.no_baseline:
        report("baseline: inline, 1 process", measure(args.source, 0))
    verdict = "OK" if result["seconds"] < TARGET_SECONDS else "SLOWER THAN TARGET"
    print(f"target: under {TARGET_SECONDS:.0f} s -> {verdict}")


if __name__ == "__main__":
    main()
