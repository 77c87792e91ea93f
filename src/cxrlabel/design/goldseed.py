"""Seeding the gold bank from reference labels (``cxrlabel gold sample --from-reference N``):
balanced per class, one image per patient, no near-duplicates, optionally the clearest cases
only. For demos and simulations; a real bank needs an expert's reason per image.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from cxrlabel.design.goldbank import ImportSummary, instruction_example_ids, make_gold
from cxrlabel.design.goldcheck import near_duplicate_pairs, shortlist_distance
from cxrlabel.design.goldreason import GENERIC_REASON, REFERENCE_REASON
from cxrlabel.jobspec import JobSpec
from cxrlabel.storage.models import AuditEvent, Image, ImageStatus, Job, Judgment, utcnow
from cxrlabel.vocab import PNEUMONIA


def sample_from_reference(
    session: Session,
    job: Job,
    spec: JobSpec,
    n: int,
    seed: int = 0,
    now: datetime | None = None,
    *,
    clearest_fraction: float = 1.0,
    clarity: Mapping[int, float] | None = None,
    needs_reasons: bool = False,
) -> tuple[ImportSummary, dict[str, int]]:
    """Seed the bank with ``n`` never-judged images that carry a reference label, balanced per
    class, one per patient and no near-duplicates. Reasons say it is the source's reference
    label (the demo and the simulator use them as they are). ``needs_reasons`` (``cxrlabel
    gold sample``): the reasons carry the placeholder mark and the items stay inactive until
    an expert's reason replaces it (``gold import`` or the admin gold page).

    ``clearest_fraction`` < 1 draws the gold only from the clearest part of each class, as a
    job designer picks clear teaching cases as test questions (a test question on an image
    experts themselves find borderline measures luck, not care). Clarity is per image id,
    lower = clearer: ``clarity`` when given (the simulator passes its cross-fitted pixel
    difficulty), else the image's model score (``Image.model_score``, p of the positive
    class) read as distance from the reference label. Never the label alone: two images with
    the same label differ in clarity."""
    chosen = pick_reference_images(
        session, job, spec, n, seed, clearest_fraction=clearest_fraction, clarity=clarity
    )
    summary = ImportSummary()
    if not chosen:
        return summary, {}
    now = now or utcnow()
    texts = {c.value: c for c in spec.question.labels}
    for image in chosen:
        choice = texts[_reference_label(image)]
        template = GENERIC_REASON if needs_reasons else REFERENCE_REASON
        reason = template.format(text=choice.text, hint=choice.hint or "").replace("  ", " ")
        make_gold(session, job, image, [choice.value], reason, "medium", "reference", now, summary)
    session.add(
        AuditEvent(
            at=now,
            job_id=job.id,
            action="gold.sample_reference",
            subject=str(n),
            payload={
                "created": summary.created,
                "seed": seed,
                "images": summary.public_ids,
                "clearest_fraction": clearest_fraction,
            },
        )
    )
    session.flush()
    return summary, dict(Counter(_reference_label(im) for im in chosen))


def pick_reference_images(
    session: Session,
    job: Job,
    spec: JobSpec,
    n: int,
    seed: int = 0,
    *,
    clearest_fraction: float = 1.0,
    clarity: Mapping[int, float] | None = None,
) -> list[Image]:
    """``n`` never-judged work images with a reference label, balanced per class, one per
    patient, no near-duplicates (the gold sampler's and the training pool's draw). Gold,
    training and held images are not work (``needs_judgments``), so never drawn again."""
    check_draw(n, clearest_fraction)
    judged = select(Judgment.image_id).where(Judgment.job_id == job.id)
    candidates = session.scalars(
        select(Image)
        .where(
            Image.job_id == job.id,
            Image.status == ImageStatus.NEEDS_JUDGMENTS,
            Image.reference_label.in_(spec.label_values),
            Image.id.not_in(judged),
        )
        .order_by(Image.id)
    ).all()
    examples = instruction_example_ids(session, job, spec)
    candidates = [im for im in candidates if im.id not in examples]
    per_label = {
        label: [im for im in candidates if im.reference_label == label]
        for label in spec.label_values
    }
    if clearest_fraction < 1.0:
        scores = clarity if clarity is not None else model_clarity(candidates, spec)
        per_label = {
            label: clearest(pool, scores, clearest_fraction) for label, pool in per_label.items()
        }
    return draw_balanced(per_label, n, seed)


def check_draw(n: int, clearest_fraction: float) -> None:
    """The sample size and clearest fraction every gold draw accepts."""
    if n < 1:
        raise ValueError("sample size must be >= 1")
    if not 0.0 < clearest_fraction <= 1.0:
        raise ValueError("clearest_fraction must be in (0, 1]")


def draw_balanced(per_label: dict[str, list[Image]], n: int, seed: int) -> list[Image]:
    """``n`` images balanced per label from the (shuffled by ``seed``) pools, one per patient,
    no near-duplicates: the one draw behind reference gold, crowd gold and the training pool."""
    rng = random.Random(seed)
    for pool in per_label.values():
        rng.shuffle(pool)
    return pick_distinct(per_label, balanced_quotas(n, list(per_label)), shortlist_distance())


def balanced_quotas(n: int, labels: list[str]) -> dict[str, int]:
    """``n`` split evenly over ``labels`` (the first ones take the remainder)."""
    quotas = {label: n // len(labels) for label in labels}
    for label in labels[: n % len(labels)]:
        quotas[label] += 1
    return quotas


def has_model_scores(session: Session, job: Job) -> bool:
    """Whether any image of the job has a model score (``cxrlabel score``): without one,
    ``--clearest`` reads clarity from the crowd's agreement instead (``design/crowdgold.py``)."""
    return (
        session.scalar(
            select(Image.id).where(Image.job_id == job.id, Image.model_score.is_not(None)).limit(1)
        )
        is not None
    )


def _reference_label(image: Image) -> str:
    """The label of an image drawn by label (``per_label`` holds labelled images only)."""
    if image.reference_label is None:
        raise ValueError(f"image {image.public_id} has no reference label")
    return image.reference_label


def clearest(pool: list[Image], clarity: Mapping[int, float], fraction: float) -> list[Image]:
    """The clearest ``fraction`` of ``pool`` (at least one image), in the pool's order.

    Images without a clarity score are left out: "clear" must be known, not assumed."""
    scored = [im for im in pool if im.id in clarity]
    keep = max(1, math.ceil(fraction * len(scored))) if scored else 0
    ranked = sorted(scored, key=lambda im: (clarity[im.id], im.id))[:keep]
    kept = {im.id for im in ranked}
    return [im for im in pool if im.id in kept]


def model_clarity(images: list[Image], spec: JobSpec) -> dict[int, float]:
    """Clarity from ``Image.model_score`` (p of the positive class): the model's distance
    from each image's reference label (0 = the model is sure of that label)."""
    labels = spec.label_values
    if len(labels) != 2:
        raise ValueError("clarity from model scores needs a two-label job; pass clarity")
    positive = PNEUMONIA if PNEUMONIA in labels else labels[-1]
    out = {
        im.id: (1.0 - im.model_score if im.reference_label == positive else im.model_score)
        for im in images
        if im.model_score is not None
    }
    if not out:
        raise ValueError(
            "no candidate image has a model score: score the job's images "
            "first (cxrlabel score) or pass clarity"
        )
    return out


def pick_distinct(
    per_label: dict[str, list[Image]], quotas: dict[str, int], threshold: int
) -> list[Image]:
    """Up to ``quotas[label]`` images of each pool, in pool order: one per patient, no
    near-duplicates of an image already chosen."""
    chosen: list[Image] = []
    patients: set[str] = set()
    for label, pool in per_label.items():
        taken = 0
        for image in pool:
            if taken == quotas[label]:
                break
            if image.patient_id and image.patient_id in patients:
                continue  # one gold per patient: siblings would test the same picture twice
            if chosen and near_duplicate_pairs([image.phash], [c.phash for c in chosen], threshold):
                continue
            chosen.append(image)
            taken += 1
            if image.patient_id:
                patients.add(image.patient_id)
    return chosen
