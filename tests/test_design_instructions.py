"""Illustrated instruction examples: marks drawn on a copy, image sources in order, Markdown."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from cxrlabel.design import instructions as ins
from cxrlabel.jobspec import JobSpecError, Mark, load_job, parse_job, resolve_job_path
from cxrlabel.storage.db import Database
from design_support import add_image, bundled_job


def test_marks_are_drawn_on_a_copy_where_the_job_says() -> None:
    original = PILImage.new("L", (400, 200), 90)
    marks = [
        Mark(shape="ellipse", at=[0.1, 0.1, 0.5, 0.9]),
        Mark(shape="arrow", at=[0.9, 0.9, 0.7, 0.5], label="look"),
    ]
    marked = ins.draw_marks(original, marks)
    assert original.getpixel((40, 100)) == 90  # untouched
    assert marked.mode == "RGB" and marked.size == (400, 200)
    assert marked.getpixel((41, 100)) == ins.MARK_COLOUR  # left edge of the ellipse
    assert marked.getpixel((120, 100)) == (90, 90, 90)  # inside: the image shows through
    assert marked.getpixel((281, 101)) == ins.MARK_COLOUR  # the arrow's head


def test_marks_must_be_relative() -> None:
    toml = resolve_job_path(None).read_text().replace("at = [0.11, 0.13", "at = [1.5, 0.13")
    with pytest.raises(JobSpecError, match="relative"):
        parse_job(toml, "job.toml", resolve_job_path(None).parent)


def test_without_shared_data_examples_are_phantoms_that_match_the_marks(monkeypatch, tmp_path):
    monkeypatch.setenv("CXRLABEL_SHARED_DATA", str(tmp_path))
    spec = load_job(resolve_job_path(None))
    examples = ins.illustrated_examples(spec)
    assert [e.source for e in examples] == [ins.SOURCE_PHANTOM] * len(examples)
    # The pneumonia phantom is brighter inside its marked patch than the healthy one.
    patch = next(e for e in spec.instructions.examples if e.answer == "PNEUMONIA")
    healthy = ins.phantom_for_example(spec.instructions.examples[0])
    sick = ins.phantom_for_example(patch)
    x0, y0, x1, y1 = patch.marks[0].at
    box = tuple(int(v) for v in (x0 * 512, y0 * 420, x1 * 512, y1 * 420))
    mean = lambda im: float(np.asarray(im.crop(box)).mean())  # noqa: E731
    assert mean(sick) > mean(healthy) + 20


def test_kermany_examples_are_used_when_present(shared_data: Path) -> None:
    spec = load_job(resolve_job_path(None))
    examples = ins.illustrated_examples(spec)
    assert {e.source for e in examples} == {ins.SOURCE_KERMANY}
    assert [e.answer for e in examples] == ["NORMAL", "PNEUMONIA", "PNEUMONIA"]
    assert all(e.jpeg[:2] == b"\xff\xd8" and e.jpeg != e.plain_jpeg for e in examples)


def test_job_images_in_the_database_come_first(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    with db.session() as s:
        job, spec = bundled_job(s)
        add_image(s, job, tmp_path, 3, name="person1188_bacteria_3137.jpeg")
        examples = ins.illustrated_examples(spec, s, job, tmp_path)
    assert examples[1].source == ins.SOURCE_DB
    assert examples[0].source != ins.SOURCE_DB


def test_instructions_html_places_the_gallery_and_escapes_html() -> None:
    base = load_job(resolve_job_path(None))
    spec = base.model_copy(
        update={
            "instructions": base.instructions.model_copy(
                update={
                    "markdown": "# Title\n<script>x()</script>\n<!-- examples -->\n## After",
                    "file": None,
                }
            )
        }
    )
    example = ins.IllustratedExample("cap <b>", "NORMAL", "Healthy", b"\xff", b"\xff", "s", "r")
    html = str(ins.instructions_html(spec, [example]))
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert html.index("<h1>Title</h1>") < html.index('class="examples"') < html.index("After")
    assert "cap &lt;b&gt;" in html and "data:image/jpeg;base64," in html
