"""High-level entry points: a complete simulated job, and filling an existing job.

``run_simulation``  - fresh job in the given database: ingest, gold bank, crowd, expert, metrics.
``simulate_into``   - for ``cxrlabel demo --simulate``: a simulated crowd works on an existing job.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from cxrlabel.jobspec import JobSpec
from cxrlabel.sim.crowd import CrowdSpec, load_crowd
from cxrlabel.sim.difficulty import DifficultyResult
from cxrlabel.sim.engine import DEFAULT_START, SimRecord, Simulation, Truth
from cxrlabel.sim.metrics import (
    accuracy_by_judgments,
    annotator_rows,
    error_breakdown,
    summarise,
)
from cxrlabel.sim.prepare import (
    SimSetupError,
    build_truth,
    choose_subset,
    default_gold_size,
    ensure_gold,
    ensure_training,
    ingest_images,
    list_images,
)
from cxrlabel.sim.scores import load_model_scores
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import GoldItem, Image, ImageStatus, Job

# Gold from the clearest half of each class by default: test questions are clear teaching cases
# (Appen's rule); hard cases are for experts' calibration (docs/simulation.md).
DEFAULT_GOLD_CLEAREST = 0.5

RESULT_KEYS = (
    "label_accuracy",
    "judgments_per_image",
    "expert_review_fraction",
    "annotators_removed",
    "bad_annotators_removed",
    "cost",
    "hours",
)


@dataclass
class SimOutcome:
    result: dict[str, Any]  # the JSON document
    record: SimRecord
    truth: Truth
    difficulty: DifficultyResult | None
    accuracy_by_judgments: dict[int, tuple[int, int]] = field(default_factory=dict)
    annotators: list[dict[str, Any]] = field(default_factory=list)
    work_ids: list[int] = field(default_factory=list)  # the non-gold images of the job


def store_job(db: Database, spec: JobSpec, spec_toml: str) -> int:
    """Create the job row (a fresh simulation database has none); returns its id."""
    import hashlib

    with db.session() as session:
        job = session.scalar(select(Job).where(Job.name == spec.name))
        if job is None:
            job = Job(
                name=spec.name,
                spec_toml=spec_toml,
                spec_sha256=hashlib.sha256(spec_toml.encode()).hexdigest(),
                created_at=DEFAULT_START,
                updated_at=DEFAULT_START,
            )
            session.add(job)
            session.flush()
        return job.id


def prepare_job(
    db: Database,
    spec: JobSpec,
    spec_toml: str,
    images: Path,
    *,
    data_dir: Path,
    limit: int | None = None,
    seed: int = 0,
    gold: int | None = None,
    start: datetime = DEFAULT_START,
    progress: Callable[[int], None] | None = None,
    gold_clearest: float = 1.0,
    model_scores: Path | None = None,
    sample_gold: bool = True,
) -> tuple[int, Truth, DifficultyResult, dict[str, Any]]:
    """Job + images + truth + gold in ``db``; returns what the simulation needs.

    The truth (reference label, cross-fitted difficulty) comes before the gold bank, so that
    ``gold_clearest`` < 1 can draw the gold from the clearest images of each class only.
    ``model_scores``: a CSV (``file,p_pneumonia``) loaded into ``Image.model_score``.
    ``sample_gold=False``: no gold bank (the sweep adds one per gold policy to copies)."""
    job_id = store_job(db, spec, spec_toml)
    with db.session() as session:
        job = session.get_one(Job, job_id)
        has_judged = (
            session.scalar(
                select(func.count())
                .select_from(Image)
                .where(
                    Image.job_id == job_id,
                    Image.status != ImageStatus.NEEDS_JUDGMENTS,
                    Image.status.not_in(ImageStatus.NOT_WORK),
                )
            )
            or 0
        )
    if has_judged:
        raise SimSetupError(
            f"job {spec.name!r} in this database already has judged images; "
            "simulate into an empty database (or use simulate_into)"
        )
    entries = choose_subset(list_images(images, spec), limit, seed)
    intake = ingest_images(db, job, spec, entries, data_dir, start)
    with db.session() as session:
        n_images = (
            session.scalar(select(func.count()).select_from(Image).where(Image.job_id == job_id))
            or 0
        )
    truth, difficulty = build_truth(
        db,
        job_id,
        spec,
        data_dir=data_dir,
        seed=seed,
        cache_dir=data_dir / "simulation" / "cache",
        progress=progress,
    )
    n_gold = (
        ensure_gold(
            db,
            job,
            spec,
            gold or default_gold_size(n_images, spec),
            seed,
            start,
            clearest_fraction=gold_clearest,
            clarity=truth.difficulty,
        )
        if sample_gold
        else 0
    )
    n_training = ensure_training(db, job, spec, seed, start, truth.difficulty) if sample_gold else 0
    setup = {
        "images_source": str(images),
        "intake": intake,
        "gold_bank": n_gold,
        "training_pool": n_training,
        "gold_clearest_fraction": gold_clearest,
        "gold_mean_difficulty": _round(gold_difficulty(db, job_id, truth)),
        "difficulty_method": difficulty.method,
        "difficulty_model_auc": _round(difficulty.auc),
        "difficulty_model_accuracy": _round(difficulty.accuracy),
    }
    if model_scores is not None:
        setup["model_scores"] = load_model_scores(db, job_id, model_scores)
    return job_id, truth, difficulty, setup


def gold_difficulty(db: Database, job_id: int, truth: Truth) -> float | None:
    """Mean difficulty percentile of the gold bank (0.5 = drawn from all images alike)."""
    with db.session() as session:
        ids = list(
            session.scalars(
                select(GoldItem.image_id).where(
                    GoldItem.job_id == job_id, GoldItem.active.is_(True)
                )
            )
        )
    values = [truth.difficulty[i] for i in ids if i in truth.difficulty]
    return sum(values) / len(values) if values else None


def run_simulation(
    db: Database,
    spec: JobSpec,
    spec_toml: str,
    images: Path,
    *,
    data_dir: Path,
    crowd: CrowdSpec | str = "realistic",
    seed: int = 0,
    limit: int | None = None,
    gold: int | None = None,
    n_annotators: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    difficulty_progress: Callable[[int], None] | None = None,
    gold_clearest: float = DEFAULT_GOLD_CLEAREST,
    model_scores: Path | None = None,
    gold_top_up: int = 0,
) -> SimOutcome:
    """``gold_top_up``: the radiologist confirms this many crowd proposals whenever as many
    test questions have been retired (sim/topup.py); 0 = off."""
    crowd_spec = load_crowd(crowd) if isinstance(crowd, str) else crowd
    job_id, truth, difficulty, setup = prepare_job(
        db,
        spec,
        spec_toml,
        images,
        data_dir=data_dir,
        limit=limit,
        seed=seed,
        gold=gold,
        progress=difficulty_progress,
        gold_clearest=gold_clearest,
        model_scores=model_scores,
    )
    outcome = _simulate(
        db,
        job_id,
        spec,
        crowd_spec,
        truth,
        seed=seed,
        n_annotators=n_annotators,
        progress=progress,
        gold_top_up=gold_top_up,
    )
    outcome.difficulty = difficulty
    outcome.result.update({"setup": setup})
    return outcome


def _simulate(
    db: Database,
    job_id: int,
    spec: JobSpec,
    crowd: CrowdSpec,
    truth: Truth,
    *,
    seed: int,
    n_annotators: int | None = None,
    start: datetime = DEFAULT_START,
    max_pages: int | None = None,
    expert_review: bool = True,
    progress: Callable[[int, int], None] | None = None,
    until_settled: bool = False,
    gold_top_up: int = 0,
) -> SimOutcome:
    with db.session() as session:
        work_ids = list(
            session.scalars(
                select(Image.id)
                .where(Image.job_id == job_id, Image.status.not_in(ImageStatus.NOT_WORK))
                .order_by(Image.id)
            )
        )
    sim = Simulation(
        db,
        job_id,
        spec,
        crowd,
        truth,
        seed=seed,
        start=start,
        n_annotators=n_annotators,
        max_pages=max_pages,
        expert_review=expert_review,
        progress=progress,
        until_settled=until_settled,
        gold_top_up=gold_top_up,
    )
    record = sim.run()
    result = summarise(db, job_id, spec, crowd, record)
    result["errors"] = error_breakdown(db, job_id, truth.difficulty)
    result["job"] = spec.name
    result["seed"] = seed
    result["settings"] = job_settings(spec)
    annotators = annotator_rows(db, job_id, record)
    result["annotators"] = annotators
    return SimOutcome(
        result, record, truth, None, accuracy_by_judgments(db, job_id), annotators, work_ids
    )


def simulate_into(
    db: Database,
    job: Job | str,
    spec: JobSpec,
    images: Path | str | None = None,
    crowd: CrowdSpec | str = "realistic",
    seed: int = 0,
    n_annotators: int | None = 40,
    now: datetime | None = None,
    *,
    data_dir: Path | None = None,
    gold: int | None = None,
    max_pages: int | None = None,
    expert_review: bool = True,
    progress: Callable[[int, int], None] | None = None,
    gold_clearest: float = 1.0,
    until_settled: bool = False,
    gold_top_up: int = 0,
) -> dict[str, Any]:
    """Fill an existing job with a simulated crowd's work through the real engines.

    ``images``: optionally a folder or manifest to ingest into the job first (None: work on the
    images the job already has). ``now``: when the simulated crowd starts (default: a fixed
    Monday morning; pass ``utcnow()`` minus a few days for a lifelike demo timeline).
    ``n_annotators``: most annotators who arrive (with ``until_settled``: per wave).
    ``max_pages``: stop after this many submitted pages (leave some work open for a live demo).
    ``until_settled``: the crowd keeps arriving until every work image is finalised or in the
    review queue (bounded; see ``Simulation``); ``gold_top_up``: see ``run_simulation``. Gold
    is sampled from reference labels when
    the job has fewer than ``gold`` (default: about 4 % of images) active gold items.
    Simulated annotators are real ``User`` rows named ``sim-<persona>-<n>`` that cannot log in.
    Returns the result document (see ``metrics.py``).
    """
    return fill_job(
        db,
        job,
        spec,
        images,
        crowd,
        seed,
        n_annotators,
        now,
        data_dir=data_dir,
        gold=gold,
        max_pages=max_pages,
        expert_review=expert_review,
        progress=progress,
        gold_clearest=gold_clearest,
        until_settled=until_settled,
        gold_top_up=gold_top_up,
    ).result


def fill_job(
    db: Database,
    job: Job | str,
    spec: JobSpec,
    images: Path | str | None = None,
    crowd: CrowdSpec | str = "realistic",
    seed: int = 0,
    n_annotators: int | None = 40,
    now: datetime | None = None,
    *,
    data_dir: Path | None = None,
    gold: int | None = None,
    max_pages: int | None = None,
    expert_review: bool = True,
    progress: Callable[[int, int], None] | None = None,
    gold_clearest: float = 1.0,
    until_settled: bool = False,
    gold_top_up: int = 0,
    limit: int | None = None,
    model_scores: Path | None = None,
) -> SimOutcome:
    """:func:`simulate_into`, returning the whole outcome (truth, work ids: for the baseline).

    ``limit``: ingest a seeded random subset of that many images. ``model_scores``: a CSV
    (``file,p_pneumonia``) loaded into the job's images before the crowd starts."""
    start = now or DEFAULT_START
    crowd_spec = load_crowd(crowd) if isinstance(crowd, str) else crowd
    with db.session() as session:
        row = (
            session.scalar(select(Job).where(Job.name == job))
            if isinstance(job, str)
            else session.get(Job, job.id)
        )
        if row is None:
            raise SimSetupError(f"no job named {job!r}")
        job_row = row
    if images is not None:
        entries = choose_subset(list_images(Path(images), spec), limit, seed)
        ingest_images(db, job_row, spec, entries, data_dir or Path("."), start)
    with db.session() as session:
        n_images = (
            session.scalar(
                select(func.count()).select_from(Image).where(Image.job_id == job_row.id)
            )
            or 0
        )
    if n_images == 0:
        raise SimSetupError(f"job {job_row.name!r} has no images")
    truth, difficulty = build_truth(
        db,
        job_row.id,
        spec,
        data_dir=data_dir,
        seed=seed,
        cache_dir=(data_dir / "simulation" / "cache") if data_dir else None,
    )
    ensure_gold(
        db,
        job_row,
        spec,
        gold or default_gold_size(n_images, spec),
        seed,
        start,
        clearest_fraction=gold_clearest,
        clarity=truth.difficulty,
    )
    ensure_training(db, job_row, spec, seed, start, truth.difficulty)
    setup: dict[str, Any] = {
        "images_source": str(images) if images is not None else None,
        "into_job": job_row.name,
        "difficulty_method": difficulty.method,
    }
    if model_scores is not None:
        setup["model_scores"] = load_model_scores(db, job_row.id, model_scores)
    outcome = _simulate(
        db,
        job_row.id,
        spec,
        crowd_spec,
        truth,
        seed=seed,
        n_annotators=n_annotators,
        start=start,
        max_pages=max_pages,
        expert_review=expert_review,
        progress=progress,
        until_settled=until_settled,
        gold_top_up=gold_top_up,
    )
    outcome.difficulty = difficulty
    outcome.result["setup"] = setup
    return outcome


def job_settings(spec: JobSpec) -> dict[str, Any]:
    """The job-design knobs a sweep varies (recorded with every result)."""
    return {
        "min_judgments": spec.judgments.min,
        "max_judgments": spec.judgments.max,
        "confidence_target": spec.judgments.confidence_target,
        "gold_per_page": spec.gold.per_page,
        "min_accuracy": spec.gold.min_accuracy,
        "aggregation": spec.aggregation.method,
        "quiz_length": spec.gold.quiz_length,
        "cant_tell_fraction": spec.review.cant_tell_fraction,
        "items_per_page": spec.pages.items_per_page,
        "pay_per_page": spec.pay.per_page,
    }


def write_result(result: dict[str, Any], data_dir: Path, job_name: str) -> Path:
    """``<data-dir>/simulation/<job>.json`` (read by the job-design proposal)."""
    folder = data_dir / "simulation"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{job_name}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


__all__: Sequence[str] = (
    "RESULT_KEYS",
    "SimOutcome",
    "fill_job",
    "run_simulation",
    "simulate_into",
    "write_result",
)
