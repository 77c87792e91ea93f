"""``create_app(settings)``: the FastAPI app; ``run_server(...)``: serve it with uvicorn.

Routers are discovered in ``cxrlabel/web/routes/*.py``: every module with a ``router``
(an ``APIRouter``) is included, so a new page is one new file.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from cxrlabel import __version__
from cxrlabel.annotate.aliases import Aliases
from cxrlabel.config import Settings
from cxrlabel.errors import EngineError
from cxrlabel.storage.db import Database
from cxrlabel.templating import STATIC_DIR
from cxrlabel.web import routes
from cxrlabel.web.deps import LoginRequired, is_api, render
from cxrlabel.web.images_fast import ImageUrls, RenditionStore, SignedImages
from cxrlabel.web.middleware import BodyLimitMiddleware, SessionMiddleware
from cxrlabel.web.oidc import FlowCookie, OidcClient
from cxrlabel.web.passwords import PasswordPool
from cxrlabel.web.security import (
    ImageUrlSigner,
    SessionSigner,
    load_secret_key,
)
from cxrlabel.web.throttle import LoginRateLimiter

log = logging.getLogger("cxrlabel.web")

KEEP_ALIVE_S = 30.0


def create_app(
    settings: Settings, *, db: Database | None = None, warm_dashboards: bool = False
) -> FastAPI:
    """The whole web app for one data dir / database (migrations applied on open).

    ``warm_dashboards`` (``serve`` sets it): compute every job's QA snapshot in the background
    at start-up, so the first dashboard request does not wait seconds for it. Off for the
    in-process apps of tests and tools, which would pay that computation for nothing."""
    app = FastAPI(
        title="cxrlabel",
        version=__version__,
        description="Crowd labeling of pediatric chest X-rays: annotator and admin API.",
        # /api/docs is served offline by web/routes/apidocs.py (no CDN, strict CSP).
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
        lifespan=_warm_dashboards if warm_dashboards else None,
    )
    app.state.settings = settings
    app.state.db = db or Database(settings.database_url)
    secret = load_secret_key(settings.data_dir)
    app.state.signer = SessionSigner(secret)
    renditions = RenditionStore(settings.data_dir, app.state.db, Aliases(secret))
    app.state.image_urls = ImageUrls(ImageUrlSigner(secret), renditions)
    app.state.login_limiter = LoginRateLimiter(app.state.db)  # one budget for all workers
    app.state.password_pool = PasswordPool()
    # Sign-in with the hospital's OpenID Connect provider, when configured (routes/oidc.py).
    app.state.oidc = OidcClient(settings.oidc) if settings.oidc else None
    app.state.oidc_flows = FlowCookie(secret)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    for module in _route_modules():
        app.include_router(module.router)
    _install_middleware(app)
    _install_error_handlers(app)
    return app


@asynccontextmanager
async def _warm_dashboards(app: FastAPI) -> AsyncIterator[None]:
    from starlette.concurrency import run_in_threadpool

    from cxrlabel.web.routes.dashboard import warm_snapshots

    await run_in_threadpool(warm_snapshots, app)
    yield


def _route_modules() -> list:
    found = pkgutil.iter_modules(routes.__path__)
    names = sorted(m.name for m in found if not m.name.startswith("_"))
    modules = [importlib.import_module(f"{routes.__name__}.{name}") for name in names]
    return [m for m in modules if hasattr(m, "router")]


def _install_middleware(app: FastAPI) -> None:
    # Pure ASGI (no BaseHTTPMiddleware task group per request). The last added runs first:
    # signed image URLs are answered before sessions, routing or FastAPI see the request;
    # body limits apply after the session cookie is decoded and before anything parses a body.
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(SessionMiddleware, signer=app.state.signer)
    app.add_middleware(
        SignedImages, signer=app.state.image_urls.signer, store=app.state.image_urls.store
    )


def _error_code(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def json_error(status: int, code: str, message: str, **extra) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


async def _know_the_user(request: Request) -> None:
    """An unknown URL runs no route dependency, so the error page would show *Sign in* to a
    signed-in person: look the session up here (a read, in the thread pool)."""
    if hasattr(request.state, "user"):
        return
    from starlette.concurrency import run_in_threadpool

    from cxrlabel.web.deps import optional_user

    try:
        await run_in_threadpool(optional_user, request)
    except StarletteHTTPException:
        request.state.user = None


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target)}", status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        if is_api(request) or request.headers.get("x-csrf-token"):
            response: Response = json_error(exc.status_code, _error_code(exc.status_code), message)
        else:
            await _know_the_user(request)
            response = render(
                request,
                "message.html",
                {
                    "heading": HTTPStatus(exc.status_code).phrase,
                    "text": message,
                    "tone": "error",
                    "link": {"href": "/", "text": "Back to the start page"},
                },
                status_code=exc.status_code,
            )
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        details = [
            {
                "field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"),
                "message": e.get("msg", ""),
            }
            for e in exc.errors()
        ]
        first = details[0] if details else {"field": "", "message": "invalid request"}
        message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
        if is_api(request):
            return json_error(422, "invalid_request", message, details=details)
        return render(
            request,
            "message.html",
            {
                "heading": "Something is missing",
                "text": message,
                "tone": "error",
                "link": {"href": "/", "text": "Back to the start page"},
            },
            status_code=422,
        )

    @app.exception_handler(EngineError)
    async def engine_error(request: Request, exc: EngineError) -> Response:
        if is_api(request) or request.headers.get("x-csrf-token"):
            return json_error(exc.status, exc.code, exc.message)
        return render(
            request,
            "message.html",
            {
                "heading": "We could not do that",
                "text": exc.message,
                "tone": "error",
                "link": {"href": "/", "text": "Back to the start page"},
            },
            status_code=exc.status,
        )

    # A number in the URL too big for the database (an id like 10**30): SQLite raises
    # OverflowError, PostgreSQL a DataError. Such an object cannot exist: 404, not a 500.
    @app.exception_handler(OverflowError)
    @app.exception_handler(DataError)
    async def out_of_range(request: Request, exc: Exception) -> Response:
        message = "no such item (a number in the request is out of range)"
        if is_api(request) or request.headers.get("x-csrf-token"):
            return json_error(404, "not_found", message)
        return render(
            request,
            "message.html",
            {
                "heading": "Not Found",
                "text": message,
                "tone": "error",
                "link": {"href": "/", "text": "Back to the start page"},
            },
            status_code=404,
        )


def run_server(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    *,
    access_log: bool = True,
    keep_alive_s: float = KEEP_ALIVE_S,
) -> None:
    """Serve the app with uvicorn (uvloop + httptools, installed with ``uvicorn[standard]``).
    Several workers need PostgreSQL: SQLite has one writer and in-memory login rate limits
    would not be shared in a useful way. ``access_log=False`` saves a log line per request
    (a page is a dozen requests); ``keep_alive_s``: how long an idle connection stays open
    (uvicorn's default of 5 s closed connections that browsers and clients were about to
    reuse between pages)."""
    import uvicorn

    if workers > 1 and settings.is_sqlite:
        # Measured (docs/benchmarks.md, issue 11, steps 11 and 20): 2 workers on SQLite,
        # writers queued across processes on the writer lock file (storage/db.py), gave 0-14 %
        # more judgments/s than 1 for 2.3-3x the memory: a page's work happens inside its write
        # transaction, which SQLite runs one at a time.
        raise ValueError(
            "--workers > 1 needs PostgreSQL (--db postgresql+psycopg://...); SQLite allows one "
            "writer, so run one worker with SQLite."
        )
    Database(settings.database_url).dispose()  # migrate once, before workers start
    load_secret_key(settings.data_dir)  # create the shared key once, before workers start
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "proxy_headers": True,
        "log_level": "info",
        "access_log": access_log,
        "timeout_keep_alive": int(keep_alive_s),
    }
    if workers > 1:
        import os

        os.environ["CXRLABEL_DATA_DIR"] = str(settings.data_dir)
        if settings.db_url:
            os.environ["CXRLABEL_DB"] = settings.db_url
        # uvicorn kills a worker that does not answer its health ping within 5 s by default;
        # importing the app on a busy machine takes longer, so workers were killed and
        # restarted in a loop and the server never came up (found by benchmarks/load.py).
        uvicorn.run(
            "cxrlabel.web.app:app_from_env",
            factory=True,
            workers=workers,
            timeout_worker_healthcheck=60,
            **options,
        )
    else:
        uvicorn.run(create_app(settings, warm_dashboards=True), **options)


def app_from_env() -> FastAPI:
    """Factory for uvicorn worker processes (settings from CXRLABEL_DATA_DIR / CXRLABEL_DB)."""
    return create_app(Settings.from_env(), warm_dashboards=True)
