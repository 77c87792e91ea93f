"""Annotator instructions: the job's Markdown plus illustrated examples with the region marked.

Real X-rays may not live in the repository, so the illustrated examples are drawn at run time
from the best source available, in this order:

1. the job's own images in the database (a gold image or any ingested image of the job that the
   example's ``image`` reference names: public id, sha256 or source file name);
2. the shared Kermany data (``<shared>/kermany/images/*/*/<file name>``);
3. a file next to the job file;
4. a synthetic phantom (so the instructions always render, e.g. offline, in tests, in CI).

The marks (ellipses, boxes, arrows) come from the job file in relative units, so the same
example definition works at any resolution. A phantom is drawn *to match* the marks: its opaque
patch sits where the pneumonia example's first mark points, so the picture never contradicts
the caption.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from markupsafe import Markup, escape
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont
from sqlalchemy.orm import Session

from cxrlabel.config import shared_data_dir
from cxrlabel.design.goldbank import find_images
from cxrlabel.ingest.phantom import make_phantom_xray
from cxrlabel.jobspec import Example, JobSpec, Mark
from cxrlabel.storage.models import Image, Job
from cxrlabel.templating import markdown_html
from cxrlabel.vocab import NORMAL

# Longest side of an embedded example: big enough to see the finding, small enough that a
# self-contained HTML file with a handful of examples stays well under a few MB.
EXAMPLE_MAX_SIDE = 640
MARK_COLOUR = (255, 196, 0)  # amber: visible on black, white and grey, and colour-blind safe
EXAMPLES_PLACEHOLDER = "<!-- examples -->"

SOURCE_DB = "job images (database)"
SOURCE_KERMANY = "shared Kermany data"
SOURCE_FILE = "file next to the job"
SOURCE_PHANTOM = "synthetic phantom"


@dataclass(frozen=True)
class IllustratedExample:
    caption: str
    answer: str | None  # label value, e.g. "PNEUMONIA"
    answer_text: str  # what the annotator sees for that label
    jpeg: bytes  # the marked copy
    plain_jpeg: bytes  # the same image without marks (as on a work page)
    source: str  # one of the SOURCE_* names above
    reference: str  # the job file's image reference

    @property
    def data_uri(self) -> str:
        return _data_uri(self.jpeg)

    @property
    def plain_data_uri(self) -> str:
        return _data_uri(self.plain_jpeg)


def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


# --- finding the pixels --------------------------------------------------------------------


def find_job_image(session: Session, job: Job, reference: str) -> Image | None:
    """The one image of the job that the reference names (see ``goldbank.find_images``)."""
    matches = find_images(session, job, reference)
    return matches[0] if len(matches) == 1 else None


def _kermany_file(reference: str) -> Path | None:
    root = shared_data_dir() / "kermany"
    direct = root / reference
    if reference.startswith("images/") and direct.is_file():
        return direct
    found = sorted(root.glob(f"images/*/*/{Path(reference).name}"))
    return found[0] if found else None


def load_example_pixels(
    example: Example,
    spec: JobSpec,
    session: Session | None = None,
    job: Job | None = None,
    data_dir: Path | None = None,
) -> tuple[PILImage.Image, str]:
    """The example's image (grayscale) and where it came from."""
    if session is not None and job is not None and data_dir is not None:
        image = find_job_image(session, job, example.image)
        if image is not None:
            path = data_dir / image.rendition_path
            if path.is_file():
                return _open_gray(path), SOURCE_DB
    kermany = _kermany_file(example.image)
    if kermany is not None:
        return _open_gray(kermany), SOURCE_KERMANY
    local = Path(spec.base_dir) / example.image
    if local.is_file():
        return _open_gray(local), SOURCE_FILE
    return phantom_for_example(example), SOURCE_PHANTOM


def _open_gray(path: Path) -> PILImage.Image:
    with PILImage.open(path) as im:
        im.load()
        return im.convert("L")


# --- phantoms ------------------------------------------------------------------------------


def phantom_for_example(example: Example, size: tuple[int, int] = (512, 420)) -> PILImage.Image:
    """A synthetic chest consistent with the example's answer and marks: the ingest stage's
    healthy phantom (same look as the demo data), plus, for a pneumonia example, an opaque patch
    painted exactly where the first ellipse/box mark is, so picture and mark always agree."""
    base = make_phantom_xray(7, size).convert("L")
    if example.answer and example.answer.upper() != NORMAL:
        region = next((m for m in example.marks if m.shape != "arrow"), None)
        base = _paint_opacity(base, region.at if region else [0.15, 0.45, 0.42, 0.8])
    return base


def _paint_opacity(image: PILImage.Image, at: list[float]) -> PILImage.Image:
    arr = np.asarray(image, dtype=float)
    h, w = arr.shape
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    cx, cy = (at[0] + at[2]) / 2, (at[1] + at[3]) / 2
    rx, ry = max((at[2] - at[0]) / 2, 0.02), max((at[3] - at[1]) / 2, 0.02)
    d = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
    # Soft-edged, and strongest where the film is dark (air in the lung fills with fluid).
    haze = np.clip(1.2 - d, 0, 1) * 150 * (1 - arr / 255)
    return PILImage.fromarray(np.clip(arr + haze, 0, 255).astype(np.uint8), "L")


# --- drawing the marks ---------------------------------------------------------------------


def draw_marks(image: PILImage.Image, marks: list[Mark]) -> PILImage.Image:
    """A colour copy of ``image`` with each mark drawn; the original is untouched."""
    out = image.convert("RGB")
    out.thumbnail((EXAMPLE_MAX_SIDE, EXAMPLE_MAX_SIDE))
    w, h = out.size
    width = max(2, round(min(w, h) / 110))
    draw = ImageDraw.Draw(out)
    font = _font(max(12, round(min(w, h) / 26)))
    for mark in marks:
        x0, y0, x1, y1 = mark.at[0] * w, mark.at[1] * h, mark.at[2] * w, mark.at[3] * h
        if mark.shape == "ellipse":
            draw.ellipse(_ordered(x0, y0, x1, y1), outline=MARK_COLOUR, width=width)
            anchor = (min(x0, x1), min(y0, y1))
        elif mark.shape == "box":
            draw.rectangle(_ordered(x0, y0, x1, y1), outline=MARK_COLOUR, width=width)
            anchor = (min(x0, x1), min(y0, y1))
        else:
            _arrow(draw, (x0, y0), (x1, y1), width)
            anchor = (x0, y0)
        if mark.label:
            _label(draw, anchor, mark.label, font, (w, h))
    return out


def _ordered(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def _arrow(draw: ImageDraw.ImageDraw, tail: tuple, head: tuple, width: int) -> None:
    draw.line([tail, head], fill=MARK_COLOUR, width=width)
    angle = math.atan2(head[1] - tail[1], head[0] - tail[0])
    size = width * 5
    left = (head[0] - size * math.cos(angle - 0.45), head[1] - size * math.sin(angle - 0.45))
    right = (head[0] - size * math.cos(angle + 0.45), head[1] - size * math.sin(angle + 0.45))
    draw.polygon([head, left, right], fill=MARK_COLOUR)


def _label(draw: ImageDraw.ImageDraw, anchor: tuple, text: str, font, size: tuple) -> None:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left, bottom - top
    x = min(max(anchor[0], 2), size[0] - tw - 6)
    y = anchor[1] - th - 8 if anchor[1] - th - 8 > 2 else anchor[1] + 4
    draw.rectangle([x - 3, y - 2, x + tw + 3, y + th + 4], fill=(0, 0, 0))
    draw.text((x, y - top), text, fill=MARK_COLOUR, font=font)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for name in ("DejaVuSans-Bold.ttf", "DejaVuSans.ttf", "LiberationSans-Bold.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size)


def _downscaled(image: PILImage.Image) -> PILImage.Image:
    copy = image.copy()
    copy.thumbnail((EXAMPLE_MAX_SIDE, EXAMPLE_MAX_SIDE))
    return copy


def _jpeg(image: PILImage.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=88, optimize=True)
    return buffer.getvalue()


# --- public API ----------------------------------------------------------------------------


def illustrated_examples(
    spec: JobSpec,
    session: Session | None = None,
    job: Job | None = None,
    data_dir: Path | None = None,
) -> list[IllustratedExample]:
    """Every ``[[instructions.examples]]`` of the job, marked, as embeddable JPEGs."""
    texts = {c.value: c.text for c in spec.question.labels}
    result = []
    for example in spec.instructions.examples:
        pixels, source = load_example_pixels(example, spec, session, job, data_dir)
        result.append(
            IllustratedExample(
                caption=example.caption,
                answer=example.answer,
                answer_text=texts.get(example.answer or "", example.answer or ""),
                jpeg=_jpeg(draw_marks(pixels, example.marks)),
                plain_jpeg=_jpeg(_downscaled(pixels)),
                source=source,
                reference=example.image,
            )
        )
    return result


def examples_html(examples: list[IllustratedExample]) -> Markup:
    figures = []
    for ex in examples:
        answer = (
            f'<span class="answer">Answer: <b>{escape(ex.answer_text)}</b></span> '
            if ex.answer
            else ""
        )
        figures.append(
            f'<figure class="example"><img src="{ex.data_uri}" alt="{escape(ex.caption)}">'
            f"<figcaption>{answer}{escape(ex.caption)}"
            f'<small class="source">Image: {escape(ex.source)}</small></figcaption></figure>'
        )
    if not figures:
        return Markup("")
    return Markup(
        '<section class="examples"><h2>Examples</h2><p>The yellow marks show where to look. '
        "They are drawn only here, never on the images you label.</p>"
        + "".join(figures)
        + "</section>"
    )


def instructions_html(spec: JobSpec, examples: list[IllustratedExample]) -> Markup:
    """The full instructions as annotators see them: Markdown with the example gallery placed
    where the Markdown has a ``<!-- examples -->`` line (or at the end)."""
    text = spec.instructions_markdown()
    before, marker, after = text.partition(EXAMPLES_PLACEHOLDER)
    gallery = examples_html(examples)
    if not marker:
        return markdown_html(text) + gallery
    return markdown_html(before) + gallery + markdown_html(after)
