"""Setup for the annotation-loop benchmark (not timed): a job, images, a gold bank, annotators,
and the database checks that ``annotation_loop.py`` and ``load.py`` share after a run.

Everything goes through the real schema and the real account code; only the image *files* are
shortcuts: ``--files`` synthetic phantom renditions are made once and hard-linked under each
image's own rendition path (``renditions/<job>/<pid[:2]>/<pid>.jpg``, the layout ingest writes),
so 20,000 images take seconds instead of the minutes full ingest (decode, de-identify, phash)
would take. Ingest speed has its own benchmark (benchmarks/ingest.py).

The benchmark job is the bundled ``pneumonia-pediatric`` spec (10 items per page, 1 hidden test
question per page, 3-5 judgments per image, trust aggregation, every quality rule) with three
changes a machine client needs, printed with every result:

* ``min_seconds_per_page = 0``: the speed trap would (rightly) remove a client that answers a
  page in milliseconds;
* ``max_per_annotator`` raised: one simulated annotator does thousands of pages in 30 s;
* the instructions are inline Markdown (the bundled file is looked up next to the bundled TOML).

Usage (creates a fresh data dir)::

    python benchmarks/_loop_setup.py --data-dir /tmp/loopbench --images 20000 --gold 1500
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import secrets
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import Subquery, func, insert, select
from sqlalchemy.orm import Session

from cxrlabel.annotate.accounts import create_user, issue_api_token
from cxrlabel.annotate.aliases import Aliases
from cxrlabel.ingest.phantom import make_phantom_xray
from cxrlabel.ingest.renditions import make_renditions, relative_paths
from cxrlabel.jobspec import JobSpec, parse_job, resolve_job_path
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import GoldItem, Image, ImageStatus, Job, Judgment, User
from cxrlabel.web.security import load_secret_key

JOB_NAME = "bench-loop"
SPEC_CHANGES = (
    "min_seconds_per_page = 0 (speed trap off for a machine client)",
    "harm_accuracy = 0 (removal for harm off: the clients answer work at random)",
    "max_per_annotator = 10000000",
    "instructions inline",
)
DEFAULT_PASSWORD = "bench-loop-password"


HARM_KEPT = "removal for harm on, as bundled (--harm: spammers among honest clients)"


def spec_changes(harm: bool = False) -> list[str]:
    """``SPEC_CHANGES`` as applied: with ``harm`` the bundled removal-for-harm rule is kept."""
    return [HARM_KEPT if harm and "harm_accuracy" in c else c for c in SPEC_CHANGES]


def bench_spec_text(name: str = JOB_NAME, harm: bool = False) -> str:
    """The bundled job spec with the changes in ``SPEC_CHANGES`` (``harm``: removal for harm
    kept, for a load whose spammers are removed while honest clients work)."""
    text = resolve_job_path("pneumonia-pediatric").read_text(encoding="utf-8")
    subs = [
        (r'(?m)^name = ".*"$', f'name = "{name}"'),
        (r"(?m)^min_seconds_per_page = .*$", "min_seconds_per_page = 0.0"),
        # The load clients answer work images at random, which the peer-agreement rule
        # (quality/skill.py) rightly removes; the loop measures the write path, not QC.
        *([] if harm else [(r"(?m)^harm_accuracy = .*$", "harm_accuracy = 0.0")]),
        (r"(?m)^max_per_annotator = .*$", "max_per_annotator = 10000000"),
        (
            r'(?m)^file = "pneumonia-pediatric.md"$',
            'markdown = "Label each image: healthy (clear lungs) or pneumonia (cloudy patches)."',
        ),
    ]
    for pattern, repl in subs:
        text, n = re.subn(pattern, repl, text, count=1)
        if n != 1:
            raise RuntimeError(f"bundled spec changed: {pattern!r} not found")
    # Illustrated examples name Kermany files that may be absent; the loop never shows them.
    return re.sub(r"(?ms)^\[\[instructions\.examples\]\].*?(?=^\[judgments\])", "", text)


@dataclass
class Prepared:
    job_id: int
    spec: JobSpec
    work_images: int
    gold_images: int
    seconds: float


def _phantom_files(folder: Path, n_files: int) -> list[tuple[Path, str]]:
    """``n_files`` phantom renditions (JPEG as ingest writes them) and their true label."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n_files):
        label = "PNEUMONIA" if i % 4 else "NORMAL"  # roughly the source's 74 % prevalence
        path = folder / f"phantom-{i:03d}.jpg"
        if not path.exists():
            pixels = np.asarray(make_phantom_xray(1000 + i, 512, pneumonia=label == "PNEUMONIA"))
            path.write_bytes(make_renditions(pixels)[0])
        out.append((path, label))
    return out


def prepare_job(
    db: Database,
    data_dir: Path,
    *,
    n_images: int,
    n_gold: int,
    n_files: int = 48,
    name: str = JOB_NAME,
    harm: bool = False,
) -> Prepared:
    """Create the benchmark job with ``n_images`` work images and ``n_gold`` test questions."""
    started = time.perf_counter()
    text = bench_spec_text(name, harm)
    spec = parse_job(text, "benchmark job")
    files = _phantom_files(data_dir / "bench-phantoms", n_files)
    with db.session() as s:
        if s.scalar(select(Job.id).where(Job.name == name)) is not None:
            raise RuntimeError(f"job {name!r} already exists in {db.url}; use a fresh data dir")
        job = Job(name=name, spec_toml=text, spec_sha256=hashlib.sha256(text.encode()).hexdigest())
        s.add(job)
        s.flush()
        job_id = job.id
    rows, gold_rows = [], []
    total = n_images + n_gold
    for i in range(total):
        src, label = files[i % len(files)]
        public_id = secrets.token_urlsafe(16)
        rel, _thumb = relative_paths(name, public_id)
        target = data_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(src, target)  # same bytes, the image's own path: as served in production
        is_gold = i >= n_images
        sha = hashlib.sha256(f"{name}:{i}".encode()).hexdigest()
        rows.append(
            {
                "job_id": job_id,
                "public_id": public_id,
                "source_path": f"bench/{i}.png",
                "source_format": "png",
                "sha256": sha,
                "pixel_sha256": sha,
                "phash": f"{i:016x}",
                "width": 512,
                "height": 512,
                "patient_id": f"bench-{i}",
                "reference_label": label,
                "rendition_path": rel,
                "thumb_path": rel,
                "status": ImageStatus.GOLD if is_gold else ImageStatus.NEEDS_JUDGMENTS,
                "judgment_target": 0 if is_gold else spec.judgments.min,
                "trusted_judgments": 0,
                "burned_in_annotation": False,
            }
        )
        if is_gold:
            gold_rows.append((public_id, label))
    with db.session() as s:
        for start in range(0, len(rows), 2000):
            s.execute(insert(Image), rows[start : start + 2000])
        ids = dict(s.execute(select(Image.public_id, Image.id).where(Image.job_id == job_id)).all())
        s.execute(
            insert(GoldItem),
            [
                {
                    "job_id": job_id,
                    "image_id": ids[pid],
                    "accepted_answers": [label],
                    "reason": f"Reference label of this synthetic phantom: {label}.",
                    "difficulty": "easy",
                    "source": "reference",
                    "active": True,
                }
                for pid, label in gold_rows
            ],
        )
    return Prepared(job_id, spec, n_images, n_gold, time.perf_counter() - started)


def create_annotators(db: Database, n: int, prefix: str) -> list[tuple[str, str]]:
    """``n`` new annotator accounts (``<prefix>-NNN``) and an API token for each."""
    out = []
    with db.session() as s:
        for i in range(n):
            username = f"{prefix}-{i:03d}"
            user = create_user(s, username, DEFAULT_PASSWORD, "annotator")
            out.append((username, issue_api_token(s, user)))
    return out


def database_url(data_dir: Path | None, db_url: str | None) -> str:
    """The server's database: ``db_url``, else the SQLite file in its data dir."""
    if db_url:
        return db_url
    if data_dir is None:
        raise ValueError("give the server's data dir (SQLite) or a database URL")
    return f"sqlite:///{(data_dir / 'cxrlabel.sqlite3').resolve()}"


def server_secret_key(data_dir: Path | None) -> bytes | None:
    """The key the server derives per-user image aliases from (``load_secret_key``): its
    ``CXRLABEL_SECRET_KEY``, else the ``secret_key`` file of its data dir; None when neither
    is known (a client given only ``--db``)."""
    if os.environ.get("CXRLABEL_SECRET_KEY") or data_dir is not None:
        return load_secret_key(data_dir or Path("."))  # the environment wins over the file
    return None


def gold_answers(
    db: Database, name: str = JOB_NAME, data_dir: Path | None = None
) -> dict[str, str]:
    """Test-question answers by image id as each annotator sees it: the benchmark client reads
    them from the database (a browser never gets them) so its annotators pass the quiz and
    stay trusted. Annotators see images under their own aliases (``annotate/aliases.py``): with
    the server's secret key (``server_secret_key``) every existing annotator's aliases are
    included."""
    with db.session() as s:
        rows = s.execute(
            select(Image.public_id, GoldItem.accepted_answers)
            .join(GoldItem, GoldItem.image_id == Image.id)
            .join(Job, Job.id == Image.job_id)
            .where(Job.name == name)
        ).all()
        users = list(s.scalars(select(User.id).where(User.role == "annotator")))
    return _with_aliases({pid: answers[0] for pid, answers in rows}, users, data_dir)


def reference_answers(
    db: Database, name: str = JOB_NAME, data_dir: Path | None = None
) -> dict[str, str]:
    """Every image's reference label by image id as each annotator sees it (as
    ``gold_answers``): the honest clients of a ``--spammers`` load answer from it."""
    with db.session() as s:
        rows = s.execute(
            select(Image.public_id, Image.reference_label)
            .join(Job, Job.id == Image.job_id)
            .where(Job.name == name, Image.reference_label.is_not(None))
        ).all()
        users = list(s.scalars(select(User.id).where(User.role == "annotator")))
    return _with_aliases(dict(rows), users, data_dir)


def _with_aliases(
    answers: dict[str, str], users: list[int], data_dir: Path | None
) -> dict[str, str]:
    out = dict(answers)
    key = server_secret_key(data_dir)
    if key is not None:
        aliases = Aliases(key)
        out.update({aliases.image(pid, uid): a for pid, a in answers.items() for uid in users})
    return out


# --- checks after a run (shared by annotation_loop.py and load.py) ---------------------------


def untainted_work_counts(job_id: int) -> Subquery:
    """Per image of the job: its untainted work judgments (``image_id``, ``n``)."""
    return (
        select(Judgment.image_id, func.count().label("n"))
        .where(Judgment.job_id == job_id, Judgment.is_gold.is_(False), Judgment.tainted.is_(False))
        .group_by(Judgment.image_id)
        .subquery()
    )


def count_images_over_target(session: Session, job_id: int) -> int:
    """Work images whose trusted judgment count passed their target (must stay 0)."""
    return int(
        session.scalar(
            select(func.count(Image.id)).where(
                Image.job_id == job_id,
                Image.status != ImageStatus.GOLD,
                Image.trusted_judgments > Image.judgment_target,
            )
        )
        or 0
    )


# --- a reliability run's setup (shared by load.py and crash.py) ------------------------------


def fresh_data_dir(path: Path) -> Path:
    """``path`` resolved and created; one with anything in it is refused, so that a run's
    checks never count an earlier run's data."""
    data_dir = path.resolve()
    if data_dir.exists() and any(data_dir.iterdir()):
        raise SystemExit(f"{data_dir} is not empty: give a fresh --data-dir")
    data_dir.mkdir(parents=True, exist_ok=True)
    return data_dir


@contextmanager
def run_database(db_url: str | None, throwaway_pg: bool) -> Iterator[str | None]:
    """The run's database URL: ``db_url``; with ``throwaway_pg`` and no URL, a throwaway
    PostgreSQL cluster (tests/conftest.py), stopped afterwards; else None (SQLite in the data
    dir)."""
    if db_url or not throwaway_pg:
        yield db_url
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from conftest import PostgresCluster

    cluster = PostgresCluster()
    cluster.start()
    try:
        yield cluster.create_database()
    finally:
        cluster.stop()


def parse_run_args(
    ap: argparse.ArgumentParser,
    argv: list[str] | None,
    *,
    annotators: int,
    seconds: float,
    think_median_s: float,
    no_think_share: float,
    images: int,
    gold: int,
) -> argparse.Namespace:
    """``ap`` (a run's own options) plus the options every reliability run against a server
    it starts has, with this run's defaults; parsed and bounded."""
    ap.add_argument("--data-dir", type=Path, required=True, help="a fresh folder")
    ap.add_argument("--db", help="PostgreSQL URL of an empty database")
    ap.add_argument("--pg", action="store_true", help="start a throwaway PostgreSQL cluster")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--annotators", type=int, default=annotators)
    ap.add_argument("--seconds", type=float, default=seconds)
    ap.add_argument("--think-median-s", type=float, default=think_median_s)
    ap.add_argument("--no-think-share", type=float, default=no_think_share)
    ap.add_argument("--images", type=int, default=images)
    ap.add_argument("--gold", type=int, default=gold)
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args(argv)
    if not 1 <= args.annotators <= 512 or not 0 < args.seconds <= 900:
        ap.error("--annotators must be 1..512 and --seconds in (0, 900]")
    return args


def count_users(db: Database, prefix: str) -> int:
    with db.session() as s:
        return int(
            s.scalar(select(func.count(User.id)).where(User.username.like(f"{prefix}-%"))) or 0
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--db", default=None, help="database URL [default: SQLite in the data dir]")
    ap.add_argument("--images", type=int, default=20000, help="work images")
    ap.add_argument("--gold", type=int, default=1500, help="test questions in the gold bank")
    ap.add_argument("--files", type=int, default=48, help="distinct phantom renditions")
    ap.add_argument("--harm", action="store_true", help="keep the bundled removal for harm")
    args = ap.parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    url = database_url(args.data_dir, args.db)
    db = Database(url)
    try:
        p = prepare_job(
            db,
            args.data_dir,
            n_images=args.images,
            n_gold=args.gold,
            n_files=args.files,
            harm=args.harm,
        )
    finally:
        db.dispose()
    print(
        f"job {JOB_NAME!r}: {p.work_images} work images, {p.gold_images} gold, "
        f"{p.seconds:.1f} s ({url})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
