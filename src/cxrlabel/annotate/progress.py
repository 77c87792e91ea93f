"""Read-only summaries for admins: job progress, annotators, gold, invites (no web code)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from cxrlabel.annotate.accounts import invite_problem
from cxrlabel.design.exposure import revealed_counts
from cxrlabel.jobspec import JobSpec
from cxrlabel.storage.models import (
    AnnotatorState,
    Contest,
    GoldItem,
    Image,
    ImageStatus,
    Invite,
    Job,
    Judgment,
    Page,
    User,
    as_utc,
)


def job_progress(session: Session, job: Job, spec: JobSpec, now: datetime) -> dict[str, Any]:
    """Images by status, work images by number of trusted judgments, totals."""
    by_status = dict(
        session.execute(
            select(Image.status, func.count()).where(Image.job_id == job.id).group_by(Image.status)
        ).all()
    )
    histogram = session.execute(
        select(Image.trusted_judgments, func.count())
        .where(Image.job_id == job.id, Image.status.not_in(ImageStatus.NOT_WORK))
        .group_by(Image.trusted_judgments)
        .order_by(Image.trusted_judgments)
    ).all()
    judgments = session.scalar(select(func.count(Judgment.id)).where(Judgment.job_id == job.id))
    open_pages = session.scalar(
        select(func.count(Page.id)).where(
            Page.job_id == job.id, Page.submitted_at.is_(None), Page.expires_at > now
        )
    )
    annotators = session.scalar(
        select(func.count(AnnotatorState.id)).where(AnnotatorState.job_id == job.id)
    )
    gold = session.scalar(
        select(func.count(GoldItem.id)).where(GoldItem.job_id == job.id, GoldItem.active.is_(True))
    )
    inactive = session.scalar(
        select(func.count(GoldItem.id)).where(GoldItem.job_id == job.id, GoldItem.active.is_(False))
    )
    return {
        "name": job.name,
        "title": spec.title,
        "by_status": {s: by_status.get(s, 0) for s in ImageStatus.ALL},
        "histogram": [(int(k), int(n)) for k, n in histogram],
        "work_images": sum(n for s, n in by_status.items() if s not in ImageStatus.NOT_WORK),
        "judgments": judgments or 0,
        "open_pages": open_pages or 0,
        "annotators": annotators or 0,
        "gold": gold or 0,  # active test questions
        "gold_inactive": inactive or 0,  # retired (exposure, design/exposure.py) or switched off
        "jmin": spec.judgments.min,
        "jmax": spec.judgments.max,
    }


def annotator_rows(session: Session, job: Job) -> list[dict[str, Any]]:
    rows = session.execute(
        select(User.username, User.pseudonym, AnnotatorState)
        .join(AnnotatorState, AnnotatorState.user_id == User.id)
        .where(AnnotatorState.job_id == job.id)
        .order_by(AnnotatorState.joined_at)
    ).all()
    counts = dict(
        session.execute(
            select(Judgment.user_id, func.count())
            .where(Judgment.job_id == job.id, Judgment.is_gold.is_(False))
            .group_by(Judgment.user_id)
        ).all()
    )
    return [
        {
            "username": name,
            "pseudonym": pseudonym,
            "status": st.status,
            "trust": st.trust,
            "judgments": counts.get(st.user_id, 0),
            "gold_seen": st.gold_seen,
            "gold_missed": st.gold_missed,
            "joined_at": as_utc(st.joined_at),
        }
        for name, pseudonym, st in rows
    ]


def gold_summary(session: Session, job: Job) -> list[dict[str, Any]]:
    seen = func.count(Judgment.id)
    missed = func.sum(case((Judgment.gold_missed.is_(True), 1), else_=0))
    stats = {
        image_id: (s, m or 0)
        for image_id, s, m in session.execute(
            select(Judgment.image_id, seen, missed)
            .where(Judgment.job_id == job.id, Judgment.is_gold.is_(True))
            .group_by(Judgment.image_id)
        ).all()
    }
    contests = dict(
        session.execute(select(Contest.gold_id, func.count()).group_by(Contest.gold_id)).all()
    )
    rows = session.execute(
        select(GoldItem, Image.public_id)
        .join(Image, Image.id == GoldItem.image_id)
        .where(GoldItem.job_id == job.id)
        .order_by(GoldItem.id)
    ).all()
    revealed = revealed_counts(session, job)
    return [
        {
            "id": g.id,
            "public_id": pid,
            "accepted": list(g.accepted_answers),
            "reason": g.reason,
            "difficulty": g.difficulty,
            "active": g.active,
            "seen": stats.get(g.image_id, (0, 0))[0],
            "missed": stats.get(g.image_id, (0, 0))[1],
            "revealed_to": revealed.get(g.image_id, 0),
            "contests": contests.get(g.id, 0),
        }
        for g, pid in rows
    ]


def invite_rows(session: Session, now: datetime) -> list[dict[str, Any]]:
    jobs: dict[int | None, str] = dict(session.execute(select(Job.id, Job.name)).all())
    out = []
    for inv in session.scalars(select(Invite).order_by(Invite.id.desc())):
        problem = invite_problem(inv, now)
        state = (
            "usable"
            if problem is None
            else (
                "revoked" if inv.revoked else "used up" if inv.uses >= inv.max_uses else "expired"
            )
        )
        out.append(
            {
                "id": inv.id,
                "role": inv.role,
                "job": jobs.get(inv.job_id),
                "uses": inv.uses,
                "max_uses": inv.max_uses,
                "expires_at": as_utc(inv.expires_at) if inv.expires_at else None,
                "state": state,
            }
        )
    return out
