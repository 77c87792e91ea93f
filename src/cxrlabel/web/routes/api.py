"""REST API (OpenAPI docs at /api/docs). Authenticate with ``Authorization: Bearer <token>``
(``cxrlabel user token NAME`` or the account page), or with the session cookie plus an
``X-CSRF-Token`` header for state-changing calls. Errors are ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from cxrlabel.annotate.accounts import create_invite, invite_link
from cxrlabel.annotate.assignment import NoPage, ServedPage, join_job, next_page_or_reason
from cxrlabel.annotate.progress import annotator_rows, gold_summary, job_progress
from cxrlabel.annotate.schemas import AnswerIn, SubmitResult
from cxrlabel.annotate.submission import submit_page
from cxrlabel.jobspec import JobSpec
from cxrlabel.storage.models import Job, Role, User, utcnow
from cxrlabel.web.annotator_view import (
    SubmitResultOut,
    answers_in,
    missed_gold_judgment,
    page_alias_map,
    result_out,
)
from cxrlabel.web.deps import (
    csrf_protect,
    get_db,
    job_and_spec,
    job_ref_and_spec,
    require_role,
)
from cxrlabel.web.flow import image_urls, new_client_submission_id, page_items

router = APIRouter(prefix="/api", tags=["api"])
annotator = require_role(Role.ANNOTATOR)
admin = require_role(Role.ADMIN)


class Choice(BaseModel):
    value: str
    text: str
    key: str | None = None


class PageItemOut(BaseModel):
    image_public_id: str
    image_url: str = Field(
        description="Signed URL of the image: needs no credentials, valid "
        "until the page's reservation ends + 10 minutes"
    )


class PageOut(BaseModel):
    page_id: str
    kind: str
    expires_at: datetime
    client_submission_id: str = Field(description="A fresh id to send back with the answers")
    question: str
    labels: list[Choice]
    certainty: list[Choice]
    quality_flags: list[Choice]
    items: list[PageItemOut]


class NextPageOut(BaseModel):
    page: PageOut | None
    reason: str | None = None
    message: str | None = None


class SubmitIn(BaseModel):
    client_submission_id: str = Field(min_length=1, max_length=64)
    answers: list[AnswerIn]


class ContestIn(BaseModel):
    judgment_id: str = Field(
        max_length=64,
        description="The opaque id of your answer, from the missed-test-question feedback",
    )
    reason: str = Field(min_length=1, max_length=4000)


class ContestOut(BaseModel):
    contest_id: int
    status: str


class StatsOut(BaseModel):
    status: str
    trust: float
    judgments: int
    gold_seen: int
    gold_missed: int
    gold_contested: int
    message: str | None


class InviteIn(BaseModel):
    role: str = Role.ANNOTATOR
    job: str | None = None
    uses: int = Field(1, ge=1, le=100000)
    expires_hours: float | None = Field(72.0, gt=0, le=8760)


class InviteOut(BaseModel):
    invite_id: int
    link: str
    expires_at: datetime | None


def _choices(options) -> list[Choice]:
    return [Choice(value=c.value, text=c.text, key=c.key) for c in options]


@router.get(
    "/jobs/{job_name}/pages/next",
    response_model=NextPageOut,
    summary="Get the page to work on (the open one, or a new one)",
)
def get_next_page(request: Request, job_name: str, user: User = Depends(annotator)) -> NextPageOut:
    # ``user`` (loaded by the auth dependency this request) and ``job_ref_and_spec`` keep the
    # write unit to the engine's own work: SQLite runs one at a time (group-committed,
    # Database.write); the response is built after the commit.
    def claim(s: Session) -> tuple[JobSpec, ServedPage | None, NoPage | None]:
        job, spec = job_ref_and_spec(s, job_name)
        return (spec, *next_page_or_reason(s, job, spec, user, utcnow()))

    spec, page, reason = get_db(request).write(claim)
    if page is None:
        assert reason is not None
        return NextPageOut(page=None, reason=reason.code, message=reason.message)
    return NextPageOut(
        page=PageOut(
            page_id=page.public_id,
            kind=page.kind,
            expires_at=page.expires_at,
            client_submission_id=new_client_submission_id(),
            question=spec.question.prompt,
            labels=_choices(spec.question.labels),
            certainty=_choices(spec.certainty.options),
            quality_flags=_choices(spec.quality_flag.options),
            items=[
                PageItemOut(image_public_id=i["public_id"], image_url=i["src"])
                for i in page_items(page, image_urls(request))
            ],
        )
    )


@router.post(
    "/jobs/{job_name}/pages/{page_id}/submit",
    response_model=SubmitResultOut,
    dependencies=[Depends(csrf_protect)],
    summary="Submit a page (idempotent on client_submission_id)",
)
def post_submit(
    request: Request, job_name: str, page_id: str, body: SubmitIn, user: User = Depends(annotator)
) -> SubmitResultOut:
    aliases = image_urls(request).aliases
    with get_db(request).read_session() as s:  # outside the write transaction
        answers = answers_in(body.answers, page_alias_map(s, aliases, user.id, page_id))

    def submit(s: Session) -> SubmitResult:  # see get_next_page
        job, spec = job_ref_and_spec(s, job_name)
        return submit_page(
            s, job, spec, user, page_id, body.client_submission_id, answers, utcnow()
        )

    return result_out(get_db(request).write(submit), aliases, user.id)


@router.post(
    "/jobs/{job_name}/contests",
    response_model=ContestOut,
    status_code=201,
    dependencies=[Depends(csrf_protect)],
    summary="Contest a missed test question",
)
def post_contest(
    request: Request, job_name: str, body: ContestIn, user: User = Depends(annotator)
) -> ContestOut:
    from cxrlabel.quality.commands import contest_gold

    with get_db(request).session() as s:
        job, spec = job_and_spec(s, job_name)
        judgment_id = missed_gold_judgment(
            s, image_urls(request).aliases, job, user.id, body.judgment_id
        )
        contest = contest_gold(
            s, job, spec, s.get_one(User, user.id), judgment_id, body.reason, utcnow()
        )
        return ContestOut(contest_id=contest.id, status=contest.status)


@router.get("/jobs/{job_name}/me", response_model=StatsOut, summary="My stats in this job")
def my_stats(request: Request, job_name: str, user: User = Depends(annotator)) -> StatsOut:
    with get_db(request).session() as s:
        job, spec = job_and_spec(s, job_name)
        st = join_job(s, job, spec, s.get_one(User, user.id), utcnow())
        return StatsOut(
            status=st.status,
            trust=st.trust,
            judgments=st.judgments,
            gold_seen=st.gold_seen,
            gold_missed=st.gold_missed,
            gold_contested=st.gold_contested,
            message=st.message,
        )


@router.post(
    "/invites",
    response_model=InviteOut,
    status_code=201,
    dependencies=[Depends(csrf_protect)],
    summary="Create an invite link (admin)",
)
def post_invite(request: Request, body: InviteIn, user: User = Depends(admin)) -> InviteOut:
    with get_db(request).session() as s:
        job = None
        if body.job:
            job = s.scalar(select(Job).where(Job.name == body.job))
            if job is None:
                raise HTTPException(404, f"no job named {body.job!r}")
        invite, token = create_invite(
            s,
            role=body.role,
            max_uses=body.uses,
            expires_hours=body.expires_hours,
            job=job,
            created_by=s.get_one(User, user.id),
            now=utcnow(),
        )
        return InviteOut(
            invite_id=invite.id,
            link=invite_link(str(request.base_url), token),
            expires_at=invite.expires_at,
        )


@router.get("/jobs/{job_name}/status", summary="Job progress (admin)")
def job_status(request: Request, job_name: str, user: User = Depends(admin)) -> dict:
    with get_db(request).session() as s:
        job, spec = job_and_spec(s, job_name)
        return job_progress(s, job, spec, utcnow())


@router.get("/jobs/{job_name}/annotators", summary="Annotators with counts (admin)")
def list_annotators(request: Request, job_name: str, user: User = Depends(admin)) -> list[dict]:
    with get_db(request).session() as s:
        job, _spec = job_and_spec(s, job_name)
        return annotator_rows(s, job)


@router.get("/jobs/{job_name}/gold", summary="Gold items with statistics (admin)")
def list_gold(request: Request, job_name: str, user: User = Depends(admin)) -> list[dict]:
    with get_db(request).session() as s:
        job, _spec = job_and_spec(s, job_name)
        return gold_summary(s, job)
