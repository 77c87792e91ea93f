"""Replay: the quality state recomputed from the audit log, and its check against the stored
rows (``cxrlabel quality replay``; ``--fix`` writes the replayed state back).

The log's inputs (``store.INPUT_ACTIONS``) in id order are the events; replaying them through
the pure ``Engine`` must give the state the incremental path stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cxrlabel.jobspec import JobSpec
from cxrlabel.storage.models import (
    AnnotatorState,
    AuditEvent,
    Contest,
    GoldItem,
    Image,
    Job,
    Judgment,
)

from .engine import Engine, new_state
from .events import (
    AnnotatorReinstated,
    AnnotatorRemoved,
    ContestOpened,
    ContestUpheld,
    Event,
    ExpertLabeled,
    GoldChanged,
    PageSubmitted,
)
from .rows import (
    annotator_rec,
    image_rec,
    judgment_rec,
    set_changed,
    write_annotator,
    write_image,
    write_judgment,
)
from .state import AnswerCounts, GoldRec, QualityState
from .store import (
    ADMIN_REINSTATED,
    ADMIN_REMOVED,
    CONTEST_OPENED,
    CONTEST_UPHELD,
    EXPERT_LABELED,
    GOLD_CHANGED,
    INPUT_ACTIONS,
    PAGE_SUBMITTED,
    judgment_in,
    lock_job,
)

RowT = TypeVar("RowT", Image, Judgment)


def load_events(session: Session, job: Job) -> list[Event]:
    """The quality inputs of a job, in the order they were decided (audit log order)."""
    audit = session.scalars(
        select(AuditEvent)
        .where(AuditEvent.job_id == job.id, AuditEvent.action.in_(INPUT_ACTIONS))
        .order_by(AuditEvent.id)
    ).all()
    judgment_ids = [
        jid for a in audit if a.action == PAGE_SUBMITTED for jid in a.payload["judgment_ids"]
    ]
    rows: dict[int, Judgment] = {}
    for chunk in range(0, len(judgment_ids), 5000):
        ids = judgment_ids[chunk : chunk + 5000]
        rows.update(
            (j.id, j) for j in session.scalars(select(Judgment).where(Judgment.id.in_(ids)))
        )
    events: list[Event] = []
    for a in audit:
        p = a.payload
        if a.action == PAGE_SUBMITTED:
            events.append(
                PageSubmitted(
                    user_id=p["user_id"],
                    page_id=p["page_id"],
                    kind=p["kind"],
                    seconds=float(p["seconds"]),
                    active_gold=p.get("active_gold"),
                    judgments=tuple(judgment_in(rows[j]) for j in p["judgment_ids"]),
                )
            )
        elif a.action == GOLD_CHANGED:
            events.append(GoldChanged(p["image_id"], tuple(p["new"]), a.actor_id))
        elif a.action == CONTEST_OPENED:
            events.append(ContestOpened(p["contest_id"], p["judgment_id"], p["user_id"]))
        elif a.action == CONTEST_UPHELD:
            judgment_id, user_id = p.get("judgment_id"), p.get("user_id")
            if judgment_id is None:  # logged before the payload named them
                contest = session.get_one(Contest, p["contest_id"])
                judgment_id, user_id = contest.judgment_id, contest.user_id
            assert user_id is not None  # a contest always names its annotator
            events.append(ContestUpheld(p["contest_id"], judgment_id, user_id))
        elif a.action == ADMIN_REMOVED:
            events.append(AnnotatorRemoved(p["user_id"], p["reason"], a.actor_id))
        elif a.action == ADMIN_REINSTATED:
            events.append(AnnotatorReinstated(p["user_id"], p["reason"], a.actor_id))
        elif a.action == EXPERT_LABELED:
            events.append(
                ExpertLabeled(
                    p["image_id"],
                    p["label"],
                    a.actor_id or 0,
                    bool(p.get("promote_to_gold")),
                    p.get("gold_difficulty") or "hard",  # older logs: promotion was always hard
                )
            )
    return events


def _initial_gold(session: Session, job: Job, events: list[Event]) -> list[GoldRec]:
    """Gold as it was before the log: the first correction's 'old' answers, else today's;
    items created by an expert promotion in the log are left for that event to create."""
    promoted = {e.image_id for e in events if isinstance(e, ExpertLabeled) and e.promote_to_gold}
    first_old: dict[int, list[str]] = {}
    for a in session.scalars(
        select(AuditEvent)
        .where(AuditEvent.job_id == job.id, AuditEvent.action == GOLD_CHANGED)
        .order_by(AuditEvent.id)
    ):
        first_old.setdefault(a.payload["image_id"], a.payload["old"])
    return [
        # Difficulty as it is today (an input, like the model score: edit it before answers).
        GoldRec(
            g.image_id,
            tuple(first_old.get(g.image_id, g.accepted_answers)),
            g.active,
            g.difficulty or "medium",
        )
        for g in session.scalars(select(GoldItem).where(GoldItem.job_id == job.id))
        if g.image_id not in promoted
    ]


def replay(session: Session, job: Job, spec: JobSpec) -> QualityState:
    """Recompute the whole quality state of a job from its stored event log (reads only).

    With a model rule on (disagreement review, or fewer judgments when the model agrees), the
    images' current model scores are inputs
    too (scores are meant to be set before crowd work starts; re-scoring later changes what
    replay computes for images already decided, and ``verify_replay`` lists them).
    """
    events = load_events(session, job)
    state = new_state(spec)
    if (
        spec.review.model_disagreement_threshold is not None
        or spec.judgments.min_if_model_agrees > 0
    ):
        state.model_scores = {
            image_id: score
            for image_id, score in session.execute(
                select(Image.id, Image.model_score).where(
                    Image.job_id == job.id, Image.model_score.is_not(None)
                )
            )
            if score is not None
        }
    for gold in _initial_gold(session, job, events):
        state.add_gold(gold)
    engine = Engine(state, spec)
    for event in events:
        engine.apply(event)
    return state


@dataclass
class ReplayReport:
    events: int
    annotators: int
    images: int
    judgments: int
    differences: list[str]
    unprocessed_judgments: int  # judgments in the table that no logged page covers
    fixed: bool = False

    @property
    def matched(self) -> bool:
        return not self.differences and not self.unprocessed_judgments


def stored_snapshot(session: Session, job: Job, replayed: QualityState) -> dict[str, Any]:
    """The stored rows for everything the replay decided, in the snapshot's shape."""
    mirror = QualityState()
    for row in session.scalars(
        select(AnnotatorState).where(
            AnnotatorState.job_id == job.id,
            AnnotatorState.user_id.in_(list(replayed.annotators) or [-1]),
        )
    ):
        mirror.annotators[row.user_id] = annotator_rec(row)
    for image in _rows_by_id(session, Image, list(replayed.images)):
        mirror.images[image.id] = image_rec(image)
    tainted_column: dict[int, bool] = {}
    for judgment in _rows_by_id(session, Judgment, list(replayed.judgments)):
        mirror.judgments[judgment.id] = judgment_rec(judgment)
        tainted_column[judgment.id] = bool(judgment.tainted)
    for g in session.scalars(select(GoldItem).where(GoldItem.job_id == job.id)):
        mirror.gold[g.image_id] = GoldRec(
            g.image_id, tuple(g.accepted_answers), g.active, g.difficulty or "medium"
        )
    snapshot = mirror.snapshot()
    # Compare the stored ``tainted`` column itself, not only the reason it is parsed from.
    snapshot["judgments"] = {
        jid: (tainted_column[jid], *view[1:]) for jid, view in snapshot["judgments"].items()
    }
    return snapshot


def _rows_by_id(session: Session, model: type[RowT], ids: list[int]) -> Iterator[RowT]:
    """The rows of ``model`` with these ids, 5,000 ids per query."""
    for chunk in range(0, len(ids), 5000):
        yield from session.scalars(select(model).where(model.id.in_(ids[chunk : chunk + 5000])))


def _diff(replayed: dict[str, Any], stored: dict[str, Any], limit: int = 50) -> list[str]:
    out: list[str] = []
    for section in ("annotators", "images", "judgments", "gold"):
        want, have = replayed[section], stored[section]
        for key in sorted(set(want) | set(have)):
            w, h = want.get(key), have.get(key)
            if section == "gold" and w is not None and h is not None:
                w, h = (tuple(sorted(w[0])), w[1]), (tuple(sorted(h[0])), h[1])
            if w != h:
                out.append(f"{section[:-1]} {key}: stored {h!r} != replayed {w!r}")
                if len(out) >= limit:
                    return out + ["(more differences not shown)"]
    return out


def _diff_counts(session: Session, job: Job, replayed: QualityState) -> list[str]:
    """Kept answer counts (``annotator_states.answer_counts``) against the replayed ones."""
    out = []
    for user_id, stored in session.execute(
        select(AnnotatorState.user_id, AnnotatorState.answer_counts)
        .where(AnnotatorState.job_id == job.id, AnnotatorState.answer_counts.is_not(None))
        .order_by(AnnotatorState.user_id)
    ):
        if stored is None:  # JSON null
            continue
        want = replayed.counts(user_id).to_dict()
        if AnswerCounts.from_dict(stored).to_dict() != want:
            out.append(f"answer counts {user_id}: stored {stored!r} != replayed {want!r}")
    return out


def verify_replay(
    session: Session, job: Job, spec: JobSpec, fix: bool = False, now: datetime | None = None
) -> ReplayReport:
    """Replay the log and compare with the stored state; ``fix`` writes the replayed state."""
    replayed = replay(session, job, spec)
    differences = _diff(replayed.snapshot(), stored_snapshot(session, job, replayed))
    differences += _diff_counts(session, job, replayed)
    covered = len(replayed.judgments)
    total = int(
        session.scalar(select(func.count()).select_from(Judgment).where(Judgment.job_id == job.id))
        or 0
    )
    report = ReplayReport(
        events=len(load_events(session, job)),
        annotators=len(replayed.annotators),
        images=len(replayed.images),
        judgments=covered,
        differences=differences,
        unprocessed_judgments=total - covered,
    )
    if fix and differences:
        lock_job(session, job)
        _write_replayed(session, job, replayed, now or datetime.now(UTC))
        report.fixed = True
    return report


def _write_replayed(session: Session, job: Job, state: QualityState, now: datetime) -> None:
    for user_id, rec in state.annotators.items():
        row = session.scalar(
            select(AnnotatorState).where(
                AnnotatorState.job_id == job.id, AnnotatorState.user_id == user_id
            )
        )
        if row is None:
            row = AnnotatorState(job_id=job.id, user_id=user_id, status=rec.status, flags={})
            session.add(row)
        write_annotator(row, rec, now)
        set_changed(row, "answer_counts", state.counts(user_id).to_dict())
    for image_id, image_rec_ in state.images.items():
        write_image(session.get_one(Image, image_id), image_rec_)
    for judgment_id, judgment_rec_ in state.judgments.items():
        write_judgment(session.get_one(Judgment, judgment_id), judgment_rec_)
    for image_id, gold_rec in state.gold.items():
        gold = session.scalar(select(GoldItem).where(GoldItem.image_id == image_id))
        if gold is not None and sorted(gold.accepted_answers) != sorted(gold_rec.accepted):
            gold.accepted_answers = list(gold_rec.accepted)
    session.flush()
