"""The web package's name for the shared templating module (``cxrlabel.templating``)."""

from cxrlabel.templating import (
    STATIC_DIR,
    TEMPLATES_DIR,
    WEB_DIR,
    env,
    markdown_html,
    render_standalone_work_page,
    render_work_page,
    static_text,
    viewer_keys,
    work_page_context,
)

__all__ = [
    "STATIC_DIR",
    "TEMPLATES_DIR",
    "WEB_DIR",
    "env",
    "markdown_html",
    "render_standalone_work_page",
    "render_work_page",
    "static_text",
    "viewer_keys",
    "work_page_context",
]
