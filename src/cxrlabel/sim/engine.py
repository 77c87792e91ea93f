"""In-process crowd simulation through the real engines, on a simulated clock.

Every simulated action is one database transaction that calls exactly what the web app calls:
``annotate.assignment.join_job`` / ``next_page_or_reason`` when an annotator asks for a page,
``annotate.submission.submit_page`` (which calls ``quality.grading.on_page_submitted``) when
they submit, and ``quality.views.review_queue`` / ``quality.commands.record_expert_label`` for the
radiologist. Nothing here decides anything about quality, assignment or aggregation; the
simulator only chooses *what the people do and when* (personas, arrivals, page times).

Events (a heap on the simulated clock):

* ``arrive``  - a new annotator (a real ``User`` row ``sim-<persona>-<n>``) joins the job;
* ``request`` - they ask for a page and, if they get one, answer it (persona model) and
  schedule its submission after the time the persona spends on it;
* ``submit``  - they submit; then they ask for the next page after a short pause, or leave for
  a break (another session later) or for good.

Someone arriving while no image needs judgments does not join; the clock stops after
``crowd.max_days``. With ``until_settled`` the crowd instead keeps arriving (further rosters of
the same mix) until no image needs judgments, bounded by ``max_annotators`` arrivals, so every
work image ends finalised or in the review queue (what ``cxrlabel demo --simulate`` and
``simulate --into-job`` promise). The expert then works through the review queue. All
randomness comes from ``seed``.
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import func, select

from cxrlabel.annotate.assignment import join_job, next_page_or_reason
from cxrlabel.annotate.schemas import AnswerIn, SubmissionError, SubmitResult
from cxrlabel.annotate.submission import submit_page
from cxrlabel.design.exposure import active_count
from cxrlabel.jobspec import JobSpec
from cxrlabel.quality.commands import record_expert_label
from cxrlabel.quality.views import review_queue
from cxrlabel.sim.crowd import CrowdSpec
from cxrlabel.sim.personas import Persona
from cxrlabel.sim.topup import TopUpStats, top_up
from cxrlabel.storage.db import Database
from cxrlabel.storage.locks import retry_transient
from cxrlabel.storage.models import (
    AnnotatorState,
    AnnotatorStatus,
    Image,
    ImageStatus,
    Job,
    PageKind,
    Role,
    User,
)

DEFAULT_START = datetime(2025, 1, 6, 8, 0, tzinfo=UTC)  # a Monday morning, fixed for replays
UNUSABLE_PASSWORD = "!simulated"  # not an argon2 hash: nobody can log in as a simulated user
THINK_SECONDS = 4.0  # mean pause between submitting a page and asking for the next
LEAVING_CODES = {
    "all_done",
    "quota_reached",
    "not_ready",
    AnnotatorStatus.REMOVED,
    AnnotatorStatus.DISQUALIFIED,
}


@dataclass
class SimAnnotator:
    index: int
    persona: Persona
    rng: np.random.Generator
    pick_rng: random.Random  # handed to the assignment engine (gold choice, positions)
    user_id: int | None = None
    username: str = ""
    sessions_left: int = 1
    pages_left: int = 0  # in the current session
    work_pages: int = 0
    pages_submitted: int = 0
    quiz_pages: int = 0
    training_pages: int = 0  # practice pages before the quiz (each with feedback)
    seconds_worked: float = 0.0
    rejected_pages: int = 0
    gone: bool = False
    pending: dict[str, Any] | None = None  # the page being answered


@dataclass
class SimRecord:
    """What happened, beyond what the database keeps (who was which persona, when)."""

    annotators: list[SimAnnotator] = field(default_factory=list)
    start: datetime = DEFAULT_START
    crowd_end: datetime = DEFAULT_START
    end: datetime = DEFAULT_START
    pages_submitted: int = 0
    quiz_pages: int = 0
    training_pages: int = 0
    rejected_submissions: dict[str, int] = field(default_factory=dict)
    expert_reviews: int = 0
    expert_seconds: float = 0.0
    gold_top_up: TopUpStats = field(default_factory=TopUpStats)
    stopped_by: str = "done"  # done | max_days | crowd_exhausted | page_limit
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (hours, images settled)
    # wall seconds per engine call
    timings: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))

    def persona_of(self) -> dict[int, str]:
        return {a.user_id: a.persona.name for a in self.annotators if a.user_id is not None}


@dataclass(frozen=True)
class Truth:
    """What the simulated people 'see': per image id, the true label and the difficulty."""

    # By image id (by public id in the HTTP driver, which sees no database ids).
    label: dict[Any, str]
    difficulty: dict[Any, float]


class Simulation:
    def __init__(
        self,
        db: Database,
        job_id: int,
        spec: JobSpec,
        crowd: CrowdSpec,
        truth: Truth,
        *,
        seed: int = 0,
        start: datetime = DEFAULT_START,
        n_annotators: int | None = None,
        max_pages: int | None = None,
        expert_review: bool = True,
        progress: Callable[[int, int], None] | None = None,
        until_settled: bool = False,
        max_annotators: int | None = None,
        gold_top_up: int = 0,
    ) -> None:
        self.db, self.job_id, self.spec, self.crowd, self.truth = db, job_id, spec, crowd, truth
        self.seed, self.start = seed, start
        self.n_annotators = n_annotators or crowd.annotators
        self.max_pages = max_pages
        self.expert_review = expert_review
        self.progress = progress
        self.until_settled = until_settled
        # The bound on a crowd that keeps arriving: ten rosters' worth by default.
        self.max_annotators = max_annotators or 10 * self.n_annotators
        self.end_of_time = (
            datetime.max.replace(tzinfo=UTC)
            if until_settled
            else start + timedelta(days=crowd.max_days)
        )
        self.record = SimRecord(start=start, crowd_end=start, end=start)
        self._heap: list[tuple[datetime, int, str, int]] = []
        self._seq = itertools.count()
        self._labels = spec.label_values
        self._certainties = _ordered_certainties(spec)
        self._flags = spec.quality_flag_values
        self._job_row: Job | None = None
        self._users: dict[int, User] = {}
        self._open_work = self._count_open()
        # Crowd gold top-up (sim/topup.py): 0 = off.
        self.gold_top_up = gold_top_up
        with db.session() as session:
            self._gold_target = active_count(session, session.get_one(Job, job_id))
        self._top_up_rng = np.random.default_rng([seed, 4])  # apart from the review's stream
        self._top_up_after = 0  # pages submitted before the next check may draw

    # --- the event loop --------------------------------------------------------------------
    def run(self) -> SimRecord:
        started = time.perf_counter()
        try:
            return self._run()
        finally:
            self.record.timings["total"] = time.perf_counter() - started

    def _run(self) -> SimRecord:
        names = _Usernames(self.db)
        self._arrivals(names, self.start, self.n_annotators, batch=0)
        batch = 0
        while True:
            stopped_by = self._drain()
            if stopped_by is not None:
                self.record.stopped_by = stopped_by
                break
            if self._count_open() == 0:
                break
            room = self.max_annotators - len(self.record.annotators)
            if not self.until_settled or room <= 0:
                self.record.stopped_by = "crowd_exhausted"
                break
            # Work is still open and everyone has left: the next wave of the same crowd.
            batch += 1
            self._arrivals(names, self.record.crowd_end, min(self.n_annotators, room), batch)
        if self.expert_review:
            started = time.perf_counter()
            self._review(self.record.crowd_end)
            self.record.timings["expert_review"] += time.perf_counter() - started
        self.record.end = max(self.record.end, self.record.crowd_end)
        return self.record

    def _arrivals(self, names: _Usernames, t: datetime, n: int, batch: int) -> None:
        """Schedule ``n`` arrivals from ``t`` on (Poisson process, the crowd's persona mix).

        Batch 0 draws exactly what the simulator always drew, so earlier results replay."""
        master = np.random.default_rng([self.seed, 1] if batch == 0 else [self.seed, 1, batch])
        for persona in self.crowd.roster(master, n):
            index = len(self.record.annotators)
            annotator = SimAnnotator(
                index=index,
                persona=persona,
                rng=np.random.default_rng([self.seed, 2, index]),
                pick_rng=random.Random(f"{self.seed}-{index}"),
            )
            annotator.username = names.next(persona.name)
            self.record.annotators.append(annotator)
            self._push(t, "arrive", index)
            t += timedelta(hours=float(master.exponential(1.0 / self.crowd.arrivals_per_hour)))

    def _drain(self) -> str | None:
        """Play events until none is left; the reason when a limit stopped the crowd first."""
        while self._heap:
            when, _seq, kind, index = heapq.heappop(self._heap)
            if when > self.end_of_time:
                return "max_days"
            if self._page_limit_reached():
                return "page_limit"
            getattr(self, f"_on_{kind}")(self.record.annotators[index], when)
        return None

    def _push(self, when: datetime, kind: str, index: int) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), kind, index))

    def _page_limit_reached(self) -> bool:
        return self.max_pages is not None and self.record.pages_submitted >= self.max_pages

    # --- event handlers --------------------------------------------------------------------
    def _on_arrive(self, a: SimAnnotator, now: datetime) -> None:
        if self._count_open() == 0:  # nothing to do now: this person does not join (images
            a.gone = True  # reopened later by a removal still get later arrivals)
            return
        with self.db.session() as session:
            user = User(
                username=a.username,
                password_hash=UNUSABLE_PASSWORD,
                role=Role.ANNOTATOR,
                created_at=now,
            )
            session.add(user)
            session.flush()
            join_job(session, self._job(session), self.spec, user, now)
            a.user_id = user.id
            self._users[a.index] = user
        a.sessions_left = 1 + int(a.rng.poisson(max(a.persona.sessions - 1.0, 0.0)))
        self._start_session(a, now)

    def _start_session(self, a: SimAnnotator, when: datetime) -> None:
        a.sessions_left -= 1
        median = a.persona.pages_per_session
        a.pages_left = max(1, round(float(a.rng.lognormal(np.log(median), 0.6))))
        self._push(when, "request", a.index)

    def _on_request(self, a: SimAnnotator, now: datetime) -> None:
        with self.db.session() as session:
            job, user = self._job(session), self._user(session, a)
            started = time.perf_counter()
            page, reason = next_page_or_reason(session, job, self.spec, user, now, rng=a.pick_rng)
            self.record.timings["next_page"] += time.perf_counter() - started
            if page is None:
                code = reason.code if reason else "no_work_now"
                self._leave(a, now, for_good=code in LEAVING_CODES)
                return
            is_quiz = page.kind == PageKind.QUIZ
            items = [(item.image_id, item.position, item.is_gold) for item in page.items]
            public = dict(
                session.execute(
                    select(Image.id, Image.public_id).where(
                        Image.id.in_([image_id for image_id, _, _ in items])
                    )
                ).all()
            )
            answers = [
                self._answer(a, image_id, public[image_id], is_quiz, is_gold)
                for image_id, _, is_gold in sorted(items, key=lambda item: item[1])
            ]
            a.pending = {
                "page": page.public_id,
                "answers": answers,
                "quiz": is_quiz,
                "training": page.kind == PageKind.TRAINING,
                "served": now,
            }
            seconds = a.persona.page_seconds(a.rng, len(page.items))
        self._push(now + timedelta(seconds=seconds), "submit", a.index)

    def _answer(
        self, a: SimAnnotator, image_id: int, public_id: str, is_quiz: bool, is_gold: bool = False
    ) -> AnswerIn:
        # ``is_gold`` reaches only the gold-harvester persona, which stands for accounts that
        # learned the bank elsewhere; honest personas never look at it.
        simulated = a.persona.answer(
            a.rng,
            self.truth.label[image_id],
            self.truth.difficulty.get(image_id, 0.5),
            self._labels,
            self._certainties,
            self._flags,
            pages_done=a.work_pages,
            is_quiz=is_quiz,
            is_gold=is_gold,
            feedback_pages=a.pages_submitted,
            image_key=image_id,
        )
        return AnswerIn(
            image_public_id=public_id,
            answer=simulated.answer,
            certainty=simulated.certainty,
            quality_flag=simulated.quality_flag,
        )

    def _on_submit(self, a: SimAnnotator, now: datetime) -> None:
        pending, a.pending = a.pending, None
        assert pending is not None
        client_id = f"sim-{self.seed}-{a.index}-{a.pages_submitted + a.rejected_pages}"
        try:
            started = time.perf_counter()

            def attempt() -> SubmitResult:  # as the web app's submit: run again after a deadlock
                with self.db.session() as session:
                    job, user = self._job(session), self._user(session, a)
                    return submit_page(
                        session,
                        job,
                        self.spec,
                        user,
                        pending["page"],
                        client_id,
                        pending["answers"],
                        now,
                    )

            result = retry_transient(attempt)
            self.record.timings["submit_page"] += time.perf_counter() - started
        except SubmissionError as exc:  # e.g. an expired page whose images were taken
            a.rejected_pages += 1
            counts = self.record.rejected_submissions
            counts[exc.code] = counts.get(exc.code, 0) + 1
            status = None
        else:
            status = result.annotator_status
            self._count_page(a, pending, now)
        a.pages_left -= 1
        if status in (AnnotatorStatus.REMOVED, AnnotatorStatus.DISQUALIFIED):
            self._leave(a, now, for_good=True)
        elif a.pages_left <= 0:
            self._leave(a, now, for_good=False)
        else:
            pause = float(a.rng.exponential(THINK_SECONDS))
            self._push(now + timedelta(seconds=pause), "request", a.index)

    def _count_page(self, a: SimAnnotator, pending: dict[str, Any], now: datetime) -> None:
        a.pages_submitted += 1
        a.seconds_worked += (now - pending["served"]).total_seconds()
        self.record.pages_submitted += 1
        if pending["quiz"]:
            a.quiz_pages += 1
            self.record.quiz_pages += 1
        elif pending["training"]:
            a.training_pages += 1
            self.record.training_pages += 1
        else:
            a.work_pages += 1
        self.record.crowd_end = max(self.record.crowd_end, now)
        if self.record.pages_submitted % 25 == 0:
            self._open_work = self._count_open()
            settled = self._n_work - self._open_work
            self.record.timeline.append(((now - self.start).total_seconds() / 3600, settled))
            if self.progress:
                self.progress(settled, self._n_work)
            if self.gold_top_up:
                self._maybe_top_up(now)

    def _leave(self, a: SimAnnotator, now: datetime, *, for_good: bool) -> None:
        if for_good or a.sessions_left <= 0:
            a.gone = True
            return
        # Nothing to do now or the session is over: come back after a break.
        pause = float(a.rng.exponential(self.crowd.break_hours))
        self._start_session(a, now + timedelta(hours=pause))

    # --- the expert --------------------------------------------------------------------------
    def _review(self, now: datetime) -> None:
        expert_rng = np.random.default_rng([self.seed, 3])
        expert = self.crowd.expert
        with self.db.session() as session:
            user = _expert_user(session, now)
            image_ids = self._review_ids(session)
            job = self._job(session)
            for image_id in image_ids:
                seconds = expert.page_seconds(expert_rng, 1)
                now = now + timedelta(seconds=seconds)
                label = self._expert_label(expert_rng, image_id)
                record_expert_label(
                    session,
                    job,
                    self.spec,
                    user,
                    image_id,
                    label,
                    "simulated radiologist review",
                    now,
                )
                self.record.expert_reviews += 1
                self.record.expert_seconds += seconds
        self.record.end = now

    def _expert_label(self, rng: np.random.Generator, image_id: int) -> str:
        return self.crowd.expert.answer(
            rng,
            self.truth.label[image_id],
            self.truth.difficulty.get(image_id, 0.5),
            self._labels,
            self._certainties,
            [],
        ).answer

    def _maybe_top_up(self, now: datetime) -> None:
        """The radiologist confirms crowd proposals once ``gold_top_up`` more test questions
        have been retired than topped up (sim/topup.py)."""
        stats = self.record.gold_top_up
        if self.record.pages_submitted < self._top_up_after:
            return
        with self.db.session() as session:
            job = self._job(session)
            if active_count(session, job) > self._gold_target - self.gold_top_up:
                return
            user = _expert_user(session, now)
            try:
                promoted, corrected = top_up(
                    session,
                    job,
                    self.spec,
                    user,
                    lambda image_id: self._expert_label(self._top_up_rng, image_id),
                    self.gold_top_up,
                    seed=stats.rounds,
                    now=now,
                )
            except ValueError:  # no clear finalised image yet: look again later
                stats.nothing_to_propose += 1
                self._top_up_after = self.record.pages_submitted + 250
                return
        stats.rounds += 1
        stats.promoted += len(promoted)
        stats.corrected += len(corrected)
        self._gold_target -= len(corrected)  # corrections add no gold: do not chase them
        self.record.expert_seconds += sum(
            self.crowd.expert.page_seconds(self._top_up_rng, 1) for _ in promoted + corrected
        )

    def _review_ids(self, session: Any) -> list[int]:
        return [item.image_id for item in review_queue(session, self._job(session), self.spec)]

    # --- helpers -------------------------------------------------------------------------------
    def _job(self, session: Any) -> Job:
        if self._job_row is None:
            self._job_row = session.get(Job, self.job_id)
            assert self._job_row is not None
            return self._job_row
        # The job row never changes during a run: attach it without a SELECT.
        return session.merge(self._job_row, load=False)

    def _user(self, session: Any, a: SimAnnotator) -> User:
        row = self._users.get(a.index)
        if row is None:
            row = session.get(User, a.user_id)
            self._users[a.index] = row
            return row
        return session.merge(row, load=False)

    def _count_open(self) -> int:
        with self.db.session() as session:
            counts = dict(
                session.execute(
                    select(Image.status, func.count())
                    .where(Image.job_id == self.job_id)
                    .group_by(Image.status)
                ).all()
            )
        self._n_work = sum(n for status, n in counts.items() if status not in ImageStatus.NOT_WORK)
        return int(counts.get(ImageStatus.NEEDS_JUDGMENTS, 0))


def _expert_user(session: Any, now: datetime) -> User:
    user = session.scalar(select(User).where(User.username == "sim-expert-1"))
    if user is None:
        user = User(
            username="sim-expert-1",
            password_hash=UNUSABLE_PASSWORD,
            role=Role.EXPERT,
            created_at=now,
        )
        session.add(user)
        session.flush()
    return user


def _ordered_certainties(spec: JobSpec) -> list[str]:
    """The job's certainty values, most certain first and "can't tell" last (by weight)."""
    weights = spec.certainty_weights
    cant = spec.certainty.cant_tell
    ordered = sorted((v for v in spec.certainty_values if v != cant), key=lambda v: -weights[v])
    return [*ordered, cant]


class _Usernames:
    """``sim-<persona>-<n>`` names that continue the numbering already in the database."""

    def __init__(self, db: Database) -> None:
        with db.session() as session:
            self.taken = set(
                session.scalars(select(User.username).where(User.username.like("sim-%")))
            )
        self.counts: dict[str, int] = {}

    def next(self, persona: str) -> str:
        stem = f"sim-{persona.replace('_', '-')}"
        while True:
            self.counts[stem] = self.counts.get(stem, 0) + 1
            name = f"{stem}-{self.counts[stem]}"
            if name not in self.taken:
                self.taken.add(name)
                return name


def annotator_states(db: Database, job_id: int, user_ids: Sequence[int]) -> dict[int, Any]:
    with db.session() as session:
        rows = session.scalars(
            select(AnnotatorState).where(
                AnnotatorState.job_id == job_id, AnnotatorState.user_id.in_(list(user_ids))
            )
        )
        return {row.user_id: row for row in rows}
