"""What a simulated run achieved, read back from the database the engines wrote.

Definitions (also in docs/simulation.md):

* ``label_accuracy``: among work images (not gold) that have a reference label and a final
  label (status ``finalised`` or ``expert``), the share whose label equals the reference.
  ``coverage`` says what share of work images got a final label at all.
* ``judgments_per_image``: every crowd judgment on a work image, tainted ones included (they
  were paid for), divided by the number of work images. ``trusted_judgments_per_image`` counts
  only the ones that still count. Gold answers are reported separately (``gold_overhead``).
* ``expert_review_fraction``: work images labelled by the expert / work images.
  ``accuracy_finalised`` / ``accuracy_expert``: label accuracy of the images the crowd settled
  and of those the expert labelled (where the remaining errors come from).
* ``annotators_removed``: annotators removed by quality control or disqualified by the quiz;
  ``bad_annotators_removed``: those among them whose persona is a bad one (spammer,
  adversarial, gold harvester, or expected accuracy below the job's ``gold.min_accuracy``);
  ``bad_annotators``: bad ones who arrived; ``removal_precision`` = bad removed / removed,
  ``removal_recall`` = bad removed / bad; ``honest_retention``: share of the other (honest)
  arrivals still allowed to work at the end; ``by_persona[...]["retention"]`` per persona.
* ``cost``: submitted pages (quiz and work, also from annotators removed later) x
  ``pay.per_page`` (quiz pages paid, as the design estimator assumes by default;
  ``cost_quiz_unpaid`` is the Appen rule: quiz pages are not paid); ``hours``: simulated
  hours from the first arrival to the last crowd submission; ``expert_hours``: the
  expert's simulated reading time.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select

from cxrlabel.jobspec import JobSpec
from cxrlabel.sim.crowd import CrowdSpec
from cxrlabel.sim.engine import SimRecord
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import (
    AnnotatorState,
    AnnotatorStatus,
    AuditEvent,
    ExpertReview,
    Image,
    ImageStatus,
    Judgment,
)

FINAL_STATUSES = (ImageStatus.FINALISED, ImageStatus.EXPERT)
OUT_STATUSES = (AnnotatorStatus.REMOVED, AnnotatorStatus.DISQUALIFIED)


def summarise(
    db: Database,
    job_id: int,
    spec: JobSpec,
    crowd: CrowdSpec,
    record: SimRecord,
) -> dict[str, Any]:
    with db.session() as session:
        images = session.execute(
            select(
                Image.id, Image.status, Image.label, Image.reference_label, Image.trusted_judgments
            ).where(Image.job_id == job_id)
        ).all()
        per_image = dict(
            session.execute(
                select(Judgment.image_id, func.count())
                .where(Judgment.job_id == job_id, Judgment.is_gold.is_(False))
                .group_by(Judgment.image_id)
            ).all()
        )
        gold_answers = (
            session.scalar(
                select(func.count()).where(Judgment.job_id == job_id, Judgment.is_gold.is_(True))
            )
            or 0
        )
        tainted = (
            session.scalar(
                select(func.count()).where(
                    Judgment.job_id == job_id,
                    Judgment.is_gold.is_(False),
                    Judgment.tainted.is_(True),
                )
            )
            or 0
        )
        expert_ids = set(
            session.scalars(
                select(ExpertReview.image_id)
                .join(Image, Image.id == ExpertReview.image_id)
                .where(Image.job_id == job_id)
            )
        )
        states = {
            row.user_id: row
            for row in session.scalars(
                select(AnnotatorState).where(AnnotatorState.job_id == job_id)
            )
        }
    work = [row for row in images if row.status not in ImageStatus.NOT_WORK or row.id in expert_ids]
    n_training = sum(row.status == ImageStatus.TRAINING for row in images)
    n_work = len(work)
    final = [row for row in work if row.status in FINAL_STATUSES and row.label is not None]
    scored = [row for row in final if row.reference_label is not None]
    correct = sum(row.label == row.reference_label for row in scored)
    by_crowd = [row for row in scored if row.status == ImageStatus.FINALISED]
    by_expert = [row for row in scored if row.status == ImageStatus.EXPERT]
    judgments = sum(per_image.get(row.id, 0) for row in work)
    expert_on_work = len(
        [row for row in work if row.id in expert_ids or row.status == ImageStatus.EXPERT]
    )
    removal = removal_stats(record, states, spec, crowd)
    status_counts = Counter(row.status for row in work)
    return {
        "job": None,  # filled by the caller
        "crowd": crowd.name,
        "images": n_work,
        "gold_items": len(images) - n_work - n_training,
        "training_items": n_training,  # the training pool (issue 17): neither work nor gold
        "label_accuracy": _ratio(correct, len(scored)),
        # Where the errors come from: labels the crowd settled vs labels the expert gave.
        "accuracy_finalised": _ratio(
            sum(r.label == r.reference_label for r in by_crowd), len(by_crowd)
        ),
        "accuracy_expert": _ratio(
            sum(r.label == r.reference_label for r in by_expert), len(by_expert)
        ),
        "labelled_images": len(final),
        "coverage": _ratio(len(final), n_work),
        "judgments_per_image": _ratio(judgments, n_work),
        "trusted_judgments_per_image": _ratio(sum(row.trusted_judgments for row in work), n_work),
        "tainted_judgments": int(tainted),
        "gold_overhead": _ratio(gold_answers, judgments + gold_answers),
        "expert_review_fraction": _ratio(expert_on_work, n_work),
        "expert_reviews": record.expert_reviews,
        **record.gold_top_up.as_dict(),  # simulate --gold-top-up (sim/topup.py); 0 when off
        "images_by_status": dict(sorted(status_counts.items())),
        **removal,
        "pages": record.pages_submitted,
        "quiz_pages": record.quiz_pages,
        "training_pages": record.training_pages,  # paid only with pay.training_paid
        "cost": round(_paid_pages(record, spec) * spec.pay.per_page, 2),
        "cost_quiz_unpaid": round(
            (record.pages_submitted - record.quiz_pages - record.training_pages)
            * spec.pay.per_page,
            2,
        ),
        "currency": spec.pay.currency,
        "cost_per_image": _ratio(_paid_pages(record, spec) * spec.pay.per_page, n_work, 4),
        "hours": round((record.crowd_end - record.start).total_seconds() / 3600, 2),
        "expert_hours": round(record.expert_seconds / 3600, 2),
        "annotator_hours": round(sum(a.seconds_worked for a in record.annotators) / 3600, 2),
        "annotators_arrived": sum(a.user_id is not None for a in record.annotators),
        "stopped_by": record.stopped_by,
        "rejected_submissions": dict(sorted(record.rejected_submissions.items())),
        "by_persona": by_persona(record, states),
    }


NEEDS_REVIEW_ACTION = "quality.image_needs_review"
DIFFICULTY_BANDS = 5


def error_breakdown(db: Database, job_id: int, difficulty: Mapping[int, float]) -> dict[str, Any]:
    """Where the wrong labels come from (``errors`` in the result): images the crowd settled,
    images the expert labelled per review reason (the last ``needs_review`` decision's
    ``review_reason`` in the audit log), and both per band of the simulated difficulty
    percentile (fifths). Counts only work images with a final label and a reference label."""
    with db.session() as session:
        rows = session.execute(
            select(Image.id, Image.status, Image.label, Image.reference_label).where(
                Image.job_id == job_id,
                Image.status.in_(FINAL_STATUSES),
                Image.label.is_not(None),
                Image.reference_label.is_not(None),
            )
        ).all()
        reasons: dict[int, str] = {}
        for subject, payload in session.execute(
            select(AuditEvent.subject, AuditEvent.payload)
            .where(AuditEvent.job_id == job_id, AuditEvent.action == NEEDS_REVIEW_ACTION)
            .order_by(AuditEvent.id)
        ):
            if subject and subject.startswith("image:"):
                reasons[int(subject.split(":", 1)[1])] = str(payload.get("review_reason"))
    finalised = _tally()
    by_reason: dict[str, dict[str, int]] = defaultdict(_tally)
    bands = [_tally(finalised=0, wrong_finalised=0) for _ in range(DIFFICULTY_BANDS)]
    for row in rows:
        wrong = int(row.label != row.reference_label)
        crowd = row.status == ImageStatus.FINALISED
        group = finalised if crowd else by_reason[reasons.get(row.id, "unknown")]
        group["images"] += 1
        group["wrong"] += wrong
        band = bands[min(DIFFICULTY_BANDS - 1, int(difficulty.get(row.id, 0.5) * DIFFICULTY_BANDS))]
        band["images"] += 1
        band["wrong"] += wrong
        band["finalised"] += int(crowd)
        band["wrong_finalised"] += wrong * int(crowd)
    return {
        "finalised": finalised,
        "expert_by_review_reason": dict(sorted(by_reason.items())),
        "by_difficulty": [
            {"from": k / DIFFICULTY_BANDS, "to": (k + 1) / DIFFICULTY_BANDS, **band}
            for k, band in enumerate(bands)
        ],
    }


def _tally(**extra: int) -> dict[str, int]:
    return {"images": 0, "wrong": 0, **extra}


def removal_stats(
    record: SimRecord,
    states: dict[int, AnnotatorState],
    spec: JobSpec,
    crowd: CrowdSpec,
) -> dict[str, Any]:
    prevalence = dict(spec.quality.expected_prevalence) or {
        label: 1 / len(spec.label_values) for label in spec.label_values
    }
    arrived = [a for a in record.annotators if a.user_id is not None]
    bad = {
        a.user_id
        for a in arrived
        if a.persona.is_bad(prevalence, spec.label_values, spec.gold.min_accuracy)
    }
    removed = {
        uid
        for uid, s in states.items()
        if s.status in OUT_STATUSES and uid in {a.user_id for a in arrived}
    }
    hits = len(removed & bad)
    honest = {a.user_id for a in arrived} - bad
    return {
        "annotators_removed": len(removed),
        "bad_annotators_removed": hits,
        "bad_annotators": len(bad),
        "removal_precision": _ratio(hits, len(removed)),
        "removal_recall": _ratio(hits, len(bad)),
        # Honest annotators (not a bad persona) still allowed to work at the end.
        "honest_retention": _ratio(len(honest - removed), len(honest)),
    }


def by_persona(record: SimRecord, states: dict[int, AnnotatorState]) -> dict[str, Any]:
    groups: dict[str, list[Any]] = defaultdict(list)
    for a in record.annotators:
        if a.user_id is not None:
            groups[a.persona.name].append(a)
    out: dict[str, Any] = {}
    for name, members in sorted(groups.items()):
        rows = [states.get(a.user_id) for a in members]
        trusts = [r.trust for r in rows if r is not None and r.gold_seen > 0]
        removed = sum(1 for r in rows if r is not None and r.status in OUT_STATUSES)
        out[name] = {
            "annotators": len(members),
            "removed": removed,
            "retention": _ratio(len(members) - removed, len(members)),
            "pages": sum(a.pages_submitted for a in members),
            "work_judgments": sum(r.judgments for r in rows if r is not None),
            "mean_trust": round(sum(trusts) / len(trusts), 4) if trusts else None,
        }
    return out


def annotator_rows(db: Database, job_id: int, record: SimRecord) -> list[dict[str, Any]]:
    """Per simulated annotator: persona, final status and trust (for plots and the JSON)."""
    with db.session() as session:
        states = {
            row.user_id: row
            for row in session.scalars(
                select(AnnotatorState).where(AnnotatorState.job_id == job_id)
            )
        }
    rows = []
    for a in record.annotators:
        state = states.get(a.user_id) if a.user_id is not None else None
        if state is None:
            continue
        rows.append(
            {
                "username": a.username,
                "persona": a.persona.name,
                "status": state.status,
                "trust": round(state.trust, 4),
                "gold_seen": state.gold_seen,
                "judgments": state.judgments,
                "pages": a.pages_submitted,
                "speed_trips": state.speed_trips,
            }
        )
    return rows


def accuracy_by_judgments(db: Database, job_id: int) -> dict[int, tuple[int, int]]:
    """Per number of crowd judgments on an image: (images, correct) among final labels."""
    with db.session() as session:
        counts = dict(
            session.execute(
                select(Judgment.image_id, func.count())
                .where(Judgment.job_id == job_id, Judgment.is_gold.is_(False))
                .group_by(Judgment.image_id)
            ).all()
        )
        rows = session.execute(
            select(Image.id, Image.status, Image.label, Image.reference_label).where(
                Image.job_id == job_id
            )
        ).all()
    table: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        if row.status not in FINAL_STATUSES or row.reference_label is None or row.label is None:
            continue
        cell = table[counts.get(row.id, 0)]
        cell[0] += 1
        cell[1] += int(row.label == row.reference_label)
    return {k: (v[0], v[1]) for k, v in sorted(table.items())}


def _ratio(numerator: float, denominator: float, digits: int = 4) -> float | None:
    return round(numerator / denominator, digits) if denominator else None


def _paid_pages(record: SimRecord, spec: JobSpec) -> int:
    """Pages the crowd is paid for: every submitted page, training only when the job pays it."""
    unpaid = 0 if spec.pay.training_paid else record.training_pages
    return record.pages_submitted - unpaid
