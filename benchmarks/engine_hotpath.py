"""Engine hot path, in-process: ``next_page`` and ``submit_page`` (with the quality engine).

The web app and the simulator run the same two engine calls for every page. This script times
them without HTTP: a job of ``--images`` synthetic work images (rows only, no files) and
``--gold`` test questions on a fresh database, ``--annotators`` annotators taking turns (each
round: every annotator asks for a page, then every annotator submits it, so pages of others
are reserved meanwhile), with a fixed seed. Every fifth annotator is a *drifter*: careful for
``--drift-after`` work pages, then answers test questions wrongly and work at random until the
minimum-accuracy rule removes them (a removal taints all their work and re-opens images: the
slow path of the quality engine).

Printed per call kind (work pages only; quiz pages and the submits that caused a removal are
reported apart): mean / p50 / p95 ms, and SQL statements per call (counted on the engine's
cursor). ``quality`` is the part of ``submit`` spent in ``quality.grading.on_page_submitted``.

Named baseline in the same run: ``--baseline-ref REF`` extracts ``src/`` of that git commit
(``git archive``, read-only) into a temp dir and runs the identical workload with that code
first (a subprocess with ``PYTHONPATH``), then with the working tree, and prints both and the
ratio. ``--postgres`` runs on a throwaway PostgreSQL 15 cluster (as the tests do) instead of
SQLite; ``--db URL`` on a server you give (a fresh database is created per run). On PostgreSQL
the seeded tables are ANALYZEd before the timed part (a live server's autovacuum does it).

    python benchmarks/engine_hotpath.py --baseline-ref 7a1e21e
    python benchmarks/engine_hotpath.py --images 20000 --annotators 20 --pages 40 --json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
PAGE_SECONDS = 60.0  # simulated time an annotator spends on a page (no speed-trap trips)


# --- workload ------------------------------------------------------------------------------------


@dataclass
class Calls:
    """Durations (s) and SQL statement counts of one kind of call."""

    seconds: list[float] = field(default_factory=list)
    statements: list[int] = field(default_factory=list)

    def add(self, seconds: float, statements: int) -> None:
        self.seconds.append(seconds)
        self.statements.append(statements)

    def summary(self) -> dict[str, float]:
        if not self.seconds:
            return {"n": 0}
        ms = sorted(s * 1000 for s in self.seconds)
        return {
            "n": len(ms),
            "mean_ms": round(statistics.fmean(ms), 3),
            "p50_ms": round(ms[len(ms) // 2], 3),
            "p95_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.95))], 3),
            "statements": round(statistics.fmean(self.statements), 2),
        }


class StatementCounter:
    """Counts cursor executions on an engine into the innermost open phase."""

    def __init__(self, engine: Any) -> None:
        from sqlalchemy import event

        self.stack: list[list[int]] = []
        event.listen(engine, "before_cursor_execute", self._on_execute)

    def _on_execute(self, *_args: Any) -> None:
        for frame in self.stack:
            frame[0] += 1

    @contextmanager
    def phase(self) -> Iterator[list[int]]:
        frame = [0]
        self.stack.append(frame)
        try:
            yield frame
        finally:
            self.stack.remove(frame)


def _bench_spec_text(order: str = "default") -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _loop_setup import bench_spec_text

    text = bench_spec_text("bench-hotpath")
    if order != "default":  # model-assisted ordering (not known to code before it existed)
        if '\norder = "default"' in text:
            text = text.replace('\norder = "default"', f'\norder = "{order}"', 1)
        else:
            text += f'\n[assignment]\norder = "{order}"\n'
    return text


def _seed_job(
    db: Any, n_images: int, n_gold: int, seed: int, order: str = "default"
) -> tuple[int, Any, dict[int, str]]:
    """Job + image rows (no files: nothing here reads pixels); returns job id, spec, truth.
    With model ordering, 90 % of the images get a random model score."""
    from sqlalchemy import insert, select

    from cxrlabel.jobspec import parse_job
    from cxrlabel.storage.models import GoldItem, Image, ImageStatus, Job

    text = _bench_spec_text(order)
    spec = parse_job(text, "benchmark job")
    rng = random.Random(seed)
    with db.session() as s:
        job = Job(
            name="bench-hotpath",
            spec_toml=text,
            spec_sha256=hashlib.sha256(text.encode()).hexdigest(),
        )
        s.add(job)
        s.flush()
        job_id = job.id
    rows, labels = [], []
    for i in range(n_images + n_gold):
        is_gold = i >= n_images
        label = "PNEUMONIA" if rng.random() < 0.74 else "NORMAL"
        sha = hashlib.sha256(f"hotpath:{seed}:{i}".encode()).hexdigest()
        rows.append(
            {
                "job_id": job_id,
                "public_id": secrets.token_urlsafe(16),
                "source_path": f"bench/{i}.png",
                "source_format": "png",
                "sha256": sha,
                "pixel_sha256": sha,
                "phash": f"{i:016x}",
                "width": 512,
                "height": 512,
                "patient_id": f"p{i}",
                "reference_label": label,
                "rendition_path": f"r/{i}.jpg",
                "thumb_path": f"r/{i}-t.jpg",
                "status": ImageStatus.GOLD if is_gold else ImageStatus.NEEDS_JUDGMENTS,
                "judgment_target": 0 if is_gold else spec.judgments.min,
                "trusted_judgments": 0,
                "burned_in_annotation": False,
            }
        )
        if order != "default" and rng.random() < 0.9:
            rows[-1]["model_score"] = rng.random()
        labels.append(label)
    with db.session() as s:
        for start in range(0, len(rows), 2000):
            s.execute(insert(Image), rows[start : start + 2000])
        ids = list(s.scalars(select(Image.id).where(Image.job_id == job_id).order_by(Image.id)))
        truth = dict(zip(ids, labels, strict=True))
        s.execute(
            insert(GoldItem),
            [
                {
                    "job_id": job_id,
                    "image_id": image_id,
                    "accepted_answers": [truth[image_id]],
                    "reason": "reference label",
                    "difficulty": "easy",
                    "source": "reference",
                    "active": True,
                }
                for image_id in ids[n_images:]
            ],
        )
    return job_id, spec, truth


@dataclass
class Annotator:
    user_id: int
    rng: random.Random
    drifter: bool
    clock: datetime = T0
    work_pages: int = 0
    gone: bool = False
    page: Any = None  # (public id, answers) of the page being worked on


def _answer(
    a: Annotator, truth: dict[int, str], image_id: int, is_gold: bool, drift_after: int
) -> tuple[str, str]:
    other = {"NORMAL": "PNEUMONIA", "PNEUMONIA": "NORMAL"}
    right = truth[image_id]
    drifting = a.drifter and a.work_pages >= drift_after
    if is_gold:
        return (other[right] if drifting else right), "definitely"
    if drifting:
        return a.rng.choice(["NORMAL", "PNEUMONIA"]), "definitely"
    certainty = a.rng.choices(["definitely", "probably", "cant_tell"], [0.6, 0.35, 0.05])[0]
    answer = right if a.rng.random() < 0.88 else other[right]
    return answer, certainty


def run_workload(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """The timed part: rounds of next + submit for every annotator still working."""
    import cxrlabel
    from cxrlabel.annotate import submission as submission_module
    from cxrlabel.annotate.assignment import join_job, next_page_or_reason
    from cxrlabel.annotate.schemas import AnswerIn
    from cxrlabel.annotate.submission import submit_page
    from cxrlabel.quality import audit, grading
    from cxrlabel.storage.db import Database
    from cxrlabel.storage.models import Job, User

    db = Database(url)
    job_id, spec, truth = _seed_job(db, args.images, args.gold, args.seed, args.order)
    if not db.is_sqlite and getattr(args, "analyze", True):
        # Fresh bulk-loaded tables have no statistics until autovacuum's ANALYZE runs (within
        # about a minute on a live server); without them PostgreSQL plans the claim query as a
        # nested loop over every image (seconds per page). A running deployment has them.
        from sqlalchemy import text

        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))
    counter = StatementCounter(db.engine)
    calls = {
        k: Calls()
        for k in ("next", "submit", "quality", "quiz_next", "quiz_submit", "removal_submit")
    }

    # Time the quality engine inside submit_page (submission calls it through the module).
    original = grading.on_page_submitted
    quality_last: list[float] = [0.0, 0]

    def timed_quality(*a: Any, **kw: Any) -> Any:
        with counter.phase() as frame:
            started = time.perf_counter()
            out = original(*a, **kw)
            quality_last[0], quality_last[1] = time.perf_counter() - started, frame[0]
        return out

    submission_module.quality_service.on_page_submitted = timed_quality  # type: ignore[attr-defined]

    annotators = []
    with db.session() as s:
        job = s.get(Job, job_id)
        for k in range(args.annotators):
            user = User(username=f"hot-{k:03d}", password_hash="!", role="annotator")
            s.add(user)
            s.flush()
            join_job(s, job, spec, user, T0)
            annotators.append(
                Annotator(
                    user.id,
                    random.Random(args.seed * 1000 + k),
                    drifter=args.drifters and k % 5 == 4,
                )
            )

    started_all = time.perf_counter()
    pages = removals = 0
    for _round in range(args.pages + 1):  # + the quiz page
        working = [a for a in annotators if not a.gone]
        if not working:
            break
        for a in working:
            with counter.phase() as frame, db.session() as s:
                t = time.perf_counter()
                job, user = s.get(Job, job_id), s.get(User, a.user_id)
                page, _reason = next_page_or_reason(s, job, spec, user, a.clock, rng=a.rng)
                if page is None:
                    a.gone = True
                    continue
                items = [(i.image.public_id, i.image_id, i.is_gold) for i in page.items]
                kind, public_id = page.kind, page.public_id
                elapsed = time.perf_counter() - t
            calls["quiz_next" if kind == "quiz" else "next"].add(elapsed, frame[0])
            answers = []
            for pid, image_id, is_gold in items:
                answer, certainty = _answer(a, truth, image_id, is_gold, args.drift_after)
                answers.append(AnswerIn(image_public_id=pid, answer=answer, certainty=certainty))
            a.page = (public_id, kind, answers)
        for a in working:
            if a.gone or a.page is None:
                continue
            public_id, kind, answers = a.page
            a.page = None
            a.clock += timedelta(seconds=PAGE_SECONDS)
            with counter.phase() as frame, db.session() as s:
                t = time.perf_counter()
                job, user = s.get(Job, job_id), s.get(User, a.user_id)
                result = submit_page(
                    s, job, spec, user, public_id, f"c-{public_id}", answers, a.clock
                )
                elapsed = time.perf_counter() - t
            a.clock += timedelta(seconds=5)
            pages += 1
            if result.annotator_status in ("removed", "disqualified"):
                a.gone = True
                removals += result.annotator_status == "removed"
                calls["removal_submit"].add(elapsed, frame[0])
                continue
            if kind == "quiz":
                calls["quiz_submit"].add(elapsed, frame[0])
                continue
            a.work_pages += 1
            calls["submit"].add(elapsed, frame[0])
            calls["quality"].add(quality_last[0], int(quality_last[1]))
    wall = time.perf_counter() - started_all

    with db.session() as s:
        report = audit.verify_replay(s, s.get(Job, job_id), spec)
    db.dispose()
    return {
        "code": str(Path(cxrlabel.__file__).resolve().parent.parent),
        "database": url.split(":", 1)[0],
        "images": args.images,
        "gold": args.gold,
        "annotators": args.annotators,
        "order": args.order,
        "pages_submitted": pages,
        "removals": removals,
        "wall_s": round(wall, 2),
        "replay_matches": report.matched,
        "calls": {k: v.summary() for k, v in calls.items()},
    }


# --- databases and the baseline ------------------------------------------------------------------


@contextmanager
def database_url(args: argparse.Namespace, workdir: Path) -> Iterator[str]:
    """A fresh, empty database for one run."""
    if args.postgres or args.db:
        import psycopg

        cluster = None
        server = args.db
        if args.postgres:
            sys.path.insert(0, str(REPO / "tests"))
            from conftest import PostgresCluster

            cluster = PostgresCluster()
            cluster.start()
            server = cluster.url()
        name = f"hotpath_{uuid.uuid4().hex[:10]}"
        plain = server.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield server.rsplit("/", 1)[0] + "/" + name
        finally:
            if cluster is not None:
                cluster.stop()
        return
    yield f"sqlite:///{workdir / f'hotpath-{uuid.uuid4().hex[:8]}.sqlite3'}"


def extract_ref(ref: str, into: Path) -> Path:
    """``src/`` of a git commit, via ``git archive`` (reads the repository, changes nothing)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def run_child(args: argparse.Namespace, pythonpath: Path | None, workdir: Path) -> dict[str, Any]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--workdir",
        str(workdir),
        "--images",
        str(args.images),
        "--gold",
        str(args.gold),
        "--annotators",
        str(args.annotators),
        "--pages",
        str(args.pages),
        "--seed",
        str(args.seed),
        "--drift-after",
        str(args.drift_after),
        "--order",
        args.order,
    ]
    if not args.drifters:
        cmd.append("--no-drifters")
    if args.postgres:
        cmd.append("--postgres")
    if not args.analyze:
        cmd.append("--no-analyze")
    if args.db:
        cmd += ["--db", args.db]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"benchmark run failed ({pythonpath or 'working tree'}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- output --------------------------------------------------------------------------------------

ROWS = (
    ("next", "next page (work)"),
    ("submit", "submit (work)"),
    ("quality", "  of which quality"),
    ("quiz_next", "next page (quiz)"),
    ("quiz_submit", "submit (quiz)"),
    ("removal_submit", "submit causing removal"),
)


def print_table(runs: list[tuple[str, dict[str, Any]]]) -> None:
    for name, run in runs:
        print(
            f"{name}: {run['code']} on {run['database']}, order {run.get('order')}, "
            f"{run['images']} images, "
            f"{run['annotators']} annotators, {run['pages_submitted']} pages, "
            f"{run['removals']} removals, {run['wall_s']} s, replay matches: "
            f"{run['replay_matches']}"
        )
    header = f"{'call':<24}" + "".join(f"{name[:18]:>40}" for name, _ in runs)
    print(header)
    print(f"{'':<24}" + "".join(f"{'mean / p50 / p95 ms, statements':>40}" for _ in runs))
    for key, label in ROWS:
        cells = []
        for _, run in runs:
            c = run["calls"][key]
            if not c.get("n"):
                cells.append(f"{'-':>40}")
                continue
            cells.append(
                f"{c['mean_ms']:>10.2f} /{c['p50_ms']:>7.2f} /{c['p95_ms']:>8.2f}"
                f"  {c['statements']:>6.1f} (n={c['n']})".rjust(40)
            )
        print(f"{label:<24}" + "".join(cells))
    if len(runs) == 2:
        (_, before), (_, after) = runs
        print("ratio baseline / working tree (mean ms; statements):")
        for key, label in ROWS:
            b, a = before["calls"][key], after["calls"][key]
            if b.get("n") and a.get("n") and a["mean_ms"] > 0:
                print(
                    f"  {label:<24}{b['mean_ms'] / a['mean_ms']:>6.2f}x   "
                    f"{b['statements']:.1f} -> {a['statements']:.1f}"
                )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--gold", type=int, default=1500)
    ap.add_argument("--annotators", type=int, default=20)
    ap.add_argument("--pages", type=int, default=40, help="work pages per annotator (at most)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--drift-after", type=int, default=15, help="work pages before a drifter turns careless"
    )
    ap.add_argument("--no-drifters", dest="drifters", action="store_false")
    ap.add_argument(
        "--order",
        default="default",
        choices=("default", "model_uncertainty"),
        help="[assignment] order of the job (model scores are then seeded)",
    )
    ap.add_argument("--postgres", action="store_true", help="throwaway PostgreSQL cluster")
    ap.add_argument("--db", help="PostgreSQL server URL (a fresh database per run)")
    ap.add_argument(
        "--no-analyze",
        dest="analyze",
        action="store_false",
        help="PostgreSQL: time the first pages of a freshly loaded job (no ANALYZE)",
    )
    ap.add_argument("--baseline-ref", help="git commit to compare with, in the same run")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        with database_url(args, args.workdir) as url:
            print(json.dumps(run_workload(url, args)))
        return 0
    with tempfile.TemporaryDirectory(prefix="engine-hotpath-") as tmp:
        workdir = Path(tmp)
        runs: list[tuple[str, dict[str, Any]]] = []
        if args.baseline_ref and args.order != "default":
            ap.error("--order model_uncertainty does not exist in a baseline; run it alone")
        if args.baseline_ref:
            base_src = extract_ref(args.baseline_ref, workdir)
            runs.append((f"baseline {args.baseline_ref}", run_child(args, base_src, workdir)))
        runs.append(("working tree", run_child(args, None, workdir)))
    if args.json:
        print(json.dumps({name: run for name, run in runs}, indent=2))
    else:
        print_table(runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
