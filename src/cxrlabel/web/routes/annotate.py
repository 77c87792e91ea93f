"""The annotator's pages: instructions, quiz and work pages, feedback, contests, prefetch."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.responses import Response

from cxrlabel.annotate.assignment import (
    NoPage,
    ServedPage,
    join_job,
    next_page_or_reason,
    prefetch_page,
)
from cxrlabel.annotate.schemas import AnswerIn, SubmissionError, SubmitResult
from cxrlabel.annotate.submission import stored_result, submit_page
from cxrlabel.errors import EngineError
from cxrlabel.jobspec import JobSpec
from cxrlabel.quality.annotator_status import read_standing, standing_message
from cxrlabel.storage.models import (
    AnnotatorState,
    AnnotatorStatus,
    Contest,
    GoldItem,
    Job,
    Judgment,
    Page,
    PageKind,
    Role,
    User,
    utcnow,
)
from cxrlabel.templating import render_work_page, viewer_keys
from cxrlabel.web.annotator_view import answers_in, missed_gold_judgment, result_out
from cxrlabel.web.deps import (
    csrf_protect,
    get_db,
    job_and_spec,
    job_ref_and_spec,
    render,
    require_role,
)
from cxrlabel.web.flow import (
    image_urls,
    instructions_html,
    new_client_submission_id,
    page_items,
)

router = APIRouter(include_in_schema=False)
annotator = require_role(Role.ANNOTATOR)


def _data_dir(request: Request):
    return request.app.state.settings.data_dir


def _current_message(
    state: AnnotatorState | None, spec: JobSpec, stored: str | None = None
) -> str | None:
    """The message true for the annotator's status *now* (quality/annotator_status.py)."""
    if state is None:
        return stored
    return standing_message(
        state.status,
        state.status_reason,
        state.flags,
        stored if stored is not None else state.message,
        spec.gold.min_accuracy,
        quiz=(state.gold_seen - state.gold_missed, state.gold_seen),
    )


def _inactive_page(request: Request, spec: JobSpec, status: str, message: str) -> Response:
    heading = (
        "Thank you for taking the quiz"
        if status == AnnotatorStatus.DISQUALIFIED
        else "Thank you for your work"
    )
    return render(
        request,
        "message.html",
        {
            "heading": heading,
            "text": message,
            "tone": "info",
            "link": {"href": "/", "text": "Back to the start page"},
        },
    )


@router.get("/jobs/{job_name}")
def job_entry(request: Request, job_name: str, user: User = Depends(annotator)) -> Response:
    with get_db(request).session() as s:
        job, spec = job_and_spec(s, job_name)
        join_job(s, job, spec, s.get_one(User, user.id), utcnow())
        started = s.scalar(
            select(Page.id).where(Page.job_id == job.id, Page.user_id == user.id).limit(1)
        )
    target = "page" if started else "instructions"
    return RedirectResponse(f"/jobs/{job_name}/{target}", status_code=303)


@router.get("/jobs/{job_name}/instructions")
def instructions(request: Request, job_name: str, user: User = Depends(annotator)) -> Response:
    with get_db(request).session() as s:
        job, spec = job_and_spec(s, job_name)
        html = instructions_html(s, job, spec, _data_dir(request))
        started = s.scalar(
            select(Page.id).where(Page.job_id == job.id, Page.user_id == user.id).limit(1)
        )
    return render(
        request,
        "instructions.html",
        {
            "spec": spec,
            "instructions": html,
            "job_name": job_name,
            "keys": viewer_keys(spec),
            "started": started is not None,
        },
    )


def _render_page(
    request: Request,
    job_name: str,
    spec: JobSpec,
    page_id: str,
    kind: str,
    items: list[dict[str, str]],
    help_html,
    *,
    error: str | None = None,
    prefill: dict | None = None,
    notice: str | None = None,
    standing=None,
    status_code: int = 200,
) -> Response:
    fragment = render_work_page(
        spec,
        items,
        page_id=page_id,
        page_kind=kind,
        preview=False,
        submit_url=f"/jobs/{job_name}/pages/{page_id}",
        csrf_token=request.state.session.csrf,
        client_submission_id=new_client_submission_id(),
        prefill=prefill or {},
        error=error,
        prefetch_url=f"/jobs/{job_name}/prefetch" if kind == "work" else None,
    )
    return render(
        request,
        "annotate_page.html",
        {
            "spec": spec,
            "job_name": job_name,
            "page_kind": kind,
            "items": items,
            "work_page": fragment,
            "instructions": help_html,
            "notice": notice,
            "standing": standing,
        },
        status_code=status_code,
    )


@router.get("/jobs/{job_name}/page")
def work_page(request: Request, job_name: str, user: User = Depends(annotator)) -> Response:
    now = utcnow()

    def claim(s: Session) -> tuple[Job, JobSpec, ServedPage | None, NoPage | None, AnnotatorState]:
        job, spec = job_and_spec(s, job_name)
        me = s.get_one(User, user.id)
        page, reason = next_page_or_reason(s, job, spec, me, now)
        return job, spec, page, reason, join_job(s, job, spec, me, now)

    # The claim is the write unit (group-committed, Database.write); the rest only reads.
    job, spec, page, reason, state = get_db(request).write(claim)
    with get_db(request).read_session() as s:
        help_html = instructions_html(s, job, spec, _data_dir(request))
        work = page is not None and page.kind == "work"
        standing = read_standing(s, job, spec, user.id) if work else None
    if page is None:
        assert reason is not None
        if state.status in (AnnotatorStatus.REMOVED, AnnotatorStatus.DISQUALIFIED):
            return _inactive_page(
                request, spec, state.status, _current_message(state, spec) or reason.message
            )
        return render(
            request,
            "message.html",
            {
                "heading": "No more images for now",
                "text": reason.message,
                "link": {"href": "/", "text": "Back to the start page"},
            },
        )
    notice = (
        _current_message(state, spec)
        if state.status in (AnnotatorStatus.ACTIVE, AnnotatorStatus.QUIZ)
        else None
    )
    items = page_items(page, image_urls(request))
    return _render_page(
        request,
        job_name,
        spec,
        page.public_id,
        page.kind,
        items,
        help_html,
        notice=notice,
        standing=standing,
    )


def answers_from_form(form: FormData, public_ids: list[str]) -> list[AnswerIn]:
    """Form fields ``answer-<id>``, ``certainty-<id>``, ``flag-<id>`` -> answers (missing
    ones are left out, so the engine reports exactly what is incomplete)."""
    answers = []
    for pid in public_ids:
        answer, certainty = form.get(f"answer-{pid}"), form.get(f"certainty-{pid}")
        flag = form.get(f"flag-{pid}") or None
        if isinstance(answer, str) and isinstance(certainty, str) and answer and certainty:
            answers.append(
                AnswerIn(
                    image_public_id=pid,
                    answer=answer[:32],
                    certainty=certainty[:16],
                    quality_flag=flag[:32] if isinstance(flag, str) else None,
                )
            )
    return answers


def _prefill(answers: list[AnswerIn]) -> dict[str, dict[str, str | None]]:
    return {
        a.image_public_id: {
            "answer": a.answer,
            "certainty": a.certainty,
            "quality_flag": a.quality_flag,
        }
        for a in answers
    }


@router.post("/jobs/{job_name}/pages/{page_id}", dependencies=[Depends(csrf_protect)])
async def submit(
    request: Request, job_name: str, page_id: str, user: User = Depends(annotator)
) -> Response:
    form = await request.form()  # reading the body is I/O: on the event loop
    # The database work blocks (SQLite's writer lock, the engine): in a worker thread, never
    # on the event loop, where it stalled every other request (image downloads included).
    return await run_in_threadpool(_submit_form, request, job_name, page_id, user, form)


def _submit_form(
    request: Request, job_name: str, page_id: str, user: User, form: FormData
) -> Response:
    client_id = form.get("client_submission_id")
    client_id = client_id if isinstance(client_id, str) else ""
    db = get_db(request)
    with db.session() as s:
        job, spec = job_and_spec(s, job_name)
        page = s.scalar(
            select(Page).where(
                Page.public_id == page_id, Page.user_id == user.id, Page.job_id == job.id
            )
        )
        if page is None:
            raise HTTPException(404, "no such page")
        items = page_items(page, image_urls(request))
        alias_map = image_urls(request).aliases.image_map(
            [item.image.public_id for item in page.items], user.id
        )
        kind = page.kind
        help_html = instructions_html(s, job, spec, _data_dir(request))
    answers = answers_from_form(form, [i["public_id"] for i in items])

    def submit_unit(s: Session) -> SubmitResult:  # the engine's work only (api.py)
        job, spec = job_ref_and_spec(s, job_name)
        return submit_page(
            s, job, spec, user, page_id, client_id, answers_in(answers, alias_map), utcnow()
        )

    try:
        result = db.write(submit_unit)
    except SubmissionError as exc:
        if exc.code == "already_submitted":
            return RedirectResponse(f"/jobs/{job_name}/pages/{page_id}/feedback", 303)
        if exc.status == 422:
            return _render_page(
                request,
                job_name,
                spec,
                page_id,
                kind,
                items,
                help_html,
                error=exc.message,
                prefill=_prefill(answers),
                status_code=422,
            )
        if exc.code == "page_expired":
            return render(
                request,
                "message.html",
                {
                    "heading": "This page expired",
                    "text": exc.message,
                    "tone": "info",
                    "link": {"href": f"/jobs/{job_name}/page", "text": "Get a new page"},
                },
                status_code=409,
            )
        raise
    if (
        result.missed_gold
        or result.kind in (PageKind.QUIZ, PageKind.TRAINING)
        or result.annotator_status not in (AnnotatorStatus.ACTIVE,)
    ):
        return RedirectResponse(f"/jobs/{job_name}/pages/{page_id}/feedback", status_code=303)
    return RedirectResponse(f"/jobs/{job_name}/page", status_code=303)


@router.get("/jobs/{job_name}/pages/{page_id}/feedback")
def feedback(
    request: Request, job_name: str, page_id: str, user: User = Depends(annotator)
) -> Response:
    with get_db(request).session() as s:
        job, spec = job_and_spec(s, job_name)
        page = s.scalar(
            select(Page).where(
                Page.public_id == page_id, Page.user_id == user.id, Page.job_id == job.id
            )
        )
        result = stored_result(s, s.get_one(User, user.id), page) if page is not None else None
        if page is None or result is None:
            raise HTTPException(404, "no submitted page with this id")
        aliases = image_urls(request).aliases  # the annotator's own answer ids, not ours
        contested = {
            aliases.answer(c.judgment_id, user.id): c
            for c in s.scalars(
                select(Contest)
                .join(Judgment, Judgment.id == Contest.judgment_id)
                .where(Judgment.page_id == page.id)
            )
        }
        # Today's accepted answers: an admin may have changed them since the page was marked.
        current: dict[str, list[str]] = {
            aliases.answer(jid, user.id): answers
            for jid, answers in s.execute(
                select(Judgment.id, GoldItem.accepted_answers)
                .join(
                    GoldItem,
                    (GoldItem.image_id == Judgment.image_id) & (GoldItem.job_id == Judgment.job_id),
                )
                .where(Judgment.page_id == page.id, Judgment.is_gold)
            ).all()
        }
        state = s.scalar(
            select(AnnotatorState).where(
                AnnotatorState.job_id == job.id, AnnotatorState.user_id == user.id
            )
        )
        status = state.status if state is not None else result.annotator_status
        message = (
            _current_message(state, spec, result.message)
            if status != result.annotator_status
            or status in (AnnotatorStatus.REMOVED, AnnotatorStatus.DISQUALIFIED)
            else result.message
        )
    result = result_out(result, aliases, user.id)  # the annotator's own ids only
    labels = {c.value: c.text for c in spec.question.labels}
    from cxrlabel.design.goldreason import is_placeholder_reason

    return render(
        request,
        "feedback.html",
        {
            "is_placeholder": is_placeholder_reason,
            "spec": spec,
            "job_name": job_name,
            "result": result,
            "label_text": labels,
            "contested": contested,
            "current_answers": current,
            "status": status,
            "message": message,
        },
    )


@router.post("/jobs/{job_name}/contest", dependencies=[Depends(csrf_protect)])
async def contest(request: Request, job_name: str, user: User = Depends(annotator)) -> Response:
    form = await request.form()
    return await run_in_threadpool(_contest_form, request, job_name, user, form)  # see submit


def _contest_form(request: Request, job_name: str, user: User, form: FormData) -> Response:
    answer_id = str(form.get("judgment_id", ""))[:64]  # the opaque id from the feedback
    reason = str(form.get("reason", ""))[:4000]
    page_id = str(form.get("page_id", ""))
    from cxrlabel.quality.commands import contest_gold

    with get_db(request).session() as s:
        job, spec = job_and_spec(s, job_name)
        judgment_id = missed_gold_judgment(s, image_urls(request).aliases, job, user.id, answer_id)
        contest_gold(s, job, spec, s.get_one(User, user.id), judgment_id, reason, utcnow())
    target = (
        f"/jobs/{job_name}/pages/{page_id}/feedback"
        if page_id.replace("-", "").replace("_", "").isalnum()
        else f"/jobs/{job_name}/page"
    )
    return RedirectResponse(target, status_code=303)


@router.post("/jobs/{job_name}/prefetch", dependencies=[Depends(csrf_protect)])
def prefetch(request: Request, job_name: str, user: User = Depends(annotator)) -> Response:
    """Reserve the next page and list its image URLs so the browser can download them now."""

    def reserve(s: Session) -> ServedPage | None:  # the engine's work only (api.py)
        job, spec = job_ref_and_spec(s, job_name)
        return prefetch_page(s, job, spec, user, utcnow())

    try:
        page = get_db(request).write(reserve)
        images = [i["src"] for i in page_items(page, image_urls(request))] if page else []
    except EngineError:
        images = []
    return JSONResponse({"images": images})
