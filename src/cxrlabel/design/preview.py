"""The job Preview: one self-contained HTML file showing the job as an annotator sees it.

Everything is inline (CSS, JS, images as data URIs), so the file opens offline in any browser
and makes no request. The work page is the annotator web app's own template, CSS and JS
(``cxrlabel.templating``), so the preview cannot drift from the real job.
"""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image as PILImage
from sqlalchemy.orm import Session

from cxrlabel.design.goldbank import gold_rows
from cxrlabel.design.instructions import (
    EXAMPLE_MAX_SIDE,
    IllustratedExample,
    illustrated_examples,
    instructions_html,
)
from cxrlabel.jobspec import JobSpec
from cxrlabel.storage.models import Job, utcnow
from cxrlabel.templating import document_env, render_standalone_work_page

DEFAULT_GOLD_EXAMPLES = 6


@dataclass(frozen=True)
class GoldExample:
    src: str  # data URI
    answers: list[str]  # label texts
    reason: str
    difficulty: str


def image_data_uri(image: PILImage.Image, max_side: int = EXAMPLE_MAX_SIDE) -> str:
    copy = image.convert("L")
    copy.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    copy.save(buffer, format="JPEG", quality=85, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _work_items(examples: list[IllustratedExample]) -> list[dict[str, str]]:
    """The example images, unmarked, as the items of one work page."""
    return [
        {"public_id": f"preview-{n}", "src": ex.plain_data_uri}
        for n, ex in enumerate(examples, start=1)
    ]


def _gold_examples(
    spec: JobSpec,
    examples: list[IllustratedExample],
    session: Session | None,
    job: Job | None,
    data_dir: Path | None,
    limit: int,
) -> tuple[list[GoldExample], str]:
    texts = {c.value: c.text for c in spec.question.labels}
    gold: list[GoldExample] = []
    if session is not None and job is not None and data_dir is not None:
        rows = gold_rows(session, job, include_inactive=False)
        # Show both classes early: alternate through the bank by first accepted answer.
        rows.sort(key=lambda r: (r.gold.difficulty != "easy", r.gold.id))
        by_label: dict[str, list] = {}
        for r in rows:
            by_label.setdefault(r.gold.accepted_answers[0], []).append(r)
        interleaved = [r for group in zip_longest_all(by_label.values()) for r in group]
        for r in interleaved[:limit]:
            path = data_dir / r.image.rendition_path
            if not path.is_file():
                continue
            with PILImage.open(path) as im:
                src = image_data_uri(im)
            gold.append(
                GoldExample(
                    src,
                    [texts.get(a, a) for a in r.gold.accepted_answers],
                    r.gold.reason,
                    r.gold.difficulty,
                )
            )
        if gold:
            total = len(rows)
            return gold, (
                f"{len(gold)} of the job's {total} active test questions, with the answer and "
                "the reason an annotator sees after missing one."
            )
    for ex in examples[:limit]:
        gold.append(GoldExample(ex.plain_data_uri, [ex.answer_text], ex.caption, "easy"))
    return gold, (
        "The job has no test questions in the database yet; these are the instruction examples "
        "shown as test questions. Import the real bank with: cxrlabel gold import FILE.csv"
    )


def zip_longest_all(groups) -> list[list]:
    """Round-robin over several lists: [[a1, b1], [a2, b2], [a3]]."""
    groups = [list(g) for g in groups]
    rounds = max((len(g) for g in groups), default=0)
    return [[g[i] for g in groups if i < len(g)] for i in range(rounds)]


def render_work_page(spec: JobSpec, items: list[dict[str, str]]) -> str:
    """The annotator work page as a complete document, from the web app's own template and
    static CSS/JS (inlined), shown in an isolated frame so its styles and keys stay its own."""
    return render_standalone_work_page(spec, items)


def render_preview(
    spec: JobSpec,
    session: Session | None = None,
    job: Job | None = None,
    data_dir: Path | None = None,
    gold_examples: int = DEFAULT_GOLD_EXAMPLES,
) -> str:
    """The whole preview as one HTML string."""
    examples = illustrated_examples(spec, session, job, data_dir)
    gold, gold_note = _gold_examples(spec, examples, session, job, data_dir, gold_examples)
    spec_text = job.spec_toml if job is not None else spec.model_dump_json()
    return document_env.get_template("design:preview.html.j2").render(
        spec=spec,
        spec_sha=hashlib.sha256(spec_text.encode()).hexdigest(),
        generated_at=utcnow().strftime("%Y-%m-%d %H:%M UTC"),
        instructions=instructions_html(spec, examples),
        work_page_document=render_work_page(spec, _work_items(examples)),
        gold=gold,
        gold_note=gold_note,
    )
