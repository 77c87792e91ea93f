"""Health check of the gold bank: ``check_gold`` returns a ``GoldReport`` (class balance, how
many work pages the bank supports per annotator, reasons, overlap with work, near-duplicates,
exposure) with a ``GoldWarning`` for each problem found.

Each gold is shown at most once per annotator, so the bank's size bounds how much one person can
do (``pages_bound``); near-duplicates are shortlisted on pHash with ingest's distance and, given
the data folder, confirmed on pixels.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cxrlabel.design.exposure import Exposure, bank_exposure
from cxrlabel.design.goldbank import GoldRow, gold_rows, instruction_example_ids
from cxrlabel.design.goldreason import is_placeholder_reason
from cxrlabel.jobspec import JobSpec
from cxrlabel.storage.models import ExpertReview, Image, ImageStatus, Job, Judgment

# Gold class shares may differ from the expected prevalence by this much before we warn: a
# balanced bank (50/50) against a 26/74 prior is fine, an all-PNEUMONIA bank is not.
DEFAULT_IMBALANCE_TOLERANCE = 0.25
DEFAULT_MIN_PER_CLASS = 2


# --- health check ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GoldWarning:
    code: str  # imbalance | too_few | no_reason | judged_as_work | near_duplicate | ...
    message: str


@dataclass
class GoldReport:
    n_gold: int
    by_label: dict[str, int]  # single-answer gold per label; "any" for multi-answer gold
    by_difficulty: dict[str, int]
    without_reason: int
    pages_bound: float  # work pages one annotator can do before running out of unseen gold
    planned_pages_per_annotator: float
    warnings: list[GoldWarning]
    exposure: Exposure | None = None  # answers shown to annotators, retirement by exposure

    def codes(self) -> set[str]:
        return {w.code for w in self.warnings}


def _hashes_to_uint64(hashes: list[str]) -> np.ndarray:
    return np.array([int(h, 16) for h in hashes], dtype=np.uint64)


def _popcount64(values: np.ndarray) -> np.ndarray:
    as_bytes = values.astype(">u8").view(np.uint8).reshape(*values.shape, 8)
    return np.unpackbits(as_bytes, axis=-1).sum(axis=-1)


def shortlist_distance() -> int:
    """The one near-duplicate pHash distance: ingest's ``NEAR_DUP_MAX_PHASH`` (imported on use:
    ``ingest.dedup`` pulls in the image decoders, about a second of import time)."""
    from cxrlabel.ingest.dedup import NEAR_DUP_MAX_PHASH

    return NEAR_DUP_MAX_PHASH


def near_duplicate_pairs(
    a: list[str], b: list[str] | None = None, threshold: int | None = None
) -> list[tuple[int, int, int]]:
    """(i, j, distance) for phash pairs within ``threshold`` (default: ingest's shortlist
    distance, ``NEAR_DUP_MAX_PHASH``); within ``a`` when ``b`` is None."""
    threshold = shortlist_distance() if threshold is None else threshold
    if not a or (b is not None and not b):
        return []
    left = _hashes_to_uint64(a)
    right = left if b is None else _hashes_to_uint64(b)
    distances = _popcount64(left[:, None] ^ right[None, :])
    pairs = []
    for i, j in zip(*np.nonzero(distances <= threshold), strict=True):
        if b is None and j <= i:
            continue
        pairs.append((int(i), int(j), int(distances[i, j])))
    return pairs


def pages_bound(n_gold: int, spec: JobSpec) -> float:
    """Work pages one annotator can do before every gold has been shown to them once."""
    if spec.gold.per_page == 0:
        return math.inf
    return max(0.0, (n_gold - spec.gold.quiz_length) / spec.gold.per_page)


def planned_pages_per_annotator(spec: JobSpec, work_images: int, annotators: int | None) -> float:
    """Work pages one annotator is expected to do (pool given) or may do (per-annotator cap)."""
    work_per_page = spec.pages.items_per_page - spec.gold.per_page
    total_pages = math.ceil(work_images * spec.judgments.min / work_per_page)
    if annotators:
        return total_pages / annotators
    cap_pages = math.ceil(spec.judgments.max_per_annotator / work_per_page)
    return float(min(cap_pages, total_pages))


def check_gold(
    session: Session,
    job: Job,
    spec: JobSpec,
    annotators: int | None = None,
    tolerance: float = DEFAULT_IMBALANCE_TOLERANCE,
    min_per_class: int = DEFAULT_MIN_PER_CLASS,
    data_dir: Path | None = None,
) -> GoldReport:
    """Warnings about the bank. With ``data_dir`` near-duplicates are confirmed on pixels (the
    ingest rule); without it a pHash shortlist is reported as *possible* near-duplicates."""
    rows = [r for r in gold_rows(session, job) if r.gold.active]
    n_gold = len(rows)
    by_label = Counter(
        r.gold.accepted_answers[0] if len(r.gold.accepted_answers) == 1 else "any" for r in rows
    )
    warnings: list[GoldWarning] = []
    warnings += _balance_warnings(by_label, n_gold, spec, tolerance, min_per_class)
    work_images = (
        session.scalar(
            select(func.count())
            .select_from(Image)
            .where(Image.job_id == job.id, Image.status.not_in(ImageStatus.NOT_WORK))
        )
        or 0
    )
    bound = pages_bound(n_gold, spec)
    planned = planned_pages_per_annotator(spec, work_images, annotators)
    if n_gold < spec.gold.quiz_length:
        warnings.append(
            GoldWarning(
                "too_few", f"{n_gold} active gold cannot fill the quiz of {spec.gold.quiz_length}"
            )
        )
    elif bound < planned:
        who = f"with {annotators} annotators" if annotators else "at the per-annotator cap"
        warnings.append(
            GoldWarning(
                "too_few",
                f"gold bank supports {bound:.0f} work pages per annotator "
                f"(({n_gold} gold - {spec.gold.quiz_length} quiz) / {spec.gold.per_page} per page),"
                f" but the plan needs up to {planned:.0f} ({who}); add "
                f"{math.ceil((planned - bound) * spec.gold.per_page)} gold",
            )
        )
    waiting = [
        r
        for r in gold_rows(session, job)
        if not r.gold.active and is_placeholder_reason(r.gold.reason)
    ]
    if waiting:
        warnings.append(
            GoldWarning(
                "placeholder_reason",
                f"{len(waiting)} sampled gold wait for an expert's reason and are inactive until "
                "then (gold export, write the reasons, gold import): "
                + _names(r.image for r in waiting),
            )
        )
    no_reason = [r for r in rows if is_placeholder_reason(r.gold.reason)]
    if no_reason:
        warnings.append(
            GoldWarning(
                "no_reason",
                f"{len(no_reason)} gold without a reason (annotators who miss them learn nothing): "
                + _names(r.image for r in no_reason),
            )
        )
    warnings += _work_overlap_warnings(session, job, rows)
    warnings += _near_duplicate_warnings(session, job, rows, data_dir)
    exposure = bank_exposure(session, job, spec)
    warnings += [GoldWarning(code, message) for code, message in exposure.warnings()]
    shown = instruction_example_ids(session, job, spec)
    in_instructions = [r for r in rows if r.image.id in shown]
    if in_instructions:
        warnings.append(
            GoldWarning(
                "instruction_example",
                f"{len(in_instructions)} gold image(s) are shown with their answer in the "
                "instructions: " + _names(r.image for r in in_instructions),
            )
        )
    for r in rows:
        if set(spec.label_values) <= set(r.gold.accepted_answers):
            warnings.append(
                GoldWarning(
                    "accepts_everything",
                    f"gold {_names([r.image])} accepts every label, so it tests nothing",
                )
            )
    return GoldReport(
        n_gold=n_gold,
        by_label=dict(by_label),
        by_difficulty=dict(Counter(r.gold.difficulty for r in rows)),
        without_reason=len(no_reason),
        pages_bound=bound,
        planned_pages_per_annotator=planned,
        warnings=warnings,
        exposure=exposure,
    )


def _names(images, limit: int = 5) -> str:
    images = list(images)
    shown = ", ".join(Path(im.source_path).name for im in images[:limit])
    return shown + (f" (+{len(images) - limit} more)" if len(images) > limit else "")


def _balance_warnings(
    by_label: Counter, n_gold: int, spec: JobSpec, tolerance: float, min_per_class: int
) -> list[GoldWarning]:
    if n_gold == 0:
        return [GoldWarning("empty", "the gold bank is empty: import or sample test questions")]
    warnings = []
    for label in spec.label_values:
        if by_label.get(label, 0) < min_per_class:
            warnings.append(
                GoldWarning(
                    "imbalance",
                    f"only {by_label.get(label, 0)} gold with answer {label} (want >= "
                    f"{min_per_class}): annotators who always answer the other class go unnoticed",
                )
            )
    for label, expected in spec.quality.expected_prevalence.items():
        share = by_label.get(label, 0) / n_gold
        if abs(share - expected) > tolerance:
            warnings.append(
                GoldWarning(
                    "imbalance",
                    f"{share:.0%} of gold is {label} but about {expected:.0%} of the work is "
                    "expected to be: annotators could tell gold from work by its mix, and "
                    f"accuracy on gold "
                    f"would not predict accuracy on work",
                )
            )
    return warnings


def _work_overlap_warnings(session: Session, job: Job, rows: list[GoldRow]) -> list[GoldWarning]:
    image_ids = [r.image.id for r in rows]
    if not image_ids:
        return []
    judged = session.scalars(
        select(Judgment.image_id)
        .where(Judgment.image_id.in_(image_ids), Judgment.is_gold.is_(False))
        .distinct()
    ).all()
    reviews = dict(
        session.execute(
            select(ExpertReview.image_id, ExpertReview.promoted_to_gold).where(
                ExpertReview.image_id.in_(image_ids)
            )
        ).all()
    )
    # An expert's promotion (from the review queue, or confirming gold proposed from the
    # crowd) is logged for replay, and the annotators who judged the image are never served
    # it as gold (annotate/assignment.py): its work judgments leak nothing and skew nothing.
    flagged = (set(judged) - {i for i, promoted in reviews.items() if promoted}) | {
        i for i, promoted in reviews.items() if not promoted
    }
    images = [r.image for r in rows if r.image.id in flagged]
    if not images:
        return []
    return [
        GoldWarning(
            "judged_as_work",
            f"{len(images)} gold image(s) were already judged as work items (their work judgments "
            f"leak the answer and skew trust): {_names(images)}",
        )
    ]


def _confirmed(
    images_a: list[Image],
    images_b: list[Image],
    pairs: list[tuple[int, int, int]],
    data_dir: Path | None,
) -> list[tuple[int, int, int]]:
    """Keep the pHash pairs whose pixels also match (pHash alone confuses different X-rays);
    without the data folder every shortlisted pair is kept (the warning says "possible")."""
    if data_dir is None:
        return pairs
    from cxrlabel.ingest.dedup import NEAR_DUP_MAX_MAD, signature_from_file
    from cxrlabel.ingest.worker import mean_abs_diff

    cache: dict[int, np.ndarray | None] = {}

    def sig(image: Image) -> np.ndarray | None:
        if image.id not in cache:
            try:
                cache[image.id] = signature_from_file(data_dir / image.thumb_path)
            except OSError:
                cache[image.id] = None
        return cache[image.id]

    kept = []
    for i, j, d in pairs:
        a, b = sig(images_a[i]), sig(images_b[j])
        if a is None or b is None or mean_abs_diff(a, b) <= NEAR_DUP_MAX_MAD:
            kept.append((i, j, d))
    return kept


def _near_duplicate_warnings(
    session: Session, job: Job, rows: list[GoldRow], data_dir: Path | None = None
) -> list[GoldWarning]:
    kind = "near-duplicates" if data_dir is not None else "possible near-duplicates"
    gold_images = [r.image for r in rows]
    hashes = [im.phash for im in gold_images]
    warnings = []
    pairs = near_duplicate_pairs(hashes)
    for i, j, d in _confirmed(gold_images, gold_images, pairs, data_dir):
        warnings.append(
            GoldWarning(
                "near_duplicate",
                f"gold {_names([gold_images[i]])} and {_names([gold_images[j]])} are {kind}"
                f" (phash distance {d}): one of them tests nothing new",
            )
        )
    work = session.scalars(
        select(Image).where(Image.job_id == job.id, Image.status != ImageStatus.GOLD)
    ).all()
    pairs = near_duplicate_pairs(hashes, [im.phash for im in work])
    for i, j, d in _confirmed(gold_images, list(work), pairs, data_dir):
        warnings.append(
            GoldWarning(
                "near_duplicate_work",
                f"gold {_names([gold_images[i]])} looks like work image {_names([work[j]])} "
                f"(phash distance {d}): annotators may recognise the test question",
            )
        )
    return warnings
