"""Sign in, sign out, join by invite, account (API token, password), and the start page."""

from __future__ import annotations

import logging
import secrets

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from cxrlabel.annotate.accounts import (
    AccountError,
    change_own_password,
    check_password_rules,
    find_invite,
    hash_password,
    invite_problem,
    issue_api_token,
    load_credentials,
    needs_rehash,
    redeem_invite,
    verify_password,
)
from cxrlabel.annotate.signups import (
    check_signup_allowed,
    device_hash,
    network_of,
    record_signup,
)
from cxrlabel.design.exposure import bank_exposure
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import AnnotatorState, Job, Role, User, utcnow
from cxrlabel.web.deps import (
    csrf_protect,
    current_user,
    get_db,
    job_and_spec,
    optional_user,
    render,
    session_data,
)
from cxrlabel.web.oidc import OidcError
from cxrlabel.web.passwords import PasswordPoolBusy
from cxrlabel.web.security import cookie_secure
from cxrlabel.web.signin import sign_in, sign_out

log = logging.getLogger("cxrlabel.web.auth")
router = APIRouter(include_in_schema=False)


def safe_next(url: str | None, default: str = "/") -> str:
    """Only local paths: an attacker must not bounce a user to another site after sign-in."""
    if url and url.startswith("/") and not url.startswith("//") and "\\" not in url:
        return url
    return default


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.get("/")
def home(request: Request, user: User | None = Depends(optional_user)) -> Response:
    if user is None:
        return RedirectResponse("/login", status_code=303)
    if user.role == Role.ADMIN:
        return RedirectResponse("/admin", status_code=303)
    with get_db(request).session() as s:
        states = {
            st.job_id: st.status
            for st in s.scalars(select(AnnotatorState).where(AnnotatorState.user_id == user.id))
        }
        jobs = []
        for job in s.scalars(select(Job).order_by(Job.id)):
            _, spec = job_and_spec(s, job.name)
            entry: dict[str, object] = {
                "name": job.name,
                "title": spec.title,
                "status": states.get(job.id),
            }
            if user.role == Role.EXPERT:  # the expert is who can refill the test questions
                entry["bank"] = bank_exposure(s, job, spec)
            jobs.append(entry)
    return render(request, "home.html", {"jobs": jobs})


@router.get("/login")
def login_form(request: Request, next: str = "/") -> Response:  # query name
    return render(request, "login.html", {"next_url": safe_next(next)})


@router.post("/login", dependencies=[Depends(csrf_protect)])
async def login(
    request: Request, username: str = Form(""), password: str = Form(""), next: str = Form("/")
) -> Response:
    """``async``: the password check waits on the capped hashing pool (``web/passwords.py``)
    without holding one of the request threads other pages need."""
    limiter = request.app.state.login_limiter
    keys = limiter.login_keys(client_address(request), username)
    context = {"next_url": safe_next(next), "username": username}
    wait = await run_in_threadpool(limiter.begin, keys)
    if wait:
        response = render(
            request,
            "login.html",
            {
                **context,
                "error": (
                    f"Too many failed attempts. Please wait {max(1, wait // 60)} minute(s) and try "
                    "again."
                ),
            },
            status_code=429,
        )
        response.headers["Retry-After"] = str(wait)
        return response
    user = None
    try:
        user = await _check_password(request, username, password)
    except PasswordPoolBusy:
        await run_in_threadpool(limiter.finish, keys, failed=False)
        response = render(
            request,
            "login.html",
            {**context, "error": ("The server is busy. Please try again in a moment.")},
            status_code=503,
        )
        response.headers["Retry-After"] = "5"
        return response
    await run_in_threadpool(limiter.finish, keys, failed=user is None)
    if user is None:
        return render(
            request, "login.html", {**context, "error": "Wrong username or password."}, 401
        )
    await run_in_threadpool(sign_in, request, user)
    return RedirectResponse(safe_next(next), status_code=303)


async def _check_password(request: Request, username: str, password: str) -> User | None:
    """The active user with these credentials, else None: one read, then argon2 on the pool."""
    db = get_db(request)

    def load() -> tuple[User | None, str]:
        with db.read_session() as s:
            return load_credentials(s, username)

    user, stored = await run_in_threadpool(load)
    pool = request.app.state.password_pool
    if not await pool.run(verify_password, stored, password) or user is None or not user.active:
        return None
    if needs_rehash(stored):  # argon2 parameters were raised since this hash was made
        new_hash = await pool.run(hash_password, password)
        await run_in_threadpool(_store_hash, db, user.id, new_hash)
    return user


def _store_hash(db: Database, user_id: int, new_hash: str) -> None:
    with db.session() as s:
        s.get_one(User, user_id).password_hash = new_hash


@router.post("/logout", dependencies=[Depends(csrf_protect)])
def logout(request: Request) -> Response:
    id_token = sign_out(request)
    provider_url = _provider_logout(request, id_token)
    if provider_url is None:
        return RedirectResponse("/login", status_code=303)
    # A page, not a redirect: the form's CSP (form-action 'self') rightly blocks a form
    # submission redirected to another origin; a refresh (and a link, if it is slow) is a
    # new navigation, and the person sees why they pass through the provider.
    name = request.app.state.oidc.settings.name
    return render(
        request,
        "message.html",
        {
            "heading": "Signed out of cxrlabel",
            "text": f"Now signing you out of {name} too, so that the next person at this "
            "computer has to sign in as themselves.",
            "link": {"href": provider_url, "text": f"Sign out of {name}"},
            "refresh": provider_url,
        },
    )


def _provider_logout(request: Request, id_token: str | None) -> str | None:
    """The provider's end-session URL for a session opened through OpenID Connect. Our own
    session is already over; if the provider cannot be reached the person still lands on
    /login, signed out here (logged: their provider session may live on)."""
    client = getattr(request.app.state, "oidc", None)
    if not id_token or client is None:
        return None
    try:
        return client.end_session_url(id_token)
    except OidcError as exc:
        log.warning("signed out here, but the provider's session was not ended: %s", exc.detail)
        return None


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


DEVICE_COOKIE = "cxrlabel_device"  # a random id per browser: a duplicate-account signal


def _with_device_cookie(request: Request, response: Response) -> Response:
    if not request.cookies.get(DEVICE_COOKIE):
        response.set_cookie(
            DEVICE_COOKIE,
            secrets.token_urlsafe(18),
            max_age=365 * 86400,
            path="/join",
            httponly=True,
            samesite="lax",
            secure=cookie_secure(request),
        )
    return response


@router.get("/join/{token}")
def join_form(request: Request, token: str) -> Response:
    return _with_device_cookie(request, _join_form(request, token))


def _join_form(request: Request, token: str) -> Response:
    problem, title = _invite_context(request, token)
    if problem:
        return render(
            request,
            "message.html",
            {"heading": "This link cannot be used", "text": problem, "tone": "error"},
            410,
        )
    return render(request, "join.html", {"token": token, "job_title": title})


@router.post("/join/{token}", dependencies=[Depends(csrf_protect)])
async def join(
    request: Request,
    token: str,
    username: str = Form(""),
    password: str = Form(""),
    password2: str = Form(""),
) -> Response:
    """``async``: argon2 runs on the capped hashing pool (``web/passwords.py``) before the
    write transaction, so a burst of sign-ups neither holds request threads nor the writer."""
    limiter = request.app.state.login_limiter
    client = request.client.host if request.client else "unknown"
    if await run_in_threadpool(limiter.retry_after, [f"join:{client}"]):
        return _join_message(
            request, "Please wait", "Too many attempts. Try again in a few minutes.", 429
        )
    problem, title = await run_in_threadpool(_invite_context, request, token)
    if problem:
        return _join_message(request, "This link cannot be used", problem, 410)
    context = {"token": token, "job_title": title, "username": username}
    if password != password2:
        return render(request, "join.html", {**context, "error": "The passwords differ."}, 422)
    try:
        check_password_rules(password, username.strip())
        password_hash = await request.app.state.password_pool.run(hash_password, password)
        user, target = await run_in_threadpool(
            _redeem, request, token, username, password, password_hash, client
        )
    except PasswordPoolBusy:
        return _join_message(
            request, "Please wait", "The server is busy. Please try again in a moment.", 503
        )
    except AccountError as exc:
        await run_in_threadpool(limiter.failed, [f"join:{client}"])
        status = exc.status if exc.status != 400 else 422
        return render(request, "join.html", {**context, "error": exc.message}, status)
    await run_in_threadpool(sign_in, request, user)
    return RedirectResponse(target, status_code=303)


def _join_message(request: Request, heading: str, text: str, status: int) -> Response:
    return render(
        request, "message.html", {"heading": heading, "text": text, "tone": "error"}, status
    )


def _redeem(
    request: Request, token: str, username: str, password: str, password_hash: str, client: str
) -> tuple[User, str]:
    """The sign-up's write transaction (invite row locked, limits checked, account created);
    returns the user and where to send them."""
    network = network_of(client)
    with get_db(request).session() as s:
        now = utcnow()
        invite = find_invite(s, token, lock=True)
        if invite is not None:  # an unusable one is refused by redeem_invite below
            check_signup_allowed(s, invite, network, now)
        user, invite = redeem_invite(s, token, username, password, now, password_hash)
        record_signup(
            s, user, invite, network, device_hash(request.cookies.get(DEVICE_COOKIE)), now
        )
        job = s.get(Job, invite.job_id) if invite.job_id is not None else None
        return user, f"/jobs/{job.name}" if job is not None else "/"


@router.get("/account")
def account(request: Request, user: User = Depends(current_user)) -> Response:
    return render(request, "account.html")


@router.post("/account/token", dependencies=[Depends(csrf_protect)])
def new_token(request: Request, user: User = Depends(current_user)) -> Response:
    with get_db(request).session() as s:
        token = issue_api_token(s, s.get_one(User, user.id))
    return render(request, "account.html", {"token": token})


@router.get("/account/password")
def password_form(request: Request, user: User = Depends(current_user)) -> Response:
    return render(request, "password.html")


@router.post("/account/password", dependencies=[Depends(csrf_protect)])
def change_password(
    request: Request,
    current: str = Form(""),
    password: str = Form(""),
    password2: str = Form(""),
    user: User = Depends(current_user),
) -> Response:
    """Change one's own password; every other session of the account ends."""
    if password != password2:
        return render(request, "password.html", {"error": "The new passwords differ."}, 422)
    try:
        with get_db(request).session() as s:
            ended = change_own_password(
                s,
                s.get_one(User, user.id),
                current,
                password,
                keep_session=session_data(request).sid,
            )
    except AccountError as exc:
        status = exc.status if exc.status != 400 else 422
        return render(request, "password.html", {"error": exc.message}, status)
    return render(request, "password.html", {"done": True, "ended": ended})
