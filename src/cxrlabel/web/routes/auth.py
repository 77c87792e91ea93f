"""Sign in, sign out, join by invite, account (API token), and the start page."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse
from sqlalchemy import select
from starlette.responses import Response

from cxrlabel.annotate.accounts import (
    AccountError,
    authenticate,
    find_invite,
    invite_problem,
    issue_api_token,
    redeem_invite,
)
from cxrlabel.storage.models import AnnotatorState, Job, Role, User, utcnow
from cxrlabel.web.deps import (
    csrf_protect,
    current_user,
    get_db,
    job_and_spec,
    optional_user,
    render,
)
from cxrlabel.web.security import SessionData, password_fingerprint

router = APIRouter(include_in_schema=False)


def safe_next(url: str | None, default: str = "/") -> str:
    """Only local paths: an attacker must not bounce a user to another site after sign-in."""
    if url and url.startswith("/") and not url.startswith("//") and "\\" not in url:
        return url
    return default


def sign_in(request: Request, user: User) -> None:
    # A fresh session (new CSRF token) on every sign-in: no session fixation.
    request.state.session = SessionData(
        user_id=user.id, pw=password_fingerprint(user.password_hash), changed=True
    )
    request.state.user = user


@router.get("/")
def home(request: Request, user: User | None = Depends(optional_user)) -> Response:
    if user is None:
        return RedirectResponse("/login", status_code=303)
    if user.role == Role.ADMIN:
        return RedirectResponse("/admin", status_code=303)
    with get_db(request).session() as s:
        states = {st.job_id: st.status for st in s.scalars(
            select(AnnotatorState).where(AnnotatorState.user_id == user.id))}
        jobs = []
        for job in s.scalars(select(Job).order_by(Job.id)):
            _, spec = job_and_spec(s, job.name)
            jobs.append({"name": job.name, "title": spec.title, "status": states.get(job.id)})
    return render(request, "home.html", {"jobs": jobs})


@router.get("/login")
def login_form(request: Request, next: str = "/") -> Response:  # query name
    return render(request, "login.html", {"next_url": safe_next(next)})


@router.post("/login", dependencies=[Depends(csrf_protect)])
def login(request: Request, username: str = Form(""), password: str = Form(""),
          next: str = Form("/")) -> Response:
    limiter = request.app.state.login_limiter
    client = request.client.host if request.client else "unknown"
    keys = [f"ip:{client}", f"user:{username.strip().lower()}"]
    wait = limiter.retry_after(keys)
    if wait:
        response = render(request, "login.html", {
            "error": f"Too many failed attempts. Please wait {max(1, wait // 60)} minute(s) "
                     "and try again.", "next_url": safe_next(next), "username": username,
        }, status_code=429)
        response.headers["Retry-After"] = str(wait)
        return response
    with get_db(request).session() as s:
        user = authenticate(s, username, password)
    if user is None:
        limiter.failed(keys, time.monotonic())
        return render(request, "login.html", {
            "error": "Wrong username or password.", "next_url": safe_next(next),
            "username": username,
        }, status_code=401)
    limiter.succeeded([keys[1]])
    sign_in(request, user)
    return RedirectResponse(safe_next(next), status_code=303)


@router.post("/logout", dependencies=[Depends(csrf_protect)])
def logout(request: Request) -> Response:
    request.state.session = SessionData(changed=True)
    return RedirectResponse("/login", status_code=303)


def _invite_context(request: Request, token: str) -> tuple[str | None, str | None]:
    """(problem, job title) for an invite token."""
    with get_db(request).session() as s:
        invite = find_invite(s, token)
        problem = invite_problem(invite, utcnow())
        title = None
        if invite is not None and invite.job_id is not None:
            job = s.get(Job, invite.job_id)
            if job is not None:
                title = job_and_spec(s, job.name)[1].title
    return problem, title


@router.get("/join/{token}")
def join_form(request: Request, token: str) -> Response:
    problem, title = _invite_context(request, token)
    if problem:
        return render(request, "message.html", {"heading": "This link cannot be used",
                                                "text": problem, "tone": "error"}, 410)
    return render(request, "join.html", {"token": token, "job_title": title})


@router.post("/join/{token}", dependencies=[Depends(csrf_protect)])
def join(request: Request, token: str, username: str = Form(""), password: str = Form(""),
         password2: str = Form("")) -> Response:
    limiter = request.app.state.login_limiter
    client = request.client.host if request.client else "unknown"
    if limiter.retry_after([f"join:{client}"]):
        return render(request, "message.html", {
            "heading": "Please wait", "text": "Too many attempts. Try again in a few minutes.",
            "tone": "error"}, 429)
    problem, title = _invite_context(request, token)
    if problem:
        return render(request, "message.html", {"heading": "This link cannot be used",
                                                "text": problem, "tone": "error"}, 410)
    context = {"token": token, "job_title": title, "username": username}
    if password != password2:
        return render(request, "join.html", {**context, "error": "The passwords differ."}, 422)
    try:
        with get_db(request).session() as s:
            user, invite = redeem_invite(s, token, username, password, utcnow())
            job = s.get(Job, invite.job_id) if invite.job_id is not None else None
            target = f"/jobs/{job.name}" if job is not None else "/"
    except AccountError as exc:
        limiter.failed([f"join:{client}"])
        status = exc.status if exc.status != 400 else 422
        return render(request, "join.html", {**context, "error": exc.message}, status)
    sign_in(request, user)
    return RedirectResponse(target, status_code=303)


@router.get("/account")
def account(request: Request, user: User = Depends(current_user)) -> Response:
    return render(request, "account.html")


@router.post("/account/token", dependencies=[Depends(csrf_protect)])
def new_token(request: Request, user: User = Depends(current_user)) -> Response:
    with get_db(request).session() as s:
        token = issue_api_token(s, s.get_one(User, user.id))
    return render(request, "account.html", {"token": token})
