"""Read views of the quality state for pages and commands: the expert review queue, the
contributors report, gold statistics and contests. Reads only; no annotator identities in the
review queue.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cxrlabel.design.goldbank import gold_rows
from cxrlabel.jobspec import JobSpec
from cxrlabel.storage.models import (
    AnnotatorState,
    Contest,
    GoldItem,
    Image,
    ImageStatus,
    Job,
    Judgment,
    User,
)

from .consensus import ConsensusParams, evaluate
from .rows import judgment_rec
from .state import JudgmentRec


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
    # The model's p(PNEUMONIA) when the job has model scores (an opinion, never the label).
    model_score: float | None = None


def review_queue(session: Session, job: Job, spec: JobSpec) -> list[ReviewItem]:
    """Images waiting for an expert, most uncertain first."""
    images = session.scalars(
        select(Image).where(Image.job_id == job.id, Image.status == ImageStatus.NEEDS_REVIEW)
    ).all()
    if not images:
        return []
    ids = [i.id for i in images]
    by_image: dict[int, list[JudgmentRec]] = {i: [] for i in ids}
    for row in session.scalars(
        select(Judgment).where(Judgment.image_id.in_(ids)).order_by(Judgment.id)
    ):
        by_image[row.image_id].append(judgment_rec(row))
    trust = dict(
        session.execute(
            select(AnnotatorState.user_id, AnnotatorState.trust).where(
                AnnotatorState.job_id == job.id
            )
        ).all()
    )
    params = ConsensusParams.from_spec(spec)
    items = []
    for image in images:
        judgments = by_image[image.id]
        ev = evaluate(
            judgments,
            {j.user_id: trust.get(j.user_id, 0.0) for j in judgments},
            params,
            image.model_score,
        )
        counted = [j for j in judgments if not j.tainted and not j.is_gold]
        answers: dict[str, dict[str, int]] = {}
        for j in counted:
            per = answers.setdefault(j.answer, {})
            per[j.certainty] = per.get(j.certainty, 0) + 1
        flags = Counter(j.quality_flag for j in counted if j.quality_flag)
        items.append(
            ReviewItem(
                image_id=image.id,
                public_id=image.public_id,
                reason=ev.review_reason,
                label=image.label,
                confidence=image.confidence,
                proba=image.proba,
                uncertainty=1.0 - (image.confidence if image.confidence is not None else 0.0),
                trusted_judgments=image.trusted_judgments,
                answers=answers,
                quality_flags=dict(sorted(flags.items())),
                model_score=image.model_score,
            )
        )
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
    rows = session.execute(
        select(AnnotatorState, User)
        .join(User, User.id == AnnotatorState.user_id)
        .where(AnnotatorState.job_id == job.id)
        .order_by(AnnotatorState.trust, User.username)
    ).all()
    return [
        Contributor(
            user_id=user.id,
            username=user.username,
            pseudonym=user.pseudonym,
            status=st.status,
            status_reason=st.status_reason,
            trust=st.trust,
            judgments=st.judgments,
            gold_seen=st.gold_seen,
            gold_missed=st.gold_missed,
            gold_contested=st.gold_contested,
            gold_forgiven=st.gold_forgiven,
            speed_trips=st.speed_trips,
            flags=dict(st.flags or {}),
            message=st.message,
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
    stats = [
        GoldStat(
            gold_id=r.gold.id,
            image_id=r.gold.image_id,
            public_id=r.image.public_id,
            accepted_answers=list(r.gold.accepted_answers),
            reason=r.gold.reason,
            difficulty=r.gold.difficulty,
            source=r.gold.source,
            active=r.gold.active,
            seen=r.seen,
            missed=r.missed,
            contested=r.contests,
            open_contests=r.open_contests,
        )
        for r in gold_rows(session, job)
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


def list_contests(
    session: Session, job: Job, status: str | None = "open", user_id: int | None = None
) -> list[ContestView]:
    query = (
        select(Contest, GoldItem, Judgment, Image.public_id, User.pseudonym)
        .join(GoldItem, GoldItem.id == Contest.gold_id)
        .join(Judgment, Judgment.id == Contest.judgment_id)
        .join(Image, Image.id == GoldItem.image_id)
        .join(User, User.id == Contest.user_id)
        .where(GoldItem.job_id == job.id)
        .order_by(Contest.id)
    )
    if status:
        query = query.where(Contest.status == status)
    if user_id is not None:
        query = query.where(Contest.user_id == user_id)
    return [
        ContestView(
            contest_id=c.id,
            status=c.status,
            gold_id=g.id,
            image_id=g.image_id,
            public_id=public_id,
            accepted_answers=list(g.accepted_answers),
            gold_reason=g.reason,
            given_answer=j.answer,
            reason=c.reason,
            reply=c.reply,
            user_id=c.user_id,
            pseudonym=pseudonym,
            created_at=c.created_at,
            resolved_at=c.resolved_at,
        )
        for c, g, j, public_id, pseudonym in session.execute(query).all()
    ]
