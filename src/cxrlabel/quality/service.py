"""Database adapter of the quality engine: rows in, events through ``Engine``, rows and audit out.

Everything here runs inside the caller's transaction (the web app's request or the simulator's
unit of work). Each mutating entry point first locks the job row, so on PostgreSQL quality
updates of one job are serialised and the audit log's order is the order in which the decisions
were made; that order is what ``replay`` follows. (SQLite already serialises writers with
``BEGIN IMMEDIATE``.)

The audit log holds two kinds of rows:

* inputs (``INPUT_ACTIONS``): a submitted page, an admin removing or reinstating someone, a gold
  correction, a contest, an expert label. Replaying them in order recomputes the whole state;
* decisions (``quality.*``): what the engine concluded and why (reason plus the numbers used).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from cxrlabel.annotate.schemas import EngineError
from cxrlabel.jobspec import JobSpec
from cxrlabel.storage.models import (
    AnnotatorState,
    AnnotatorStatus,
    AuditEvent,
    Contest,
    ExpertReview,
    GoldItem,
    Image,
    ImageStatus,
    Job,
    Judgment,
    Page,
    Role,
    User,
)

from .consensus import ConsensusParams, evaluate
from .engine import Decision, Engine, new_state
from .events import (
    AnnotatorReinstated,
    AnnotatorRemoved,
    ContestOpened,
    Event,
    ExpertLabeled,
    GoldChanged,
    JudgmentIn,
    PageSubmitted,
)
from .state import (
    AnnotatorRec,
    AnswerCounts,
    GoldRec,
    ImageRec,
    JudgmentRec,
    QualityState,
)

# Audit actions that are inputs of the quality state (replayed in log order).
PAGE_SUBMITTED = "page.submitted"
GOLD_CHANGED = "gold.changed"
CONTEST_OPENED = "contest.opened"
ADMIN_REMOVED = "admin.annotator_removed"
ADMIN_REINSTATED = "admin.annotator_reinstated"
EXPERT_LABELED = "expert.labeled"
INPUT_ACTIONS = (
    PAGE_SUBMITTED, GOLD_CHANGED, CONTEST_OPENED, ADMIN_REMOVED, ADMIN_REINSTATED, EXPERT_LABELED
)
# Audit actions that change nothing the engine computes.
CONTEST_UPHELD = "contest.upheld"
CONTEST_CHANGED = "contest.changed"
MESSAGE_SENT = "admin.message_sent"
GOLD_EDITED = "gold.edited"


class QualityError(EngineError):
    """A refused quality action (bad input, wrong role, conflict); nothing was changed."""


class ReviewConflict(QualityError):
    def __init__(self, message: str) -> None:
        super().__init__("review_conflict", message, 409)


@dataclass(frozen=True)
class MissedGoldItem:
    judgment_id: int
    image_public_id: str
    given_answer: str
    accepted_answers: list[str]
    reason: str


@dataclass
class PageOutcome:
    quiz_passed: bool | None
    quiz_accuracy: float | None
    annotator_status: str
    trust: float
    warnings: list[str] = field(default_factory=list)
    missed_gold: list[MissedGoldItem] = field(default_factory=list)
    gold_seen: int = 0  # gold items on this page
    message: str | None = None  # the annotator's pending message, if any


# --- time ----------------------------------------------------------------------------------------

def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored as UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


# --- rows <-> records ---------------------------------------------------------------------------

def _annotator_rec(row: AnnotatorState) -> AnnotatorRec:
    return AnnotatorRec(
        user_id=row.user_id, status=row.status, status_reason=row.status_reason,
        trust=row.trust, gold_seen=row.gold_seen, gold_missed=row.gold_missed,
        gold_contested=row.gold_contested, gold_forgiven=row.gold_forgiven,
        judgments=row.judgments, speed_trips=row.speed_trips, flags=dict(row.flags or {}),
        message=row.message, quiz_passed=row.quiz_passed_at is not None,
    )


def _image_rec(row: Image) -> ImageRec:
    return ImageRec(
        image_id=row.id, status=row.status, judgment_target=row.judgment_target,
        trusted_judgments=row.trusted_judgments, label=row.label, confidence=row.confidence,
        proba=dict(row.proba) if row.proba is not None else None,
        aggregation_method=row.aggregation_method,
    )


def _judgment_rec(row: Judgment) -> JudgmentRec:
    return JudgmentRec(
        id=row.id, image_id=row.image_id, user_id=row.user_id, page_id=row.page_id,
        answer=row.answer, certainty=row.certainty, quality_flag=row.quality_flag,
        is_gold=row.is_gold, is_quiz=row.is_quiz, gold_missed=row.gold_missed,
        trust_at_time=row.trust_at_time, taints=JudgmentRec.parse_taints(row.taint_reason),
    )


def _set(row: Any, name: str, value: Any) -> None:
    if getattr(row, name) != value:
        setattr(row, name, value)


def _write_annotator(row: AnnotatorState, rec: AnnotatorRec, now: datetime) -> None:
    for name in ("status", "status_reason", "trust", "gold_seen", "gold_missed",
                 "gold_contested", "gold_forgiven", "judgments", "speed_trips", "message"):
        _set(row, name, getattr(rec, name))
    _set(row, "flags", dict(rec.flags))
    if rec.quiz_passed and row.quiz_passed_at is None:
        row.quiz_passed_at = now


def _write_image(row: Image, rec: ImageRec) -> None:
    for name in ("status", "judgment_target", "trusted_judgments", "label", "confidence",
                 "proba", "aggregation_method"):
        _set(row, name, getattr(rec, name))


def _write_judgment(row: Judgment, rec: JudgmentRec) -> None:
    _set(row, "gold_missed", rec.gold_missed)
    _set(row, "trust_at_time", rec.trust_at_time)
    _set(row, "tainted", rec.tainted)
    _set(row, "taint_reason", rec.taint_reason)


_ANNOTATOR_COLUMNS = ("status", "status_reason", "trust", "gold_seen", "gold_missed",
                      "gold_contested", "gold_forgiven", "judgments", "speed_trips", "message",
                      "flags", "quiz_passed_at", "answer_counts")
_IMAGE_COLUMNS = ("status", "judgment_target", "trusted_judgments", "label", "confidence",
                  "proba", "aggregation_method")
_JUDGMENT_COLUMNS = ("gold_missed", "trust_at_time", "tainted", "taint_reason")
# Ids per ``IN (...)`` list: far below SQLite's and PostgreSQL's parameter limits.
_CHUNK = 900


# The hot path's statements, built once with bound parameters: building a SQLAlchemy statement
# and its cache key costs more Python than SQLite takes to run it (about 0.1-0.2 ms each).
_A, _I, _J = AnnotatorState.__table__, Image.__table__, Judgment.__table__
_IDS = bindparam("ids", expanding=True)
_SELECT_ANNOTATORS = select(_A).where(_A.c.job_id == bindparam("job"), _A.c.user_id.in_(_IDS))
# By primary key only (the job is checked on the rows): with ``AND job_id = ?`` SQLite (no
# statistics) preferred a job_id index and scanned every image of the job for nine ids.
_SELECT_IMAGES = select(_I.c.id, _I.c.job_id, _I.c.model_score,
                        *(_I.c[n] for n in _IMAGE_COLUMNS)).where(_I.c.id.in_(_IDS))
_SELECT_GOLD = select(GoldItem.__table__.c.image_id, GoldItem.__table__.c.accepted_answers,
                      GoldItem.__table__.c.active).where(GoldItem.__table__.c.image_id.in_(_IDS))
_NOT_PENDING = _J.c.id.not_in(bindparam("pending", expanding=True))
# By image: no job condition (an image's judgments are all of its job, and the engine asks only
# about images of this job); with one, SQLite walked ``ix_judgments_job``, i.e. every judgment
# of the job, for each page. Callers sort by id.
_SELECT_JUDGMENTS_ON = select(_J).where(_J.c.image_id.in_(_IDS), _NOT_PENDING)
# By annotator: ``job_id + 0`` keeps SQLite on the (user_id, image_id) index for the same reason.
_SELECT_JUDGMENTS_BY = select(_J).where(
    _J.c.user_id == bindparam("user"), (_J.c.job_id + 0) == bindparam("job"), _NOT_PENDING)
# executemany UPDATE by primary key (bind names differ from column names: SQLAlchemy reserves
# those for its own SET clause).
_UPDATES = {
    model: update(model.__table__).where(model.__table__.c.id == bindparam("_id"))
    .values({name: bindparam("v_" + name) for name in columns})
    for model, columns in ((AnnotatorState, _ANNOTATOR_COLUMNS), (Image, _IMAGE_COLUMNS),
                           (Judgment, _JUDGMENT_COLUMNS))
}
_INSERT_AUDIT = insert(AuditEvent.__table__)


def _chunks(ids: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start:start + _CHUNK]


def _image_values(rec: ImageRec) -> dict[str, Any]:
    values = {name: getattr(rec, name) for name in _IMAGE_COLUMNS}
    values["proba"] = dict(rec.proba) if rec.proba is not None else None
    return values


def _judgment_values(rec: JudgmentRec) -> dict[str, Any]:
    return {"gold_missed": rec.gold_missed, "trust_at_time": rec.trust_at_time,
            "tainted": rec.tainted, "taint_reason": rec.taint_reason}


class DbState(QualityState):
    """A ``QualityState`` that loads the rows it is asked about, and writes back what changed.

    This runs on every submitted page, so it reads and writes with Core statements (no ORM
    objects, identity map or unit of work for the rows it touches), loads what a page or a
    removal needs in a few ``IN`` queries, and writes each table's changed rows with one
    executemany ``UPDATE``. ORM objects of those rows that the caller's session already holds
    (``submit_page``'s annotator row and new judgments, an admin action's annotator row) are
    given the written values, so callers see the result as before.
    """

    def __init__(self, session: Session, job: Job, spec: JobSpec,
                 pending: Sequence[SubmittedJudgment] = ()) -> None:
        super().__init__(default_status=new_state(spec).default_status,
                         default_target=spec.judgments.min)
        self.session, self.job = session, job
        # Values as loaded, to write only what changed: annotators by user id (row id, values),
        # images and judgments by id.
        self._annotator_rows: dict[int, tuple[int, dict[str, Any]]] = {}
        self._image_loaded: dict[int, dict[str, Any]] = {}
        self._judgment_loaded: dict[int, dict[str, Any]] = {}
        self.pending = {j.id: j for j in pending}
        self.pending_ids = set(self.pending)

    # --- loaders -------------------------------------------------------------------------
    def _remember_annotator(self, row: Any) -> AnnotatorRec:
        rec = _annotator_rec(row)
        self._annotator_rows[row.user_id] = (
            row.id, {name: getattr(row, name) for name in _ANNOTATOR_COLUMNS})
        return rec

    def _load_annotator(self, user_id: int) -> AnnotatorRec:
        row = self._rows(_SELECT_ANNOTATORS, [user_id])
        if not row:  # joined outside join_job (e.g. a direct import): create the row
            self.session.add(AnnotatorState(job_id=self.job.id, user_id=user_id,
                                            status=self.default_status, trust=0.0, flags={}))
            self.session.flush()
            row = self._rows(_SELECT_ANNOTATORS, [user_id])
        return self._remember_annotator(row[0])

    def _rows(self, statement: Any, ids: Sequence[int], **params: Any) -> list[Any]:
        """Rows of a prebuilt ``IN (:ids)`` statement, one query per chunk of ids."""
        conn = self.session.connection()
        rows: list[Any] = []
        for chunk in _chunks(ids):
            rows += conn.execute(statement, {"ids": list(chunk), "job": self.job.id, **params})
        return rows

    def _preload_annotators(self, user_ids: Iterable[int]) -> None:
        missing = sorted({u for u in user_ids if u not in self.annotators})
        for row in self._rows(_SELECT_ANNOTATORS, missing):
            self.annotators[row.user_id] = self._remember_annotator(row)

    def _load_images(self, image_ids: Sequence[int]) -> None:
        for row in self._rows(_SELECT_IMAGES, image_ids):
            if row.job_id != self.job.id:
                continue  # another job's image: ``_load_image`` refuses it
            rec = _image_rec(row)
            rec.model_score = row.model_score
            self.images[row.id] = rec
            self._image_loaded[row.id] = _image_values(rec)

    def _load_image(self, image_id: int) -> ImageRec:
        self._load_images([image_id])
        if image_id not in self.images:
            raise QualityError("unknown_image", f"image {image_id} is not part of this job", 404)
        return self.images[image_id]

    def _load_gold(self, image_id: int) -> GoldRec | None:
        self.preload_gold([image_id])
        return self.gold.get(image_id)

    def preload_gold(self, image_ids: Iterable[int]) -> None:
        ids = sorted({i for i in image_ids if i not in self.gold})
        for image_id, accepted, active in self._rows(_SELECT_GOLD, ids):
            self.gold[image_id] = GoldRec(image_id, tuple(accepted), active)

    def _load_counts(self, user_id: int) -> AnswerCounts:
        self.annotator(user_id)  # its row holds the kept counts
        stored = self._annotator_rows[user_id][1]["answer_counts"]
        if stored is not None:
            return AnswerCounts.from_dict(stored)
        return self._count_answers(user_id)

    def _count_answers(self, user_id: int) -> AnswerCounts:
        """The counts from the annotator's judgments (once; then they are kept on the row)."""
        counts = AnswerCounts()
        for is_quiz, answer, certainty, missed, n in self.session.execute(
                select(Judgment.is_quiz, Judgment.answer, Judgment.certainty,
                       Judgment.gold_missed, func.count())
                .where((Judgment.job_id + 0) == self.job.id, Judgment.user_id == user_id,
                       Judgment.id.not_in(self.pending_ids or {-1}))
                .group_by(Judgment.is_quiz, Judgment.answer, Judgment.certainty,
                          Judgment.gold_missed)):
            if not is_quiz:
                counts.labels[answer] += n
                counts.certainty[certainty] += n
            elif missed is not None:
                counts.quiz_seen += n
                counts.quiz_missed += n if missed else 0
        return counts

    def _judgment_recs(self, rows: Iterable[Any], users: Iterable[int] = ()) -> list[JudgmentRec]:
        """Records of judgment rows, with their annotators (and ``users``) in one query."""
        recs = []
        for row in sorted(rows, key=lambda r: r.id):
            rec = _judgment_rec(row)
            if row.id not in self.judgments:
                self._judgment_loaded[row.id] = _judgment_values(rec)
            recs.append(rec)
        self._preload_annotators([*users, *(r.user_id for r in recs)])
        return recs

    def _load_judgments_on(self, image_id: int) -> list[JudgmentRec]:
        return self._judgment_recs(self._rows(_SELECT_JUDGMENTS_ON, [image_id],
                                              pending=sorted(self.pending_ids)))

    def preload_judgments_on(self, image_ids: Iterable[int], users: Iterable[int] = ()) -> None:
        """The judgments on these images in one query per chunk (a page's worth, or every image
        a removal touches), instead of one query per image when the engine asks; their
        annotators and ``users`` in one more."""
        ids = sorted({i for i in image_ids if i not in self._images_loaded})
        if ids:
            self._remember(self._judgment_recs(self._rows(
                _SELECT_JUDGMENTS_ON, ids, pending=sorted(self.pending_ids)), users))
            self._images_loaded.update(ids)
        else:
            self._preload_annotators(users)

    def _load_judgments_by(self, user_id: int) -> list[JudgmentRec]:
        rows = self.session.connection().execute(_SELECT_JUDGMENTS_BY, {
            "job": self.job.id, "user": user_id, "pending": sorted(self.pending_ids)})
        return self._judgment_recs(rows)

    def prefetch(self, image_ids: list[int], users: Iterable[int] = ()) -> None:
        self._load_images([i for i in image_ids if i not in self.images])
        self.preload_judgments_on(image_ids, users)

    # --- writing -------------------------------------------------------------------------
    def write_back(self, now: datetime) -> None:
        self._write_annotators(now)
        changed_images = [
            {"_id": image_id, **values} for image_id, rec in self.images.items()
            if (values := _image_values(rec)) != self._image_loaded.get(image_id)
        ]
        self._update(Image, changed_images)
        changed_judgments = [
            {"_id": judgment_id, **values} for judgment_id, rec in self.judgments.items()
            if (values := _judgment_values(rec)) != self._judgment_loaded.get(judgment_id)
        ]
        self._update(Judgment, changed_judgments)

    def _write_annotators(self, now: datetime) -> None:
        changed = []
        for user_id, rec in self.annotators.items():
            row_id, before = self._annotator_rows[user_id]
            values = {name: getattr(rec, name) for name in _ANNOTATOR_COLUMNS[:10]}
            values["flags"] = dict(rec.flags)
            values["quiz_passed_at"] = before["quiz_passed_at"]
            if rec.quiz_passed and values["quiz_passed_at"] is None:
                values["quiz_passed_at"] = now
            counts = self._counts.get(user_id)
            values["answer_counts"] = (
                counts.to_dict() if counts is not None else before["answer_counts"])
            if values != before:
                changed.append({"_id": row_id, **values})
        self._update(AnnotatorState, changed)

    def _update(self, model: type[Any], rows: list[dict[str, Any]]) -> None:
        """One executemany UPDATE by primary key; ORM copies in the session get the values."""
        if not rows:
            return
        self.session.connection().execute(
            _UPDATES[model],
            [{("v_" + k if k != "_id" else k): v for k, v in r.items()} for r in rows])
        identity_map = self.session.identity_map
        for r in rows:
            obj = identity_map.get(identity_key(model, r["_id"]))
            if obj is not None:
                for name, value in r.items():
                    if name != "_id":
                        set_committed_value(obj, name, value)


# --- shared plumbing -----------------------------------------------------------------------------

def _lock_job(session: Session, job: Job, annotators: Iterable[int] = ()) -> None:
    """Serialise quality updates of one job (row locks on PostgreSQL; SQLite is serial).

    Lock order, shared with ``annotate.submission``: the annotator-state rows the action will
    write (by user id), then the job row. A page submission writes only its own annotator's
    row, so an admin action and a submission can never wait on each other in a cycle.
    """
    ids = sorted(set(annotators))
    if ids:
        session.execute(select(AnnotatorState.id).where(
            AnnotatorState.job_id == job.id, AnnotatorState.user_id.in_(ids))
            .order_by(AnnotatorState.user_id).with_for_update())
    # NO KEY UPDATE: serialises quality updates just the same, without blocking foreign-key
    # checks of rows inserted for this job (an assigner inserting a page holds image locks a
    # submission waits for; FOR UPDATE here deadlocked against it on PostgreSQL).
    session.execute(select(Job.id).where(Job.id == job.id).with_for_update(key_share=True))


def _audit(session: Session, job: Job, actor_id: int | None, action: str, subject: str | None,
           payload: dict[str, Any], now: datetime) -> AuditEvent:
    event = AuditEvent(at=now, job_id=job.id, actor_id=actor_id, action=action, subject=subject,
                       payload=payload)
    session.add(event)
    return event


def _record_decisions(session: Session, job: Job, decisions: list[Decision],
                      actor_id: int | None, now: datetime) -> None:
    """The engine's decisions, in order, in one executemany INSERT (after the input event,
    which the caller added and ``_run`` flushed first: the log's id order is the order)."""
    if decisions:
        session.connection().execute(_INSERT_AUDIT, [
            {"at": now, "job_id": job.id, "actor_id": actor_id, "action": d.action,
             "subject": d.subject, "payload": d.payload}
            for d in decisions
        ])


def _run(session: Session, job: Job, spec: JobSpec, event: Event, now: datetime,
         actor_id: int | None, *, state: DbState | None = None,
         preload_images: Iterable[int] = (), preload_gold: Iterable[int] = ()
         ) -> tuple[Engine, Any]:
    """Apply one input event to the stored state and write state and decisions back.

    ``preload_*``: rows the event will certainly touch, loaded in one query each up front.
    """
    # DbState reads with Core statements, which do not autoflush: make the caller's pending
    # ORM changes (new judgments, the input audit event, a new gold item) visible first.
    session.flush()
    state = state if state is not None else DbState(session, job, spec)
    state.preload_gold(preload_gold)
    state.prefetch(sorted(set(preload_images)))
    engine = Engine(state, spec)
    result = engine.apply(event)
    state.write_back(now)
    _record_decisions(session, job, engine.decisions, actor_id, now)
    session.flush()
    return engine, result


def _annotator_row(session: Session, job: Job, user_id: int) -> AnnotatorState:
    row = session.scalar(select(AnnotatorState).where(
        AnnotatorState.job_id == job.id, AnnotatorState.user_id == user_id))
    if row is None:
        raise QualityError("unknown_annotator", f"user {user_id} has not joined this job", 404)
    return row


def _require_role(user: User, *roles: str) -> None:
    if user.role not in roles:
        raise QualityError("forbidden", f"this needs the {' or '.join(roles)} role", 403)


def _active_gold_count(session: Session, job: Job) -> int:
    return int(session.scalar(select(func.count()).select_from(GoldItem).where(
        GoldItem.job_id == job.id, GoldItem.active.is_(True))) or 0)


# --- a submitted page ----------------------------------------------------------------------------

class SubmittedJudgment(Protocol):
    """A judgment of the page being graded: a ``Judgment`` row, or the plain record the submit
    path builds from its INSERT (``annotate.submission.StoredJudgment``)."""

    id: int
    image_id: int
    answer: str
    certainty: str
    quality_flag: str | None
    is_gold: bool
    is_quiz: bool
    trust_at_time: float | None


def on_page_submitted(session: Session, job: Job, spec: JobSpec, user: User, page: Page,
                      judgments: Sequence[SubmittedJudgment], now: datetime, *,
                      job_locked: bool = False) -> PageOutcome:
    """Grade gold, update trust, apply every rule and re-aggregate the page's images.

    Called by ``annotate.submission.submit_page`` in the same transaction, after it inserted
    the page's ``Judgment`` rows (having locked the annotator and job rows already:
    ``job_locked``).
    """
    if not job_locked:
        _lock_job(session, job)
    session.flush()  # the judgments need their ids
    ordered = sorted(judgments, key=lambda j: j.id)
    if any(j.trust_at_time is not None for j in ordered):
        raise QualityError("already_graded", "this page was already graded", 409)
    seconds = (as_utc(now) - as_utc(page.served_at)).total_seconds()
    state = DbState(session, job, spec, ordered)
    # The gold bank's size matters only to someone still taking the quiz (when is the quiz
    # complete): counted for them only; the engine reads it for them only.
    in_quiz = state.annotator(user.id).status == AnnotatorStatus.QUIZ
    event = PageSubmitted(
        user_id=user.id, page_id=page.id, kind=page.kind, seconds=seconds,
        judgments=tuple(_judgment_in(j) for j in ordered),
        active_gold=_active_gold_count(session, job) if in_quiz else None,
    )
    _audit(session, job, user.id, PAGE_SUBMITTED, f"page:{page.id}",
           _page_payload(event), now)
    # The engine re-aggregates the page's work images: fetch their judgments in one query.
    engine, result = _run(session, job, spec, event, now, user.id, state=state,
                          preload_images=[j.image_id for j in ordered if not j.is_gold],
                          preload_gold=[j.image_id for j in ordered if j.is_gold])
    annotator = engine.state.annotator(user.id)
    return PageOutcome(
        quiz_passed=result.quiz_passed,
        quiz_accuracy=result.quiz_accuracy,
        annotator_status=annotator.status,
        trust=annotator.trust,
        warnings=list(result.warnings),
        missed_gold=_missed_details(session, result.missed),
        gold_seen=sum(1 for j in ordered if j.is_gold),
        message=annotator.message,
    )


def _judgment_in(j: SubmittedJudgment) -> JudgmentIn:
    return JudgmentIn(id=j.id, image_id=j.image_id, answer=j.answer, certainty=j.certainty,
                      quality_flag=j.quality_flag, is_gold=bool(j.is_gold),
                      is_quiz=bool(j.is_quiz))


def _page_payload(event: PageSubmitted) -> dict[str, Any]:
    return {"user_id": event.user_id, "page_id": event.page_id, "kind": event.kind,
            "seconds": event.seconds, "active_gold": event.active_gold,
            "judgment_ids": [j.id for j in event.judgments]}


def _missed_details(session: Session, missed: list[JudgmentRec]) -> list[MissedGoldItem]:
    if not missed:
        return []
    ids = [m.image_id for m in missed]
    public = dict(session.execute(select(Image.id, Image.public_id).where(Image.id.in_(ids))).all())
    gold = {g.image_id: g for g in session.scalars(
        select(GoldItem).where(GoldItem.image_id.in_(ids)))}
    return [
        MissedGoldItem(judgment_id=m.id, image_public_id=public[m.image_id],
                       given_answer=m.answer,
                       accepted_answers=list(gold[m.image_id].accepted_answers),
                       reason=gold[m.image_id].reason or "")
        for m in missed
    ]


# --- contests and gold corrections ---------------------------------------------------------------

def contest_gold(session: Session, job: Job, user: User, judgment_id: int, reason: str,
                 now: datetime) -> Contest:
    """An annotator disputes the accepted answer of a test question they answered."""
    reason = (reason or "").strip()
    if not reason:
        raise QualityError("reason_required", "say why you think the accepted answer is wrong")
    _lock_job(session, job, [user.id])
    judgment = session.get(Judgment, judgment_id)
    if judgment is None or judgment.job_id != job.id or judgment.user_id != user.id:
        raise QualityError("unknown_judgment", "no such answer of yours in this job", 404)
    gold = session.scalar(select(GoldItem).where(GoldItem.image_id == judgment.image_id))
    if not judgment.is_gold or gold is None:
        raise QualityError("not_gold", "only test questions can be contested")
    if session.scalar(select(Contest.id).where(Contest.judgment_id == judgment_id)):
        raise QualityError("already_contested", "you already contested this answer", 409)
    contest = Contest(gold_id=gold.id, judgment_id=judgment_id, user_id=user.id,
                      reason=reason[:4000], status="open", created_at=now)
    session.add(contest)
    session.flush()
    _audit(session, job, user.id, CONTEST_OPENED, f"contest:{contest.id}",
           {"contest_id": contest.id, "judgment_id": judgment_id, "user_id": user.id,
            "gold_id": gold.id, "reason": contest.reason}, now)
    _run(session, job, spec_of(job), ContestOpened(contest.id, judgment_id, user.id), now,
         user.id)
    return contest


def spec_of(job: Job) -> JobSpec:
    from cxrlabel.context import spec_from_job_row

    return spec_from_job_row(job)


def _check_answers(spec: JobSpec, answers: Iterable[str] | None) -> list[str]:
    cleaned = sorted({a.strip() for a in (answers or []) if a and a.strip()})
    unknown = [a for a in cleaned if a not in spec.label_values]
    if not cleaned:
        raise QualityError("answers_required", "give at least one accepted answer")
    if unknown:
        raise QualityError("unknown_answer",
                           f"unknown answer(s) {unknown}; choose from {spec.label_values}")
    return cleaned


def resolve_contest(session: Session, job: Job, spec: JobSpec, admin: User, contest_id: int,
                    action: str, reply: str, new_accepted_answers: Iterable[str] | None,
                    now: datetime) -> Contest:
    """Uphold the gold answer (with a reply the annotator sees) or change its accepted answers,
    which regrades everyone who answered it (forgiving misses that are now correct)."""
    _require_role(admin, Role.ADMIN)
    reply = (reply or "").strip()
    if action not in ("uphold", "change"):
        raise QualityError("bad_action", "action must be 'uphold' or 'change'")
    contest = session.get(Contest, contest_id)
    gold = session.get(GoldItem, contest.gold_id) if contest else None
    if contest is None or gold is None or gold.job_id != job.id:
        raise QualityError("unknown_contest", f"no contest {contest_id} in this job", 404)
    _lock_job(session, job, _gold_answerers(session, gold))
    session.refresh(contest)  # another admin may have resolved it while we waited
    if contest.status != "open":
        raise QualityError("contest_closed", f"contest {contest_id} is already {contest.status}",
                           409)
    if action == "uphold":
        if not reply:
            raise QualityError("reply_required", "explain to the annotator why the answer stands")
        contest.status, contest.reply, contest.resolved_at = "upheld", reply, now
        _audit(session, job, admin.id, CONTEST_UPHELD, f"contest:{contest.id}",
               {"contest_id": contest.id, "gold_id": gold.id, "reply": reply}, now)
        session.flush()
        return contest
    answers = _check_answers(spec, new_accepted_answers)
    if answers == sorted(gold.accepted_answers):
        raise QualityError("unchanged", "the accepted answers are already exactly these")
    _change_gold(session, job, spec, admin, gold, answers, now, contest_id=contest.id)
    # Every open contest this correction answers is settled with the same reply.
    for other in session.scalars(select(Contest).where(
            Contest.gold_id == gold.id, Contest.status == "open")):
        given = session.get(Judgment, other.judgment_id)
        if other.id == contest.id or (given is not None and given.answer in answers):
            other.status, other.resolved_at = "changed", now
            other.reply = reply or f"Thank you: the accepted answers are now {', '.join(answers)}."
            _audit(session, job, admin.id, CONTEST_CHANGED, f"contest:{other.id}",
                   {"contest_id": other.id, "gold_id": gold.id, "reply": other.reply}, now)
    session.flush()
    return contest


def _gold_answerers(session: Session, gold: GoldItem) -> list[int]:
    return list(session.scalars(select(Judgment.user_id).where(
        Judgment.image_id == gold.image_id, Judgment.is_gold.is_(True))).all())


def _change_gold(session: Session, job: Job, spec: JobSpec, admin: User, gold: GoldItem,
                 answers: list[str], now: datetime, contest_id: int | None = None) -> None:
    old = list(gold.accepted_answers)
    gold.accepted_answers = answers
    _audit(session, job, admin.id, GOLD_CHANGED, f"gold:{gold.id}",
           {"image_id": gold.image_id, "gold_id": gold.id, "old": old, "new": answers,
            "contest_id": contest_id}, now)
    _run(session, job, spec, GoldChanged(gold.image_id, tuple(answers), admin.id), now, admin.id)


def update_gold(session: Session, job: Job, spec: JobSpec, admin: User, gold_id: int, *,
                now: datetime, accepted_answers: Iterable[str] | None = None,
                reason: str | None = None, difficulty: str | None = None,
                active: bool | None = None) -> GoldItem:
    """Edit a gold item; a change of accepted answers regrades like a contest does."""
    _require_role(admin, Role.ADMIN)
    gold = session.get(GoldItem, gold_id)
    if gold is None or gold.job_id != job.id:
        raise QualityError("unknown_gold", f"no gold item {gold_id} in this job", 404)
    _lock_job(session, job, _gold_answerers(session, gold))
    if difficulty is not None and difficulty not in ("easy", "medium", "hard"):
        raise QualityError("bad_difficulty", "difficulty must be easy, medium or hard")
    edits = {k: v for k, v in (("reason", reason), ("difficulty", difficulty),
                               ("active", active)) if v is not None}
    for name, value in edits.items():
        setattr(gold, name, value)
    if edits:
        _audit(session, job, admin.id, GOLD_EDITED, f"gold:{gold.id}",
               {"gold_id": gold.id, **edits}, now)
    if accepted_answers is not None:
        answers = _check_answers(spec, accepted_answers)
        if answers != sorted(gold.accepted_answers):
            _change_gold(session, job, spec, admin, gold, answers, now)
    session.flush()
    return gold


# --- admin actions on annotators -----------------------------------------------------------------

def remove_annotator(session: Session, job: Job, spec: JobSpec, admin: User, user_id: int,
                     reason: str, now: datetime) -> AnnotatorState:
    _require_role(admin, Role.ADMIN)
    reason = (reason or "").strip()
    if not reason:
        raise QualityError("reason_required", "give a reason for removing this annotator")
    _lock_job(session, job, [user_id])
    row = _annotator_row(session, job, user_id)
    if row.status not in (AnnotatorStatus.ACTIVE, AnnotatorStatus.QUIZ):
        raise QualityError("not_active", f"this annotator is already {row.status}", 409)
    _audit(session, job, admin.id, ADMIN_REMOVED, f"user:{user_id}",
           {"user_id": user_id, "reason": reason}, now)
    _run(session, job, spec, AnnotatorRemoved(user_id, reason, admin.id), now, admin.id)
    return row


def reinstate_annotator(session: Session, job: Job, spec: JobSpec, admin: User, user_id: int,
                        reason: str, now: datetime) -> AnnotatorState:
    _require_role(admin, Role.ADMIN)
    reason = (reason or "").strip() or "reinstated by an administrator"
    _lock_job(session, job, [user_id])
    row = _annotator_row(session, job, user_id)
    if row.status == AnnotatorStatus.DISQUALIFIED:
        raise QualityError("disqualified", "failing the quiz is final for this job", 409)
    if row.status != AnnotatorStatus.REMOVED:
        raise QualityError("not_removed", f"this annotator is {row.status}, not removed", 409)
    _audit(session, job, admin.id, ADMIN_REINSTATED, f"user:{user_id}",
           {"user_id": user_id, "reason": reason}, now)
    _run(session, job, spec, AnnotatorReinstated(user_id, reason, admin.id), now, admin.id)
    return row


def send_message(session: Session, job: Job, admin: User, user_id: int, text: str,
                 now: datetime) -> AnnotatorState:
    """A message shown to the annotator on their next page (the annotate app clears it)."""
    _require_role(admin, Role.ADMIN)
    text = (text or "").strip()
    if not text:
        raise QualityError("message_required", "the message is empty")
    row = _annotator_row(session, job, user_id)
    row.message = text[:2000]
    _audit(session, job, admin.id, MESSAGE_SENT, f"user:{user_id}",
           {"user_id": user_id, "message": row.message}, now)
    session.flush()
    return row


# --- experts -------------------------------------------------------------------------------------

def record_expert_label(session: Session, job: Job, spec: JobSpec, expert: User, image_id: int,
                        label: str, reason: str | None, now: datetime,
                        promote_to_gold: bool = False,
                        gold_reason: str | None = None) -> ExpertReview:
    """An expert's final label; optionally the image becomes a new gold item."""
    _require_role(expert, Role.EXPERT, Role.ADMIN)
    if label not in spec.label_values:
        raise QualityError("unknown_answer", f"label must be one of {spec.label_values}")
    gold_reason = (gold_reason or "").strip()
    if promote_to_gold and not gold_reason:
        raise QualityError("reason_required",
                           "a new gold item needs a reason annotators will be shown")
    _lock_job(session, job)
    image = session.get(Image, image_id)
    if image is None or image.job_id != job.id:
        raise QualityError("unknown_image", f"image {image_id} is not part of this job", 404)
    session.refresh(image)  # another expert may have committed while we waited for the lock
    existing = session.scalar(select(ExpertReview).where(ExpertReview.image_id == image_id))
    if existing is not None or image.status == ImageStatus.EXPERT:
        raise ReviewConflict("another expert already recorded a final label for this image")
    if image.status == ImageStatus.GOLD:
        raise QualityError("is_gold", "this image is a gold item, not a work item")
    review = ExpertReview(image_id=image_id, expert_id=expert.id, label=label,
                          reason=(reason or "").strip() or None,
                          promoted_to_gold=promote_to_gold, created_at=now)
    try:
        with session.begin_nested():
            session.add(review)
            session.flush()
    except IntegrityError:
        raise ReviewConflict(
            "another expert already recorded a final label for this image") from None
    if promote_to_gold:
        session.add(GoldItem(job_id=job.id, image_id=image_id, accepted_answers=[label],
                             reason=gold_reason, difficulty="hard", source="expert",
                             active=True, created_at=now))
    _audit(session, job, expert.id, EXPERT_LABELED, f"image:{image_id}",
           {"image_id": image_id, "label": label, "reason": review.reason,
            "promote_to_gold": promote_to_gold, "gold_reason": gold_reason or None}, now)
    _run(session, job, spec,
         ExpertLabeled(image_id, label, expert.id, promote_to_gold), now, expert.id)
    return review


@dataclass
class ReviewItem:
    image_id: int
    public_id: str
    reason: str | None
    label: str | None  # the crowd's current label
    confidence: float | None
    proba: dict[str, float] | None
    uncertainty: float  # 1 - confidence (1.0 when nobody gave a label)
    trusted_judgments: int
    # label -> certainty -> count, over trusted judgments only; no annotator identities.
    answers: dict[str, dict[str, int]]
    quality_flags: dict[str, int]


def review_queue(session: Session, job: Job, spec: JobSpec) -> list[ReviewItem]:
    """Images waiting for an expert, most uncertain first."""
    images = session.scalars(select(Image).where(
        Image.job_id == job.id, Image.status == ImageStatus.NEEDS_REVIEW)).all()
    if not images:
        return []
    ids = [i.id for i in images]
    by_image: dict[int, list[JudgmentRec]] = {i: [] for i in ids}
    for row in session.scalars(select(Judgment).where(Judgment.image_id.in_(ids))
                               .order_by(Judgment.id)):
        by_image[row.image_id].append(_judgment_rec(row))
    trust = dict(session.execute(select(AnnotatorState.user_id, AnnotatorState.trust).where(
        AnnotatorState.job_id == job.id)).all())
    params = ConsensusParams.from_spec(spec)
    items = []
    for image in images:
        judgments = by_image[image.id]
        ev = evaluate(judgments, {j.user_id: trust.get(j.user_id, 0.0) for j in judgments},
                      params, image.model_score)
        counted = [j for j in judgments if not j.tainted and not j.is_gold]
        answers: dict[str, dict[str, int]] = {}
        for j in counted:
            per = answers.setdefault(j.answer, {})
            per[j.certainty] = per.get(j.certainty, 0) + 1
        flags = Counter(j.quality_flag for j in counted if j.quality_flag)
        items.append(ReviewItem(
            image_id=image.id, public_id=image.public_id, reason=ev.review_reason,
            label=image.label, confidence=image.confidence, proba=image.proba,
            uncertainty=1.0 - (image.confidence if image.confidence is not None else 0.0),
            trusted_judgments=image.trusted_judgments, answers=answers,
            quality_flags=dict(sorted(flags.items())),
        ))
    items.sort(key=lambda it: (-it.uncertainty, it.image_id))
    return items


# --- reports for the admin -----------------------------------------------------------------------

@dataclass
class Contributor:
    user_id: int
    username: str
    pseudonym: str
    status: str
    status_reason: str | None
    trust: float
    judgments: int
    gold_seen: int
    gold_missed: int
    gold_contested: int
    gold_forgiven: int
    speed_trips: int
    flags: dict[str, Any]
    message: str | None
    joined_at: datetime


def contributors(session: Session, job: Job) -> list[Contributor]:
    rows = session.execute(select(AnnotatorState, User).join(
        User, User.id == AnnotatorState.user_id).where(AnnotatorState.job_id == job.id)
        .order_by(AnnotatorState.trust, User.username)).all()
    return [
        Contributor(
            user_id=user.id, username=user.username, pseudonym=user.pseudonym,
            status=st.status, status_reason=st.status_reason, trust=st.trust,
            judgments=st.judgments, gold_seen=st.gold_seen, gold_missed=st.gold_missed,
            gold_contested=st.gold_contested, gold_forgiven=st.gold_forgiven,
            speed_trips=st.speed_trips, flags=dict(st.flags or {}), message=st.message,
            joined_at=st.joined_at,
        )
        for st, user in rows
    ]


@dataclass
class GoldStat:
    gold_id: int
    image_id: int
    public_id: str
    accepted_answers: list[str]
    reason: str
    difficulty: str
    source: str
    active: bool
    seen: int
    missed: int
    contested: int
    open_contests: int

    @property
    def pct_missed(self) -> float:
        return 100.0 * self.missed / self.seen if self.seen else 0.0

    @property
    def pct_contested(self) -> float:
        return 100.0 * self.contested / self.seen if self.seen else 0.0


def gold_stats(session: Session, job: Job) -> list[GoldStat]:
    """Per gold item: how often it was answered, missed and contested (most missed first)."""
    golds = session.execute(select(GoldItem, Image.public_id).join(
        Image, Image.id == GoldItem.image_id).where(GoldItem.job_id == job.id)).all()
    seen = dict(session.execute(
        select(Judgment.image_id, func.count()).where(
            Judgment.job_id == job.id, Judgment.is_gold.is_(True),
            Judgment.gold_missed.is_not(None)).group_by(Judgment.image_id)).all())
    missed = dict(session.execute(
        select(Judgment.image_id, func.count()).where(
            Judgment.job_id == job.id, Judgment.gold_missed.is_(True))
        .group_by(Judgment.image_id)).all())
    contested = dict(session.execute(
        select(Contest.gold_id, func.count()).group_by(Contest.gold_id)).all())
    open_ = dict(session.execute(
        select(Contest.gold_id, func.count()).where(Contest.status == "open")
        .group_by(Contest.gold_id)).all())
    stats = [
        GoldStat(
            gold_id=g.id, image_id=g.image_id, public_id=public_id,
            accepted_answers=list(g.accepted_answers), reason=g.reason, difficulty=g.difficulty,
            source=g.source, active=g.active, seen=seen.get(g.image_id, 0),
            missed=missed.get(g.image_id, 0), contested=contested.get(g.id, 0),
            open_contests=open_.get(g.id, 0),
        )
        for g, public_id in golds
    ]
    stats.sort(key=lambda s: (-s.open_contests, -s.pct_missed, s.gold_id))
    return stats


@dataclass
class ContestView:
    contest_id: int
    status: str
    gold_id: int
    image_id: int
    public_id: str
    accepted_answers: list[str]
    gold_reason: str
    given_answer: str
    reason: str
    reply: str | None
    user_id: int
    pseudonym: str
    created_at: datetime
    resolved_at: datetime | None


def list_contests(session: Session, job: Job, status: str | None = "open",
                  user_id: int | None = None) -> list[ContestView]:
    query = (select(Contest, GoldItem, Judgment, Image.public_id, User.pseudonym)
             .join(GoldItem, GoldItem.id == Contest.gold_id)
             .join(Judgment, Judgment.id == Contest.judgment_id)
             .join(Image, Image.id == GoldItem.image_id)
             .join(User, User.id == Contest.user_id)
             .where(GoldItem.job_id == job.id).order_by(Contest.id))
    if status:
        query = query.where(Contest.status == status)
    if user_id is not None:
        query = query.where(Contest.user_id == user_id)
    return [
        ContestView(
            contest_id=c.id, status=c.status, gold_id=g.id, image_id=g.image_id,
            public_id=public_id, accepted_answers=list(g.accepted_answers), gold_reason=g.reason,
            given_answer=j.answer, reason=c.reason, reply=c.reply, user_id=c.user_id,
            pseudonym=pseudonym, created_at=c.created_at, resolved_at=c.resolved_at,
        )
        for c, g, j, public_id, pseudonym in session.execute(query).all()
    ]


# --- replay --------------------------------------------------------------------------------------

def load_events(session: Session, job: Job) -> list[Event]:
    """The quality inputs of a job, in the order they were decided (audit log order)."""
    audit = session.scalars(select(AuditEvent).where(
        AuditEvent.job_id == job.id, AuditEvent.action.in_(INPUT_ACTIONS))
        .order_by(AuditEvent.id)).all()
    judgment_ids = [jid for a in audit if a.action == PAGE_SUBMITTED
                    for jid in a.payload["judgment_ids"]]
    rows: dict[int, Judgment] = {}
    for chunk in range(0, len(judgment_ids), 5000):
        ids = judgment_ids[chunk:chunk + 5000]
        rows.update((j.id, j) for j in session.scalars(select(Judgment).where(
            Judgment.id.in_(ids))))
    events: list[Event] = []
    for a in audit:
        p = a.payload
        if a.action == PAGE_SUBMITTED:
            events.append(PageSubmitted(
                user_id=p["user_id"], page_id=p["page_id"], kind=p["kind"],
                seconds=float(p["seconds"]), active_gold=p.get("active_gold"),
                judgments=tuple(_judgment_in(rows[j]) for j in p["judgment_ids"])))
        elif a.action == GOLD_CHANGED:
            events.append(GoldChanged(p["image_id"], tuple(p["new"]), a.actor_id))
        elif a.action == CONTEST_OPENED:
            events.append(ContestOpened(p["contest_id"], p["judgment_id"], p["user_id"]))
        elif a.action == ADMIN_REMOVED:
            events.append(AnnotatorRemoved(p["user_id"], p["reason"], a.actor_id))
        elif a.action == ADMIN_REINSTATED:
            events.append(AnnotatorReinstated(p["user_id"], p["reason"], a.actor_id))
        elif a.action == EXPERT_LABELED:
            events.append(ExpertLabeled(p["image_id"], p["label"], a.actor_id or 0,
                                        bool(p.get("promote_to_gold"))))
    return events


def _initial_gold(session: Session, job: Job, events: list[Event]) -> list[GoldRec]:
    """Gold as it was before the log: the first correction's 'old' answers, else today's;
    items created by an expert promotion in the log are left for that event to create."""
    promoted = {e.image_id for e in events if isinstance(e, ExpertLabeled) and e.promote_to_gold}
    first_old: dict[int, list[str]] = {}
    for a in session.scalars(select(AuditEvent).where(
            AuditEvent.job_id == job.id, AuditEvent.action == GOLD_CHANGED)
            .order_by(AuditEvent.id)):
        first_old.setdefault(a.payload["image_id"], a.payload["old"])
    return [
        GoldRec(g.image_id, tuple(first_old.get(g.image_id, g.accepted_answers)), g.active)
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
    if (spec.review.model_disagreement_threshold is not None
            or spec.judgments.min_if_model_agrees > 0):
        state.model_scores = dict(session.execute(select(Image.id, Image.model_score).where(
            Image.job_id == job.id, Image.model_score.is_not(None))).all())
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
    for row in session.scalars(select(AnnotatorState).where(
            AnnotatorState.job_id == job.id,
            AnnotatorState.user_id.in_(list(replayed.annotators) or [-1]))):
        mirror.annotators[row.user_id] = _annotator_rec(row)
    tainted_column: dict[int, bool] = {}
    for ids, model in ((list(replayed.images), Image), (list(replayed.judgments), Judgment)):
        for chunk in range(0, len(ids), 5000):
            for row in session.scalars(select(model).where(model.id.in_(ids[chunk:chunk + 5000]))):
                if model is Image:
                    mirror.images[row.id] = _image_rec(row)
                else:
                    mirror.judgments[row.id] = _judgment_rec(row)
                    tainted_column[row.id] = bool(row.tainted)
    for g in session.scalars(select(GoldItem).where(GoldItem.job_id == job.id)):
        mirror.gold[g.image_id] = GoldRec(g.image_id, tuple(g.accepted_answers), g.active)
    snapshot = mirror.snapshot()
    # Compare the stored ``tainted`` column itself, not only the reason it is parsed from.
    snapshot["judgments"] = {jid: (tainted_column[jid], *view[1:])
                             for jid, view in snapshot["judgments"].items()}
    return snapshot


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
    for user_id, stored in session.execute(select(
            AnnotatorState.user_id, AnnotatorState.answer_counts).where(
            AnnotatorState.job_id == job.id, AnnotatorState.answer_counts.is_not(None))
            .order_by(AnnotatorState.user_id)):
        if stored is None:  # JSON null
            continue
        want = replayed.counts(user_id).to_dict()
        if AnswerCounts.from_dict(stored).to_dict() != want:
            out.append(f"answer counts {user_id}: stored {stored!r} != replayed {want!r}")
    return out


def verify_replay(session: Session, job: Job, spec: JobSpec, fix: bool = False,
                  now: datetime | None = None) -> ReplayReport:
    """Replay the log and compare with the stored state; ``fix`` writes the replayed state."""
    replayed = replay(session, job, spec)
    differences = _diff(replayed.snapshot(), stored_snapshot(session, job, replayed))
    differences += _diff_counts(session, job, replayed)
    covered = len(replayed.judgments)
    total = int(session.scalar(select(func.count()).select_from(Judgment).where(
        Judgment.job_id == job.id)) or 0)
    report = ReplayReport(events=len(load_events(session, job)),
                          annotators=len(replayed.annotators), images=len(replayed.images),
                          judgments=covered, differences=differences,
                          unprocessed_judgments=total - covered)
    if fix and differences:
        _lock_job(session, job)
        _write_replayed(session, job, replayed, now or datetime.now(UTC))
        report.fixed = True
    return report


def _write_replayed(session: Session, job: Job, state: QualityState, now: datetime) -> None:
    for user_id, rec in state.annotators.items():
        row = session.scalar(select(AnnotatorState).where(
            AnnotatorState.job_id == job.id, AnnotatorState.user_id == user_id))
        if row is None:
            row = AnnotatorState(job_id=job.id, user_id=user_id, status=rec.status, flags={})
            session.add(row)
        _write_annotator(row, rec, now)
        _set(row, "answer_counts", state.counts(user_id).to_dict())
    for image_id, rec in state.images.items():
        _write_image(session.get(Image, image_id), rec)
    for judgment_id, rec in state.judgments.items():
        _write_judgment(session.get(Judgment, judgment_id), rec)
    for image_id, rec in state.gold.items():
        row = session.scalar(select(GoldItem).where(GoldItem.image_id == image_id))
        if row is not None and sorted(row.accepted_answers) != sorted(rec.accepted):
            row.accepted_answers = list(rec.accepted)
    session.flush()
