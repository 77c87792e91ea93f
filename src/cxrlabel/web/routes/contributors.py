"""Admin: contributors (trust, gold, speed trips, flags; remove / reinstate / message) and the
contested-gold queue (uphold with a reply, or change the accepted answers)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Literal

from fastapi import APIRouter, Depends, Form, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from cxrlabel.quality import audit, commands, views
from cxrlabel.storage.models import Role, User, utcnow
from cxrlabel.web.deps import csrf_protect, get_db, job_and_spec, render, require_role

router = APIRouter()
admin = require_role(Role.ADMIN)


class ActionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=2000)


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=2000)


class ResolveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["uphold", "change"]
    reply: str = Field(default="", max_length=4000)
    accepted_answers: list[str] | None = None


def _annotator_action(
    request: Request, job_name: str, user: User, user_id: int, action: str, text: str
) -> dict:
    with get_db(request).session() as s:
        job, spec = job_and_spec(s, job_name)
        actor = s.get_one(User, user.id)
        if action == "remove":
            row = commands.remove_annotator(s, job, spec, actor, user_id, text, utcnow())
        elif action == "reinstate":
            row = commands.reinstate_annotator(s, job, spec, actor, user_id, text, utcnow())
        else:
            row = commands.send_message(s, job, actor, user_id, text, utcnow())
        return {"user_id": user_id, "status": row.status, "message": row.message}


def _resolve(request: Request, job_name: str, user: User, contest_id: int, body: ResolveIn) -> dict:
    with get_db(request).session() as s:
        job, spec = job_and_spec(s, job_name)
        contest = commands.resolve_contest(
            s,
            job,
            spec,
            s.get_one(User, user.id),
            contest_id,
            body.action,
            body.reply,
            body.accepted_answers,
            utcnow(),
        )
        return {"contest_id": contest.id, "status": contest.status, "reply": contest.reply}


def _contributor_json(c: views.Contributor) -> dict:
    return {**asdict(c), "joined_at": c.joined_at.isoformat()}


# --- HTML ----------------------------------------------------------------------------------------


@router.get("/admin/jobs/{job_name}/contributors", include_in_schema=False)
def contributors_page(request: Request, job_name: str, user: User = Depends(admin)) -> Response:
    with get_db(request).session() as s:
        job, _ = job_and_spec(s, job_name)
        rows = views.contributors(s, job)
    return render(request, "quality/contributors.html", {"job": job, "rows": rows})


@router.post(
    "/admin/jobs/{job_name}/contributors/{user_id}/{action}",
    include_in_schema=False,
    dependencies=[Depends(csrf_protect)],
)
def contributor_action(
    request: Request,
    job_name: str,
    user_id: int,
    action: Literal["remove", "reinstate", "message"],
    text: str = Form(""),
    user: User = Depends(admin),
) -> Response:
    _annotator_action(request, job_name, user, user_id, action, text)
    return RedirectResponse(f"/admin/jobs/{job_name}/contributors", status_code=303)


@router.get("/admin/jobs/{job_name}/contests", include_in_schema=False)
def contests_page(request: Request, job_name: str, user: User = Depends(admin)) -> Response:
    with get_db(request).session() as s:
        job, spec = job_and_spec(s, job_name)
        open_ = views.list_contests(s, job, "open")
        closed = views.list_contests(s, job, None)
        stats = views.gold_stats(s, job)
    return render(
        request,
        "quality/contests.html",
        {
            "job": job,
            "spec": spec,
            "open": open_,
            "closed": [c for c in closed if c.status != "open"][-50:],
            "stats": stats,
        },
    )


@router.post(
    "/admin/jobs/{job_name}/contests/{contest_id}/resolve",
    include_in_schema=False,
    dependencies=[Depends(csrf_protect)],
)
async def contest_resolve(
    request: Request, job_name: str, contest_id: int, user: User = Depends(admin)
) -> Response:
    form = await request.form()
    body = ResolveIn(
        action=str(form.get("action", "")) or "uphold",  # type: ignore[arg-type]
        reply=str(form.get("reply", "")),
        accepted_answers=[str(v) for v in form.getlist("accepted")] or None,
    )
    # Database work blocks: in a worker thread, not on the event loop (annotate.submit).
    await run_in_threadpool(_resolve, request, job_name, user, contest_id, body)
    return RedirectResponse(f"/admin/jobs/{job_name}/contests", status_code=303)


# --- JSON API ------------------------------------------------------------------------------------


@router.get("/api/jobs/{job_name}/contributors", summary="Contributors with quality numbers")
def api_contributors(request: Request, job_name: str, user: User = Depends(admin)) -> list[dict]:
    with get_db(request).session() as s:
        job, _ = job_and_spec(s, job_name)
        return [_contributor_json(c) for c in views.contributors(s, job)]


# The annotator actions of the JSON API, one route each: (action, summary, body, text field).
API_ANNOTATOR_ACTIONS: tuple[tuple[str, str, type[BaseModel], str], ...] = (
    ("remove", "Remove an annotator", ActionIn, "reason"),
    ("reinstate", "Reinstate a removed annotator", ActionIn, "reason"),
    ("message", "Message shown on the annotator's next page", MessageIn, "text"),
)


def _add_api_annotator_action(
    action: str, summary: str, body_model: type[BaseModel], text_field: str
) -> None:
    def endpoint(
        request: Request, job_name: str, user_id: int, body: BaseModel, user: User = Depends(admin)
    ) -> dict:
        text = getattr(body, text_field)
        return _annotator_action(request, job_name, user, user_id, action, text)

    endpoint.__annotations__["body"] = body_model  # the model FastAPI validates the body with
    router.post(
        f"/api/jobs/{{job_name}}/contributors/{{user_id}}/{action}",
        summary=summary,
        dependencies=[Depends(csrf_protect)],
        name=f"api_{action}",
    )(endpoint)


for _action in API_ANNOTATOR_ACTIONS:
    _add_api_annotator_action(*_action)


@router.get("/api/jobs/{job_name}/contests", summary="Contested gold (admin)")
def api_contests(
    request: Request, job_name: str, status: str = "open", user: User = Depends(admin)
) -> list[dict]:
    with get_db(request).session() as s:
        job, _ = job_and_spec(s, job_name)
        rows = views.list_contests(s, job, None if status == "all" else status)
    return [
        {
            **asdict(c),
            "created_at": c.created_at.isoformat(),
            "resolved_at": c.resolved_at.isoformat() if c.resolved_at else None,
        }
        for c in rows
    ]


@router.post(
    "/api/jobs/{job_name}/contests/{contest_id}/resolve",
    summary="Uphold or change a contested gold answer",
    dependencies=[Depends(csrf_protect)],
)
def api_resolve(
    request: Request, job_name: str, contest_id: int, body: ResolveIn, user: User = Depends(admin)
) -> dict:
    return _resolve(request, job_name, user, contest_id, body)


@router.get("/api/jobs/{job_name}/gold-stats", summary="Per gold item: % missed, % contested")
def api_gold_stats(request: Request, job_name: str, user: User = Depends(admin)) -> list[dict]:
    with get_db(request).session() as s:
        job, _ = job_and_spec(s, job_name)
        stats = views.gold_stats(s, job)
    return [
        {**asdict(g), "pct_missed": g.pct_missed, "pct_contested": g.pct_contested} for g in stats
    ]


@router.get(
    "/api/jobs/{job_name}/quality/replay",
    summary="Recompute the quality state from the log and compare (read only)",
)
def api_replay(request: Request, job_name: str, user: User = Depends(admin)) -> dict:
    with get_db(request).session() as s:
        job, spec = job_and_spec(s, job_name)
        report = audit.verify_replay(s, job, spec)
    return {
        "matched": report.matched,
        "events": report.events,
        "judgments": report.judgments,
        "differences": report.differences,
        "unprocessed_judgments": report.unprocessed_judgments,
    }
