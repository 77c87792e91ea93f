"""One templating floor for every room: the Jinja2 environment and the Markdown renderer.

The web app's pages, the job-design preview and proposal (``design``) and the QA report
(``results``) all render through ``env`` (and its two overlays below), usable without a
request (previews, tests, e-mails). It lives on the ground floor, not in ``web``, so ``design``
can render the real work page without importing the web package (which imports ``design``).

The work page (``work_page.html``) is a fragment that needs no request: the job-design preview
renders it with data-URI images and inlines ``static/viewer.css`` and ``static/viewer.js``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PrefixLoader, select_autoescape
from markdown_it import MarkdownIt
from markupsafe import Markup

from cxrlabel.jobspec import JobSpec

PACKAGE_DIR = Path(__file__).parent
WEB_DIR = PACKAGE_DIR / "web"
TEMPLATES_DIR = WEB_DIR / "templates"
STATIC_DIR = WEB_DIR / "static"
# Templates of the other rooms are named "<room>:<file>" ("design:preview.html.j2"); the web
# app's own names (which have no colon) come from its folder.
ROOM_TEMPLATES = {
    "design": PACKAGE_DIR / "design" / "templates",
    "results": PACKAGE_DIR / "results" / "templates",
}

env = Environment(
    loader=ChoiceLoader(
        [
            PrefixLoader(
                {room: FileSystemLoader(folder) for room, folder in ROOM_TEMPLATES.items()},
                delimiter=":",
            ),
            FileSystemLoader(TEMPLATES_DIR),
        ]
    ),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
# Stand-alone HTML documents (preview, proposal, QA report) keep Jinja's default whitespace.
document_env = env.overlay(trim_blocks=False, lstrip_blocks=False)
# Markdown documents (the design proposal): no HTML escaping, the trailing newline kept.
markdown_env = env.overlay(
    autoescape=False, trim_blocks=False, lstrip_blocks=False, keep_trailing_newline=True
)

# CommonMark plus tables; raw HTML in the text is escaped and commonmark's link validation drops
# javascript: URLs (job instructions are admin-written, but shown to every annotator).
_markdown = MarkdownIt("commonmark", {"html": False}).enable("table")


def markdown_html(text: str) -> Markup:
    """Markdown rendered as safe HTML (the one Markdown renderer of the project)."""
    return Markup(_markdown.render(text))


def static_text(name: str) -> Markup:
    """A static asset's text, to inline into a self-contained page."""
    return Markup((STATIC_DIR / name).read_text(encoding="utf-8"))


def viewer_keys(spec: JobSpec) -> list[tuple[str, str]]:
    """(key, what it does) for the keyboard help shown on the work page."""
    keys = [(c.key.upper(), c.text) for c in spec.question.labels if c.key]
    keys += [(c.key, c.text) for c in spec.certainty.options if c.key]
    keys += [
        ("F", "cycle the image-quality flag"),
        ("J / K", "next / previous image"),
        ("Enter", "submit the page"),
        ("+ / −", "zoom"),
        ("0", "reset the view"),
        ("I", "invert"),
        (", / .", "brightness"),
        ("[ / ]", "contrast"),
        ("?", "help"),
    ]
    return keys


def work_page_context(spec: JobSpec, items: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
    """Context of ``work_page.html``: ``items`` are ``{"public_id", "src"}`` dicts."""
    context: dict[str, Any] = {
        "spec": spec,
        "items": items,
        "page_id": "preview",
        "preview": True,
        "submit_url": "#",
        "csrf_token": "",
        "client_submission_id": "",
        "page_kind": "work",
        "prefill": {},
        "keys": viewer_keys(spec),
        "prefetch_url": None,
    }
    context.update(extra)
    return context


def render_work_page(spec: JobSpec, items: list[dict[str, str]], **extra: Any) -> Markup:
    """The work page fragment (form, viewer, answers), outside any request."""
    template = env.get_template("work_page.html")
    return Markup(template.render(work_page_context(spec, items, **extra)))


def render_standalone_work_page(spec: JobSpec, items: list[dict[str, str]]) -> str:
    """A self-contained HTML document of a preview work page (CSS and JS inlined)."""
    return env.get_template("standalone_work_page.html").render(
        spec=spec,
        work_page=render_work_page(spec, items),
        app_css=static_text("app.css"),
        viewer_css=static_text("viewer.css"),
        viewer_js=static_text("viewer.js"),
    )
