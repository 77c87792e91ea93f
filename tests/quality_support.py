"""Helpers for the quality-engine tests: a small job stored through the ORM and pages submitted
the way ``annotate.submission.submit_page`` stores them, with full control over which annotator
answers which image, how, and how fast."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from cxrlabel.jobspec import JobSpec, parse_job
from cxrlabel.quality import audit, grading, records
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import (
    AnnotatorState,
    GoldItem,
    Image,
    ImageStatus,
    Job,
    Judgment,
    Page,
    PageItem,
    Submission,
    User,
)

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


def quality_toml(
    *,
    name: str = "q-job",
    quiz_length: int = 3,
    min_accuracy: float = 0.6,
    min_gold: int = 3,
    prior_correct: float = 1.0,
    prior_missed: float = 1.0,
    jmin: int = 3,
    jmax: int = 5,
    target: float = 0.8,
    min_seconds: float = 10.0,
    speed_limit: int = 2,
    dist_min: int = 6,
    dist_remove: bool = False,
    method: str = "trust",
    cant_tell_fraction: float = 0.5,
    flag_votes: int = 2,
    items_per_page: int = 10,
    strict: bool = True,
    quiz_retakes: int = 0,
    min_peer_pairs: int = 30,
    online: str = "auto",
    collusion_min_pairs: int = 0,
) -> str:
    return f'''
name = "{name}"
title = "Quality test job"
[question]
prompt = "What do the lungs look like?"
labels = [{{ value = "NORMAL", text = "Healthy" }}, {{ value = "PNEUMONIA", text = "Pneumonia" }}]
[certainty]
prompt = "How sure are you?"
options = [
  {{ value = "definitely", text = "Definitely", weight = 1.0 }},
  {{ value = "probably", text = "Probably", weight = 0.6 }},
  {{ value = "cant_tell", text = "Can't tell", weight = 0.0 }},
]
[quality_flag]
prompt = "Problem?"
options = [{{ value = "unreadable", text = "Unreadable" }}]
[instructions]
markdown = "Look at both lungs."
[judgments]
min = {jmin}
max = {jmax}
confidence_target = {target}
[gold]
quiz_length = {quiz_length}
min_accuracy = {min_accuracy}
per_page = 1
min_gold_before_removal = {min_gold}
remove_below_min_accuracy = {"true" if strict else "false"}
quiz_retakes = {quiz_retakes}
prior_correct = {prior_correct}
prior_missed = {prior_missed}
[pages]
items_per_page = {items_per_page}
min_seconds_per_page = {min_seconds}
[quality]
speed_trap_limit = {speed_limit}
distribution_min_answers = {dist_min}
distribution_min_entropy_bits = 0.2
distribution_max_prevalence_gap = 0.45
distribution_remove = {"true" if dist_remove else "false"}
expected_prevalence = {{ NORMAL = 0.3, PNEUMONIA = 0.7 }}
min_peer_pairs = {min_peer_pairs}
collusion_min_pairs = {collusion_min_pairs}
[review]
cant_tell_fraction = {cant_tell_fraction}
quality_flag_votes = {flag_votes}
[aggregation]
method = "{method}"
online = "{online}"
'''


def make_spec(**kw: Any) -> JobSpec:
    return parse_job(quality_toml(**kw), "quality-test")


Answer = str | tuple[str, str] | tuple[str, str, str | None]


@dataclass
class QEnv:
    """A stored job: images ``w0..`` (work) and ``g0..`` (gold), users by name."""

    db: Database
    spec: JobSpec
    job_id: int
    images: dict[str, int] = field(default_factory=dict)
    users: dict[str, int] = field(default_factory=dict)
    clock: datetime = T0
    _n: int = 0

    def tick(self, minutes: float = 1.0) -> datetime:
        self.clock += timedelta(minutes=minutes)
        return self.clock

    def add_user(self, name: str, role: str = "annotator", status: str | None = None) -> int:
        with self.db.session() as s:
            user = User(username=name, password_hash="x", role=role)
            s.add(user)
            s.flush()
            if role == "annotator":
                s.add(
                    AnnotatorState(
                        job_id=self.job_id,
                        user_id=user.id,
                        trust=0.0,
                        flags={},
                        joined_at=T0,
                        status=status or ("quiz" if self.spec.gold.quiz_length else "active"),
                    )
                )
            self.users[name] = user.id
            return user.id

    def submit(
        self,
        who: str,
        answers: dict[str, Answer],
        *,
        seconds: float = 60.0,
        kind: str | None = None,
    ) -> records.PageOutcome:
        """One page by ``who``: image name -> answer | (answer, certainty[, flag])."""
        now = self.tick()
        uid = self.users[who]
        with self.db.session() as s:
            job, user = s.get(Job, self.job_id), s.get(User, uid)
            ids = [self.images[name] for name in answers]
            gold = set(s.scalars(select(GoldItem.image_id).where(GoldItem.image_id.in_(ids))))
            if kind is None:
                state = s.scalar(
                    select(AnnotatorState).where(
                        AnnotatorState.job_id == self.job_id, AnnotatorState.user_id == uid
                    )
                )
                kind = "quiz" if state.status == "quiz" else "work"
            served = now - timedelta(seconds=seconds)
            page = Page(
                job_id=job.id,
                user_id=uid,
                kind=kind,
                served_at=served,
                expires_at=served + timedelta(minutes=30),
                submitted_at=now,
            )
            page.items = [
                PageItem(image_id=i, position=k, is_gold=i in gold) for k, i in enumerate(ids)
            ]
            s.add(page)
            s.flush()
            self._n += 1
            sub = Submission(
                user_id=uid,
                page_id=page.id,
                client_submission_id=f"c{self._n}",
                response={},
                created_at=now,
            )
            s.add(sub)
            s.flush()
            rows = []
            for name, value in answers.items():
                answer, certainty, flag = _unpack(value)
                image_id = self.images[name]
                rows.append(
                    Judgment(
                        job_id=job.id,
                        image_id=image_id,
                        user_id=uid,
                        page_id=page.id,
                        submission_id=sub.id,
                        answer=answer,
                        certainty=certainty,
                        quality_flag=flag,
                        is_gold=image_id in gold,
                        is_quiz=kind == "quiz",
                        served_at=served,
                        submitted_at=now,
                        seconds=seconds / len(answers),
                    )
                )
            s.add_all(rows)
            s.flush()
            return grading.on_page_submitted(s, job, self.spec, user, page, rows, now)

    def call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        """Run a service function in its own transaction with (session, job, ...) arguments."""
        with self.db.session() as s:
            return fn(s, s.get(Job, self.job_id), *args, **kw)

    def user(self, s: Any, name: str) -> User:
        return s.get(User, self.users[name])

    def image(self, name: str) -> Image:
        with self.db.session() as s:
            return s.get(Image, self.images[name])

    def annotator(self, name: str) -> AnnotatorState:
        with self.db.session() as s:
            return s.scalar(
                select(AnnotatorState).where(
                    AnnotatorState.job_id == self.job_id, AnnotatorState.user_id == self.users[name]
                )
            )

    def judgments_of(self, name: str) -> list[Judgment]:
        with self.db.session() as s:
            return list(
                s.scalars(
                    select(Judgment)
                    .where(Judgment.user_id == self.users[name])
                    .order_by(Judgment.id)
                )
            )

    def verify(self) -> audit.ReplayReport:
        with self.db.session() as s:
            return audit.verify_replay(s, s.get(Job, self.job_id), self.spec)


def _unpack(value: Answer) -> tuple[str, str, str | None]:
    if isinstance(value, str):
        return value, "definitely", None
    if len(value) == 2:
        return value[0], value[1], None
    return value[0], value[1], value[2]


def seed(
    db: Database,
    spec: JobSpec,
    toml: str,
    *,
    work: int = 6,
    gold: tuple[str, ...] = (
        "PNEUMONIA",
        "NORMAL",
        "PNEUMONIA",
        "NORMAL",
        "PNEUMONIA",
        "NORMAL",
        "PNEUMONIA",
        "NORMAL",
    ),
) -> QEnv:
    with db.session() as s:
        job = Job(name=spec.name, spec_toml=toml, spec_sha256="0" * 64)
        s.add(job)
        s.flush()
        env = QEnv(db=db, spec=spec, job_id=job.id)
        for k in range(work):
            env.images[f"w{k}"] = _add_image(
                s, job, f"w{k}", ImageStatus.NEEDS_JUDGMENTS, spec.judgments.min
            )
        for k, answer in enumerate(gold):
            image_id = _add_image(s, job, f"g{k}", ImageStatus.GOLD, spec.judgments.min)
            s.add(
                GoldItem(
                    job_id=job.id,
                    image_id=image_id,
                    accepted_answers=[answer],
                    reason=f"reason g{k}",
                    difficulty="easy",
                )
            )
            env.images[f"g{k}"] = image_id
    return env


def make_env(db: Database, work: int = 6, **kw: Any) -> QEnv:
    toml = quality_toml(**kw)
    return seed(db, parse_job(toml, "quality-test"), toml, work=work)


def _add_image(s: Any, job: Job, name: str, status: str, target: int) -> int:
    digest = f"{job.id:08d}{name:>56}".replace(" ", "0")
    image = Image(
        job_id=job.id,
        source_path=f"{name}.png",
        source_format="png",
        sha256=digest,
        pixel_sha256=digest,
        phash="0" * 16,
        width=8,
        height=8,
        rendition_path=f"{name}.jpg",
        thumb_path=f"{name}-t.jpg",
        status=status,
        judgment_target=target,
    )
    s.add(image)
    s.flush()
    return image.id


def pass_quiz(env: QEnv, who: str, answers: tuple[str, ...] = ("g0", "g1", "g2")) -> None:
    right = {
        f"g{k}": a
        for k, a in enumerate(
            (
                "PNEUMONIA",
                "NORMAL",
                "PNEUMONIA",
                "NORMAL",
                "PNEUMONIA",
                "NORMAL",
                "PNEUMONIA",
                "NORMAL",
            )
        )
    }
    outcome = env.submit(who, {g: right[g] for g in answers}, kind="quiz")
    assert outcome.quiz_passed is True, outcome
