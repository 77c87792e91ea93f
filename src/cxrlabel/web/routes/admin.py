"""Admin pages: job progress, annotators, gold, invites."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from sqlalchemy import select
from starlette.responses import RedirectResponse, Response

from cxrlabel.annotate.accounts import AccountError, create_invite, invite_link, revoke_invite
from cxrlabel.annotate.progress import annotator_rows, gold_summary, invite_rows, job_progress
from cxrlabel.annotate.signups import duplicate_signals
from cxrlabel.design.exposure import bank_exposure
from cxrlabel.storage.models import Job, Role, User, utcnow
from cxrlabel.web.deps import csrf_protect, get_db, job_and_spec, render, require_role

router = APIRouter(include_in_schema=False)
admin = require_role(Role.ADMIN)


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


@router.get("/admin")
def index(request: Request, user: User = Depends(admin)) -> Response:
    now = utcnow()
    with get_db(request).read_session() as s:  # counts only: never wait for the write lock
        jobs = []
        for name in s.scalars(select(Job.name).order_by(Job.id)).all():
            job, spec = job_and_spec(s, name)
            jobs.append(job_progress(s, job, spec, now))
    return render(request, "admin/index.html", {"jobs": jobs})


@router.get("/admin/jobs/{job_name}/annotators")
def annotators(request: Request, job_name: str, user: User = Depends(admin)) -> Response:
    with get_db(request).session() as s:
        job, _spec = job_and_spec(s, job_name)
        rows = annotator_rows(s, job)
    return render(request, "admin/annotators.html", {"job": job, "annotators": rows})


@router.get("/admin/jobs/{job_name}/gold")
def gold(request: Request, job_name: str, user: User = Depends(admin)) -> Response:
    with get_db(request).session() as s:
        job, spec = job_and_spec(s, job_name)
        rows = gold_summary(s, job)
        exposure = bank_exposure(s, job, spec)
    from cxrlabel.design.goldreason import is_placeholder_reason

    return render(
        request,
        "admin/gold.html",
        {
            "job": job,
            "gold": rows,
            "saved": request.query_params.get("saved"),
            "is_placeholder": is_placeholder_reason,
            "exposure": exposure,
        },
    )


@router.post("/admin/jobs/{job_name}/gold/{public_id}/reason", dependencies=[Depends(csrf_protect)])
def gold_reason(
    request: Request,
    job_name: str,
    public_id: str,
    reason: str = Form(""),
    user: User = Depends(admin),
) -> Response:
    """An expert's reason for a test question; a sampled (inactive) one becomes active."""
    from cxrlabel.design.goldreason import set_gold_reason

    with get_db(request).session() as s:
        job, _spec = job_and_spec(s, job_name)
        try:
            set_gold_reason(s, job, public_id, reason, user.id, utcnow())
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
    return RedirectResponse(
        f"/admin/jobs/{job_name}/gold?saved={public_id}#gold-{public_id}", status_code=303
    )


def _invites_page(
    request: Request, new_link: str | None = None, status_code: int = 200, error: str | None = None
) -> Response:
    with get_db(request).session() as s:
        rows = invite_rows(s, utcnow())
        jobs = [{"name": n} for n in s.scalars(select(Job.name).order_by(Job.id))]
        signals = duplicate_signals(s)
    return render(
        request,
        "admin/invites.html",
        {
            "invites": rows,
            "jobs": jobs,
            "roles": Role.ALL,
            "new_link": new_link,
            "flash": error,
            "signals": signals,
        },
        status_code=status_code,
    )


@router.get("/admin/invites")
def invites(request: Request, user: User = Depends(admin)) -> Response:
    return _invites_page(request)


@router.post("/admin/invites", dependencies=[Depends(csrf_protect)])
def create(
    request: Request,
    role: str = Form(Role.ANNOTATOR),
    job: str = Form(""),
    uses: int = Form(1),
    expires_hours: float = Form(72.0),
    user: User = Depends(admin),
) -> Response:
    try:
        with get_db(request).session() as s:
            job_row = None
            if job:
                job_row = s.scalar(select(Job).where(Job.name == job))
                if job_row is None:
                    raise HTTPException(404, f"no job named {job!r}")
            _invite, token = create_invite(
                s,
                role=role,
                max_uses=uses,
                expires_hours=expires_hours,
                job=job_row,
                created_by=s.get_one(User, user.id),
                now=utcnow(),
            )
    except AccountError as exc:
        return _invites_page(request, status_code=422, error=exc.message)
    return _invites_page(request, new_link=invite_link(base_url(request), token))


@router.post("/admin/invites/{invite_id}/revoke", dependencies=[Depends(csrf_protect)])
def revoke(request: Request, invite_id: int, user: User = Depends(admin)) -> Response:
    with get_db(request).session() as s:
        revoke_invite(s, invite_id, actor=s.get_one(User, user.id))
    return _invites_page(request)
