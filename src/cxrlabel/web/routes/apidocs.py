"""``/api/docs``: Swagger UI served from the installed package, so it works offline.

FastAPI's default page loads Swagger UI from a CDN (blank on a hospital network without
internet) and starts it with an inline script, which needs ``'unsafe-inline'``. Here the
assets come from the ``fastapi-offline`` package (MIT; it ships Swagger UI 5, Apache-2.0,
which renders OpenAPI 3.1; we use only its files, not its app class) and the start-up code
is a file of ours, so the page's CSP allows scripts from this origin only:

- ``GET /api/docs``: the HTML shell, with its own strict Content-Security-Policy (the security
  middleware keeps a CSP a response already sets);
- ``GET /api/docs/init.js``: starts Swagger UI on ``/api/openapi.json``;
- ``GET /api/docs/assets/{name}``: the few Swagger UI files the page uses.

Public, like the OpenAPI document itself: it lists routes, not data.
"""

from __future__ import annotations

import importlib.resources
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, Response

router = APIRouter(include_in_schema=False)

ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
# Same origin only, nothing inline, no eval: Swagger UI 5 renders and expands operations
# without inline styles (the browser test fails on any CSP violation).
DOCS_PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>cxrlabel API</title>
<link rel="icon" type="image/png" href="/api/docs/assets/favicon.png">
<link rel="stylesheet" href="/api/docs/assets/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/api/docs/assets/swagger-ui-bundle.js"></script>
<script src="/api/docs/init.js"></script>
</body>
</html>
"""
INIT_JS = """// Starts Swagger UI on this server's OpenAPI document (no inline script: strict CSP).
window.ui = SwaggerUIBundle({
  url: "/api/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  layout: "BaseLayout",
  presets: [SwaggerUIBundle.presets.apis],
});
"""


@lru_cache(maxsize=1)
def assets_dir() -> Path:
    """Swagger UI's files inside the installed ``fastapi-offline`` package."""
    try:
        root = importlib.resources.files("fastapi_offline")
    except ModuleNotFoundError:
        raise HTTPException(
            503,
            "API docs need the fastapi-offline package "
            "(a cxrlabel dependency): pip install fastapi-offline",
        ) from None
    return Path(str(root)) / "static"


@router.get("/api/docs")
def api_docs() -> HTMLResponse:
    assets_dir()  # fail with the install hint, not with a page that stays blank
    return HTMLResponse(PAGE, headers={"Content-Security-Policy": DOCS_PAGE_CSP})


@router.get("/api/docs/init.js")
def api_docs_init() -> Response:
    return Response(
        INIT_JS,
        media_type="text/javascript; charset=utf-8",
        headers={"Cache-Control": "public, max-age=3600"},
    )


@router.get("/api/docs/assets/{name}")
def api_docs_asset(name: str) -> FileResponse:
    if name not in ASSETS:  # a fixed list: no path from the URL reaches the file system
        raise HTTPException(404, "not found")
    return FileResponse(
        assets_dir() / name,
        media_type=ASSETS[name],
        headers={"Cache-Control": "public, max-age=86400"},
    )
