"""Setting a simulation up: images in (through the real ingest), a gold bank, and the "truth"
the simulated people see (reference label and difficulty per image).

Images come in through ``cxrlabel.ingest`` (the same pipeline ``cxrlabel ingest`` runs); a
broken ingest module is an error, never a silent fallback.
"""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select

from cxrlabel.jobspec import JobSpec
from cxrlabel.sim.difficulty import DifficultyResult, compute_difficulty
from cxrlabel.sim.engine import Truth
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import GoldItem, Image, Job
from cxrlabel.vocab import PNEUMONIA


class SimSetupError(ValueError):
    """The simulation cannot start (no images, no labels...): one line for the user."""


@dataclass(frozen=True)
class SourceEntry:
    path: str
    label: str | None
    patient_id: str | None


def list_images(source: Path, spec: JobSpec) -> list[SourceEntry]:
    """Images (with reference labels where known) of a folder or manifest, in a stable order."""
    from cxrlabel.ingest.sources import SourceError, discover

    try:
        items = discover(Path(source), spec.label_values)
    except SourceError as exc:
        raise SimSetupError(str(exc)) from None
    entries = [SourceEntry(i.path, i.label, i.patient_id) for i in items if i.problem is None]
    if not entries:
        raise SimSetupError(f"{source}: no usable images")
    return entries


def choose_subset(entries: list[SourceEntry], limit: int | None, seed: int) -> list[SourceEntry]:
    """A seeded random subset (keeps the collection's prevalence), in the original order."""
    if limit is None or limit >= len(entries):
        return entries
    if limit < 1:
        raise SimSetupError("--limit must be at least 1")
    keep = np.sort(np.random.default_rng([seed, 7]).choice(len(entries), limit, replace=False))
    return [entries[i] for i in keep]


def write_manifest(entries: Sequence[SourceEntry], folder: Path) -> Path:
    """A manifest CSV for a subset, so the real ingest can take exactly these files."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "simulation-manifest.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "patient_id"])
        for entry in entries:
            writer.writerow([entry.path, entry.label or "", entry.patient_id or ""])
    return path


def ingest_images(
    db: Database,
    job: Job,
    spec: JobSpec,
    entries: Sequence[SourceEntry],
    data_dir: Path,
    now: datetime,
    console: Any = None,
) -> str:
    """Bring ``entries`` into ``job`` through the ingest pipeline; returns "ingest" (recorded as
    the result's ``setup.intake``)."""
    from cxrlabel.ingest import pipeline

    with db.session() as session:
        job_row = session.get_one(Job, job.id)
    with tempfile.TemporaryDirectory(prefix="cxrlabel-sim-") as tmp:
        manifest = write_manifest(entries, Path(tmp))
        pipeline.ingest(db, data_dir, job_row, spec, manifest, console=console)
    return "ingest"


def default_gold_size(n_images: int, spec: JobSpec) -> int:
    """About 4 % of the images, at least the quiz plus 12 pages' worth, at most 300."""
    floor = spec.gold.quiz_length + 12 * max(spec.gold.per_page, 1)
    return int(min(max(round(0.04 * n_images), floor), 300))


def ensure_gold(
    db: Database,
    job: Job,
    spec: JobSpec,
    n: int,
    seed: int,
    now: datetime,
    *,
    clearest_fraction: float = 1.0,
    clarity: dict[int, float] | None = None,
) -> int:
    """Make sure the job has ``n`` active gold items, sampled from reference labels.

    ``clearest_fraction`` < 1: only from the clearest part of each class, by ``clarity``
    (the simulation passes its cross-fitted difficulty: pixels, never the label alone)."""
    with db.session() as session:
        have = (
            session.scalar(
                select(func.count())
                .select_from(GoldItem)
                .where(GoldItem.job_id == job.id, GoldItem.active.is_(True))
            )
            or 0
        )
        if have >= n:
            return int(have)
        job_row = session.get(Job, job.id)
        sampler = _gold_sampler()
        sampler(
            session,
            job_row,
            spec,
            n - have,
            seed=seed,
            now=now,
            clearest_fraction=clearest_fraction,
            clarity=clarity,
        )
        return int(
            session.scalar(
                select(func.count())
                .select_from(GoldItem)
                .where(GoldItem.job_id == job.id, GoldItem.active.is_(True))
            )
            or 0
        )


# Training cases come from the clearer half of each class (clear teaching cases, issue 17).
TRAINING_CLEAREST = 0.5


def ensure_training(
    db: Database,
    job: Job,
    spec: JobSpec,
    seed: int,
    now: datetime,
    clarity: dict[int, float] | None = None,
) -> int:
    """With ``[training] enabled``: a training pool of ``training.items`` clear cases (drawn
    after the gold, from the images left, so never gold), as ``cxrlabel training sample``."""
    from cxrlabel.design.trainingpool import ensure_training as top_up

    with db.session() as session:
        return top_up(
            session,
            session.get_one(Job, job.id),
            spec,
            seed + 1,
            now,
            clearest_fraction=TRAINING_CLEAREST if clarity else 1.0,
            clarity=clarity,
        )


def _gold_sampler() -> Callable[..., Any]:
    """The gold-bank tool's ``sample_from_reference`` (design/), the same as
    ``cxrlabel gold sample --from-reference N``."""
    from cxrlabel.design.goldseed import sample_from_reference

    return sample_from_reference


def build_truth(
    db: Database,
    job_id: int,
    spec: JobSpec,
    *,
    data_dir: Path | None = None,
    seed: int = 0,
    cache_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[Truth, DifficultyResult]:
    """Reference label and difficulty of every image of the job.

    Difficulty is cross-fitted from pixels (``difficulty.py``). An image without a reference
    label gets a pseudo-truth drawn from its out-of-fold score (the simulated people have to
    be right or wrong about *something*); reports count accuracy on labelled images only."""
    with db.session() as session:
        rows = session.execute(
            select(
                Image.id,
                Image.source_path,
                Image.rendition_path,
                Image.reference_label,
                Image.patient_id,
            )
            .where(Image.job_id == job_id)
            .order_by(Image.id)
        ).all()
    if not rows:
        raise SimSetupError("the job has no images to simulate on")
    paths = [_readable_path(r.source_path, r.rendition_path, data_dir) for r in rows]
    if all(p is not None for p in paths):
        result = compute_difficulty(
            [str(p) for p in paths],
            [r.reference_label for r in rows],
            [r.patient_id for r in rows],
            positive=_positive_label(spec),
            seed=seed,
            cache_dir=cache_dir,
            progress=progress,
        )
    else:  # pixels unavailable: an even, seeded spread (documented as "random")
        result = compute_difficulty(
            ["" for _ in rows], [None] * len(rows), [None] * len(rows), seed=seed
        )
    rng = np.random.default_rng([seed, 11])
    labels: dict[int, str] = {}
    positive, negative = _positive_label(spec), spec.label_values[0]
    for i, row in enumerate(rows):
        if row.reference_label is not None:
            labels[row.id] = row.reference_label
        else:
            labels[row.id] = positive if rng.random() < result.score[i] else negative
    difficulty = {row.id: float(result.difficulty[i]) for i, row in enumerate(rows)}
    return Truth(labels, difficulty), result


def _positive_label(spec: JobSpec) -> str:
    return PNEUMONIA if PNEUMONIA in spec.label_values else spec.label_values[-1]


def _readable_path(source: str, rendition: str, data_dir: Path | None) -> Path | None:
    if source and Path(source).is_file():
        return Path(source)
    if rendition and data_dir is not None and (data_dir / rendition).is_file():
        return data_dir / rendition
    return None
