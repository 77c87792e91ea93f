"""Reusable request dependencies: database, current user, roles, CSRF, job lookup, templates.

Routers in ``web/routes/*.py`` use these; e.g.::

    @router.get("/admin/thing")
    def thing(request: Request, user: User = Depends(require_role("admin"))): ...

    @router.post("/admin/thing", dependencies=[Depends(csrf_protect)])
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.templating import Jinja2Templates
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session
from starlette.responses import Response

from cxrlabel.annotate.accounts import user_for_api_token
from cxrlabel.annotate.sessions import SessionPolicy, session_user, touch_session
from cxrlabel.jobspec import JobSpec
from cxrlabel.jobstore import cached_spec, spec_of
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import Job, User, utcnow
from cxrlabel.templating import env
from cxrlabel.web.security import (
    CSRF_FIELD,
    CSRF_HEADER,
    SessionData,
    csrf_ok,
)

templates = Jinja2Templates(env=env)


class LoginRequired(Exception):
    """Raised for an anonymous visitor on an HTML page: the app redirects to /login."""


def get_db(request: Request) -> Database:
    return request.app.state.db


def session_data(request: Request) -> SessionData:
    return request.state.session


def is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def optional_user(request: Request) -> User | None:
    """The signed-in user (session cookie, or ``Authorization: Bearer <token>`` on /api/)."""
    if hasattr(request.state, "user"):
        return request.state.user
    user: User | None = None
    db = get_db(request)
    token = _bearer(request)
    if token is not None:
        with db.read_session() as s:  # reads only: never waits for SQLite's writer
            user = user_for_api_token(s, token)
        if user is None:
            raise HTTPException(401, "invalid API token")
        request.state.via_token = True
    else:
        sess = session_data(request)
        if sess.user_id is not None and sess.sid:
            user = _session_user(request, db, sess.sid)
    request.state.user = user
    return user


def session_policy(request: Request) -> SessionPolicy:
    policy = getattr(request.app.state, "session_policy", None)
    if policy is None:
        policy = request.app.state.session_policy = SessionPolicy.from_settings(
            request.app.state.settings
        )
    return policy


def _session_user(request: Request, db: Database, token: str) -> User | None:
    """The user of a live server-side session: one indexed read; a write (``last_seen_at``)
    at most once a minute per session."""
    now = utcnow()
    with db.read_session() as s:  # reads only: never waits for SQLite's writer
        found = session_user(s, token, now, session_policy(request))
    if found is None:
        return None
    if found.needs_touch:
        with db.session() as s:
            touch_session(s, token, now)
    return found.user


# current_user and the role check are ``async def``: they do no I/O, and FastAPI runs every
# sync dependency in the thread pool (a thread hop each, on every API call).
async def current_user(request: Request, user: User | None = Depends(optional_user)) -> User:
    if user is None:
        if is_api(request):
            raise HTTPException(401, "sign in or send 'Authorization: Bearer <token>'")
        raise LoginRequired()
    return user


def require_role(*roles: str):  # a FastAPI dependency
    """A dependency allowing only users with one of ``roles`` (403 otherwise)."""

    async def check(user: User = Depends(current_user)) -> User:
        if user.role not in roles:
            raise HTTPException(403, f"this page needs the {' or '.join(roles)} role")
        return user

    return check


async def csrf_protect(request: Request) -> None:
    """Reject a state-changing request without the session's CSRF token (form field
    ``csrf_token`` or header ``X-CSRF-Token``). Bearer-token API calls carry no cookie and need
    none."""
    if _bearer(request) is not None:
        return
    supplied = request.headers.get(CSRF_HEADER)
    if supplied is None and "form" in request.headers.get("content-type", ""):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        supplied = value if isinstance(value, str) else None
    if not csrf_ok(session_data(request), supplied):
        raise HTTPException(403, "the form expired or came from another site; reload the page")


def job_and_spec(session: Session, name: str) -> tuple[Job, JobSpec]:
    """A stored job by name (404 if unknown) and its parsed spec (cached per spec version)."""
    job = session.scalar(select(Job).where(Job.name == name))
    if job is None:
        raise HTTPException(404, f"no job named {name!r}")
    return job, spec_of(job)


def job_ref_and_spec(session: Session, name: str) -> tuple[Job, JobSpec]:
    """For the annotator's calls on every page (next page, submit, prefetch): the job's id and
    its parsed spec, from one two-column query and the spec cache. The ``Job`` is a transient
    stand-in holding ``id``, ``name`` and ``spec_sha256``, for engine calls that only read
    ``job.id``: loading the whole row (spec text included) inside the write transaction was
    ~1 ms of every page's serialised time. Routes that read or change other columns use
    ``job_and_spec``."""
    row = session.execute(_JOB_REF, {"name": name}).first()
    if row is None:
        raise HTTPException(404, f"no job named {name!r}")
    job_id, sha = row
    spec = cached_spec(name, sha, lambda: session.get_one(Job, job_id))
    return Job(id=job_id, name=name, spec_sha256=sha), spec


_JOB_REF = select(Job.__table__.c.id, Job.__table__.c.spec_sha256).where(
    Job.__table__.c.name == bindparam("name")
)


def render(
    request: Request, name: str, context: dict[str, Any] | None = None, status_code: int = 200
) -> Response:
    """Render a page with the common context: ``user``, ``csrf_token``."""
    ctx = {"user": getattr(request.state, "user", None), "csrf_token": session_data(request).csrf}
    ctx.update(context or {})
    return templates.TemplateResponse(request, name, ctx, status_code=status_code)
