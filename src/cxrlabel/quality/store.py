"""Database adapter of the quality engine: rows in, events through ``Engine``, rows and audit out.

Everything here runs inside the caller's transaction (the web app's request or the simulator's
unit of work). On PostgreSQL the audit log's id order must be an order in which the decisions
could have been made one at a time, because that order is what ``audit.replay`` follows. It is,
by strict two-phase locking (docs/scaling.md, "How quality updates of one job are locked"):

* a writing ``DbState`` locks every row the engine reads or writes before reading it (annotator
  states ``FOR UPDATE``, images ``FOR NO KEY UPDATE``; an image's judgments are read only under
  its image's lock, an annotator's under their state's lock) and holds the locks to commit;
* the event's input row of the audit log is inserted after the engine ran, when every lock is
  held, so it takes its id (from the table's sequence) after any conflicting event committed;
* admin commands take the job's quality lock exclusively (``lock_job``), page submissions
  share it (``grading.lock_page_rows``): gold answers, which only admin commands change,
  need no row locks.

Events that lock no common row touch disjoint state: they commute. (SQLite is serial.)

The audit log holds two kinds of rows:

* inputs (``INPUT_ACTIONS``): a submitted page, an admin removing or reinstating someone, a gold
  correction, a contest, an expert label. Replaying them in order recomputes the whole state;
* decisions (``quality.*``): what the engine concluded and why (reason plus the numbers used).

Users of this adapter: ``grading`` (a submitted page), ``admin`` (commands), ``views`` (read
views for pages) and ``audit`` (replay and its check).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import BindParameter, bindparam, func, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from cxrlabel.errors import EngineError
from cxrlabel.jobspec import JobSpec
from cxrlabel.storage.locks import JOB_QUALITY, LockEscalation, advisory_lock, is_postgres
from cxrlabel.storage.models import AnnotatorState, AuditEvent, GoldItem, Image, Job, Judgment

from .engine import Engine, new_state
from .events import Event, JudgmentIn
from .outcomes import Decision
from .records import SubmittedJudgment
from .rows import (
    ANNOTATOR_COLUMNS,
    IMAGE_COLUMNS,
    JUDGMENT_COLUMNS,
    annotator_rec,
    image_rec,
    image_values,
    judgment_rec,
    judgment_values,
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
# An upheld contest makes its deferred miss count again (older logs: it changed nothing, and
# replaying it changes nothing either, as no miss was deferred then).
CONTEST_UPHELD = "contest.upheld"
INPUT_ACTIONS = (
    PAGE_SUBMITTED,
    GOLD_CHANGED,
    CONTEST_OPENED,
    ADMIN_REMOVED,
    ADMIN_REINSTATED,
    EXPERT_LABELED,
    CONTEST_UPHELD,
)
# Audit actions that change nothing the engine computes.
CONTEST_CHANGED = "contest.changed"
MESSAGE_SENT = "admin.message_sent"
GOLD_EDITED = "gold.edited"


class QualityError(EngineError):
    """A refused quality action (bad input, wrong role, conflict); nothing was changed."""


class ReviewConflict(QualityError):
    def __init__(self, message: str) -> None:
        super().__init__("review_conflict", message, 409)


# A judgment being graded: the record the submit path builds, or a stored row (replay, tests).
GradedJudgment = SubmittedJudgment | Judgment
# Ids per ``IN (...)`` list: far below SQLite's and PostgreSQL's parameter limits.
_CHUNK = 900


# The hot path's statements, built once with bound parameters: building a SQLAlchemy statement
# and its cache key costs more Python than SQLite takes to run it (about 0.1-0.2 ms each).
_A, _I, _J = AnnotatorState.__table__, Image.__table__, Judgment.__table__
_IDS: BindParameter[Any] = bindparam("ids", expanding=True)
_SELECT_ANNOTATORS = select(_A).where(_A.c.job_id == bindparam("job"), _A.c.user_id.in_(_IDS))
# PostgreSQL, a writing state: the same rows locked in id order (deadlocks only out of order).
_LOCK_ANNOTATORS = _SELECT_ANNOTATORS.order_by(_A.c.user_id).with_for_update()
# By primary key only (the job is checked on the rows): with ``AND job_id = ?`` SQLite (no
# statistics) preferred a job_id index and scanned every image of the job for nine ids.
_SELECT_IMAGES = select(
    _I.c.id, _I.c.job_id, _I.c.model_score, *(_I.c[n] for n in IMAGE_COLUMNS)
).where(_I.c.id.in_(_IDS))
# NO KEY UPDATE: excludes other writers, not the foreign-key checks of pages being inserted.
_LOCK_IMAGES = _SELECT_IMAGES.order_by(_I.c.id).with_for_update(key_share=True)
_SELECT_GOLD = select(
    GoldItem.__table__.c.image_id,
    GoldItem.__table__.c.accepted_answers,
    GoldItem.__table__.c.active,
    GoldItem.__table__.c.difficulty,
).where(GoldItem.__table__.c.image_id.in_(_IDS))
_NOT_PENDING = _J.c.id.not_in(bindparam("pending", expanding=True))
# By image: no job condition (an image's judgments are all of its job, and the engine asks only
# about images of this job); with one, SQLite walked ``ix_judgments_job``, i.e. every judgment
# of the job, for each page. Callers sort by id.
_SELECT_JUDGMENTS_ON = select(_J).where(_J.c.image_id.in_(_IDS), _NOT_PENDING)
# By annotator: ``job_id + 0`` keeps SQLite on the (user_id, image_id) index for the same reason.
_SELECT_JUDGMENTS_BY = select(_J).where(
    _J.c.user_id == bindparam("user"), (_J.c.job_id + 0) == bindparam("job"), _NOT_PENDING
)
# executemany UPDATE by primary key (bind names differ from column names: SQLAlchemy reserves
# those for its own SET clause).
_UPDATES = {
    model: update(model.__table__)
    .where(model.__table__.c.id == bindparam("_id"))
    .values({name: bindparam("v_" + name) for name in columns})
    for model, columns in (
        (AnnotatorState, ANNOTATOR_COLUMNS),
        (Image, IMAGE_COLUMNS),
        (Judgment, JUDGMENT_COLUMNS),
    )
}
_INSERT_AUDIT = insert(AuditEvent.__table__)


def _chunks(ids: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


class DbState(QualityState):
    """A ``QualityState`` that loads the rows it is asked about, and writes back what changed.

    This runs on every submitted page, so it reads and writes with Core statements (no ORM
    objects, identity map or unit of work for the rows it touches), loads what a page or a
    removal needs in a few ``IN`` queries, and writes each table's changed rows with one
    executemany ``UPDATE``. ORM objects of those rows that the caller's session already holds
    (``submit_page``'s annotator row and new judgments, an admin action's annotator row) are
    given the written values, so callers see the result as before.

    ``lock``: a writing state on PostgreSQL locks each annotator and image row as it loads it,
    and an image (annotator) before reading its judgments (module docstring).
    ``side_by_side``: a page graded holding the job lock shared (``grading.lock_page_rows``)
    that can be run again: once the engine runs, a row not locked up front raises
    ``LockEscalation`` instead of being locked out of order.
    """

    def __init__(
        self,
        session: Session,
        job: Job,
        spec: JobSpec,
        pending: Sequence[GradedJudgment] = (),
        *,
        lock: bool = False,
        side_by_side: bool = False,
    ) -> None:
        super().__init__(
            default_status=new_state(spec).default_status, default_target=spec.judgments.min
        )
        self.session, self.job = session, job
        # Values as loaded, to write only what changed: annotators by user id (row id, values),
        # images and judgments by id.
        self._annotator_rows: dict[int, tuple[int, dict[str, Any]]] = {}
        self._image_loaded: dict[int, dict[str, Any]] = {}
        self._judgment_loaded: dict[int, dict[str, Any]] = {}
        self.pending = {j.id: j for j in pending}
        self.pending_ids = set(self.pending)
        self.locking = lock and is_postgres(session)
        self._annotators_statement = _LOCK_ANNOTATORS if self.locking else _SELECT_ANNOTATORS
        self._images_statement = _LOCK_IMAGES if self.locking else _SELECT_IMAGES
        self._side_by_side = self.locking and side_by_side
        self._lock_set_closed = False

    def close_lock_set(self) -> None:
        """From now on, a row this state has not locked yet is refused if it would be locked
        out of order (``side_by_side``); called when the rows locked up front are loaded."""
        self._lock_set_closed = self._side_by_side

    # --- loaders -------------------------------------------------------------------------
    def _remember_annotator(self, row: Any) -> AnnotatorRec:
        rec = annotator_rec(row)
        self._annotator_rows[row.user_id] = (
            row.id,
            {name: getattr(row, name) for name in ANNOTATOR_COLUMNS},
        )
        return rec

    def _load_annotator(self, user_id: int) -> AnnotatorRec:
        row = self._rows(self._annotators_statement, [user_id])
        if not row:  # joined outside join_job (e.g. a direct import): create the row
            self.session.add(
                AnnotatorState(
                    job_id=self.job.id,
                    user_id=user_id,
                    status=self.default_status,
                    trust=0.0,
                    flags={},
                )
            )
            self.session.flush()
            row = self._rows(self._annotators_statement, [user_id])
        return self._remember_annotator(row[0])

    def _rows(self, statement: Any, ids: Sequence[int], **params: Any) -> list[Any]:
        """Rows of a prebuilt ``IN (:ids)`` statement, one query per chunk of ids."""
        if self._lock_set_closed and ids and statement in (_LOCK_IMAGES, _LOCK_ANNOTATORS):
            raise LockEscalation(f"grading needs {len(ids)} more rows locked out of order")
        conn = self.session.connection()
        rows: list[Any] = []
        for chunk in _chunks(ids):
            rows += conn.execute(statement, {"ids": list(chunk), "job": self.job.id, **params})
        return rows

    def _preload_annotators(self, user_ids: Iterable[int]) -> None:
        missing = sorted({u for u in user_ids if u not in self.annotators})
        for row in self._rows(self._annotators_statement, missing):
            self.annotators[row.user_id] = self._remember_annotator(row)

    def _load_images(self, image_ids: Sequence[int]) -> None:
        for row in self._rows(self._images_statement, image_ids):
            if row.job_id != self.job.id:
                continue  # another job's image: ``_load_image`` refuses it
            rec = image_rec(row)
            rec.model_score = row.model_score
            self.images[row.id] = rec
            self._image_loaded[row.id] = image_values(rec)

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
        for image_id, accepted, active, difficulty in self._rows(_SELECT_GOLD, ids):
            self.gold[image_id] = GoldRec(image_id, tuple(accepted), active, difficulty or "medium")

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
            select(
                Judgment.is_quiz,
                Judgment.answer,
                Judgment.certainty,
                Judgment.gold_missed,
                func.count(),
            )
            .where(
                (Judgment.job_id + 0) == self.job.id,
                Judgment.user_id == user_id,
                Judgment.id.not_in(self.pending_ids or {-1}),
            )
            .group_by(Judgment.is_quiz, Judgment.answer, Judgment.certainty, Judgment.gold_missed)
        ):
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
            rec = judgment_rec(row)
            if row.id not in self.judgments:
                self._judgment_loaded[row.id] = judgment_values(rec)
            recs.append(rec)
        self._preload_annotators([*users, *(r.user_id for r in recs)])
        return recs

    def _lock_images_of(self, image_ids: Iterable[int]) -> None:
        """An image's row is locked before its judgments are read (a writer of a judgment
        locks its image first): loading the image locks it."""
        if self.locking:
            self._load_images(sorted({i for i in image_ids if i not in self.images}))

    def _load_judgments_on(self, image_id: int) -> list[JudgmentRec]:
        self._lock_images_of([image_id])
        return self._judgment_recs(
            self._rows(_SELECT_JUDGMENTS_ON, [image_id], pending=sorted(self.pending_ids))
        )

    def preload_judgments_on(self, image_ids: Iterable[int], users: Iterable[int] = ()) -> None:
        """The judgments on these images in one query per chunk (a page's worth, or every image
        a removal touches), instead of one query per image when the engine asks; their
        annotators and ``users`` in one more."""
        ids = sorted({i for i in image_ids if i not in self._images_loaded})
        if ids:
            self._lock_images_of(ids)
            self._remember(
                self._judgment_recs(
                    self._rows(_SELECT_JUDGMENTS_ON, ids, pending=sorted(self.pending_ids)), users
                )
            )
            self._images_loaded.update(ids)
        else:
            self._preload_annotators(users)

    def _load_judgments_by(self, user_id: int) -> list[JudgmentRec]:
        self.annotator(user_id)  # locked (when locking) before their judgments are read
        rows = self.session.connection().execute(
            _SELECT_JUDGMENTS_BY,
            {"job": self.job.id, "user": user_id, "pending": sorted(self.pending_ids)},
        )
        return self._judgment_recs(rows)

    def prefetch(self, image_ids: list[int], users: Iterable[int] = ()) -> None:
        self._load_images([i for i in image_ids if i not in self.images])
        self.preload_judgments_on(image_ids, users)

    # --- writing -------------------------------------------------------------------------
    def write_back(self, now: datetime) -> None:
        self._write_annotators(now)
        changed_images = [
            {"_id": image_id, **values}
            for image_id, rec in self.images.items()
            if (values := image_values(rec)) != self._image_loaded.get(image_id)
        ]
        self._update(Image, changed_images)
        changed_judgments = [
            {"_id": judgment_id, **values}
            for judgment_id, rec in self.judgments.items()
            if (values := judgment_values(rec)) != self._judgment_loaded.get(judgment_id)
        ]
        self._update(Judgment, changed_judgments)

    def _write_annotators(self, now: datetime) -> None:
        changed = []
        for user_id, rec in self.annotators.items():
            row_id, before = self._annotator_rows[user_id]
            values = {name: getattr(rec, name) for name in ANNOTATOR_COLUMNS[:10]}
            values["flags"] = dict(rec.flags)
            values["quiz_passed_at"] = before["quiz_passed_at"]
            if rec.quiz_passed and values["quiz_passed_at"] is None:
                values["quiz_passed_at"] = now
            counts = self._counts.get(user_id)
            values["answer_counts"] = (
                counts.to_dict() if counts is not None else before["answer_counts"]
            )
            if values != before:
                changed.append({"_id": row_id, **values})
        self._update(AnnotatorState, changed)

    def _update(self, model: type[Any], rows: list[dict[str, Any]]) -> None:
        """One executemany UPDATE by primary key; ORM copies in the session get the values."""
        if not rows:
            return
        self.session.connection().execute(
            _UPDATES[model],
            [{("v_" + k if k != "_id" else k): v for k, v in r.items()} for r in rows],
        )
        identity_map = self.session.identity_map
        for r in rows:
            obj = identity_map.get(identity_key(model, r["_id"]))
            if obj is not None:
                for name, value in r.items():
                    if name != "_id":
                        set_committed_value(obj, name, value)


# --- shared plumbing -----------------------------------------------------------------------------


def lock_job(session: Session, job: Job, annotators: Iterable[int] = ()) -> None:
    """An admin command's lock: the job's quality lock exclusively (no page of the job is
    being graded meanwhile), then the annotator-state rows it will write, by user id
    (PostgreSQL; SQLite is serial).

    Lock order, shared with ``grading.lock_page_rows``: the job's quality lock first, then
    images, then annotator states. A page submission takes the job lock (shared) before any
    image or annotator lock, so while an admin command holds it exclusively no submission holds
    a row it could want: the two never wait on each other in a cycle.
    """
    advisory_lock(session, JOB_QUALITY, job.id)
    ids = sorted(set(annotators))
    if ids:
        session.execute(
            select(AnnotatorState.id)
            .where(AnnotatorState.job_id == job.id, AnnotatorState.user_id.in_(ids))
            .order_by(AnnotatorState.user_id)
            .with_for_update()
        )


def add_audit(
    session: Session,
    job: Job,
    actor_id: int | None,
    action: str,
    subject: str | None,
    payload: dict[str, Any],
    now: datetime,
) -> AuditEvent:
    event = AuditEvent(
        at=now, job_id=job.id, actor_id=actor_id, action=action, subject=subject, payload=payload
    )
    session.add(event)
    return event


def _record_decisions(
    session: Session, job: Job, decisions: list[Decision], actor_id: int | None, now: datetime
) -> None:
    """The engine's decisions, in order, in one executemany INSERT (after the input event,
    which the caller added and ``run_event`` flushed first: the log's id order is the order)."""
    if decisions:
        session.connection().execute(
            _INSERT_AUDIT,
            [
                {
                    "at": now,
                    "job_id": job.id,
                    "actor_id": actor_id,
                    "action": d.action,
                    "subject": d.subject,
                    "payload": d.payload,
                }
                for d in decisions
            ],
        )


def run_event(
    session: Session,
    job: Job,
    spec: JobSpec,
    event: Event,
    now: datetime,
    actor_id: int | None,
    *,
    state: DbState | None = None,
    preload_images: Iterable[int] = (),
    preload_gold: Iterable[int] = (),
    audit_input: AuditEvent | None = None,
) -> tuple[Engine, Any]:
    """Apply one input event to the stored state and write state and decisions back.

    ``preload_*``: rows the event will certainly touch, loaded in one query each up front.
    ``audit_input``: the event's input row of the audit log, inserted after the engine ran
    (every lock held: module docstring), right before the decisions.
    """
    # DbState reads with Core statements, which do not autoflush: make the caller's pending
    # ORM changes (new judgments, the input audit event, a new gold item) visible first.
    session.flush()
    state = state if state is not None else DbState(session, job, spec, lock=True)
    state.preload_gold(preload_gold)
    state.prefetch(sorted(set(preload_images)))
    state.close_lock_set()
    engine = Engine(state, spec)
    result = engine.apply(event)
    state.write_back(now)
    if audit_input is not None:
        session.add(audit_input)
        session.flush()  # its id comes before the decisions'
    _record_decisions(session, job, engine.decisions, actor_id, now)
    session.flush()
    return engine, result


def judgment_in(j: GradedJudgment) -> JudgmentIn:
    return JudgmentIn(
        id=j.id,
        image_id=j.image_id,
        answer=j.answer,
        certainty=j.certainty,
        quality_flag=j.quality_flag,
        is_gold=bool(j.is_gold),
        is_quiz=bool(j.is_quiz),
    )
