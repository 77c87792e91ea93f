"""Helpers for the job-design tests: the bundled job in a fresh DB, synthetic images via the ORM."""

from __future__ import annotations

import hashlib
import io
import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from sqlalchemy.orm import Session

from cxrlabel.ingest.phash import phash, to_hex
from cxrlabel.jobspec import JobSpec, resolve_job_path
from cxrlabel.jobstore import ensure_job
from cxrlabel.storage.models import Image, ImageStatus, Job


def bundled_job(session: Session) -> tuple[Job, JobSpec]:
    return ensure_job(session, resolve_job_path(None))


def synthetic_png(seed: int, size: int = 64) -> bytes:
    """A noise picture: different seeds give unrelated perceptual hashes."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size // 8, size // 8), dtype=np.uint8)
    image = PILImage.fromarray(pixels, "L").resize((size, size), PILImage.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def add_image(
    session: Session,
    job: Job,
    data_dir: Path,
    seed: int,
    *,
    name: str | None = None,
    reference_label: str | None = None,
    patient_id: str | None = None,
    status: str = ImageStatus.NEEDS_JUDGMENTS,
    png: bytes | None = None,
) -> Image:
    data = png if png is not None else synthetic_png(seed)
    rel = f"renditions/{job.name}-{seed}.png"
    (data_dir / "renditions").mkdir(parents=True, exist_ok=True)
    (data_dir / rel).write_bytes(data)
    with PILImage.open(io.BytesIO(data)) as im:
        hash_hex = to_hex(phash(im))
        width, height = im.size
    sha = hashlib.sha256(data + str(seed).encode()).hexdigest()
    image = Image(
        job_id=job.id,
        source_path=f"/data/src/{name or f'img-{seed}.jpeg'}",
        source_format="png",
        sha256=sha,
        pixel_sha256=sha,
        phash=hash_hex,
        width=width,
        height=height,
        patient_id=patient_id,
        reference_label=reference_label,
        rendition_path=rel,
        thumb_path=rel,
        status=status,
        judgment_target=3,
    )
    session.add(image)
    session.flush()
    return image


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text.lstrip(), encoding="utf-8")
    return path


# --- self-containment check ---------------------------------------------------------------------

_URL_ATTRS = {"src", "href", "action", "poster", "data", "formaction", "xlink:href", "background"}
_DESCRIPTOR = re.compile(r"\d+(\.\d+)?[wxh]")
_CSS_URL = re.compile(r"url\(\s*['\"]?([^'\")]+)")
_CSS_IMPORT = re.compile(r"@import\s+(?:url\()?\s*['\"]?([^'\");\s]+)")


def _is_local(url: str) -> bool:
    url = url.strip()
    return url == "" or url.startswith("#") or url.startswith("data:")


class ExternalRefFinder(HTMLParser):
    """Every reference in an HTML document (and its iframe srcdoc documents) that would make
    the browser fetch something: src/href/action/srcset attributes, CSS url() and @import."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.external: list[str] = []
        self.tags: Counter[str] = Counter()
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        self._in_style = tag == "style"
        for name, value in attrs:
            value = value or ""
            if name in _URL_ATTRS and not _is_local(value):
                self.external.append(f"<{tag} {name}={value[:80]}>")
            elif name in ("srcset", "imagesrcset"):
                # Candidates are "URL [descriptor]" separated by commas, but a data: URL holds
                # a comma itself, so split on whitespace and skip the descriptors instead.
                for token in value.split():
                    url = token.strip(",")
                    if url and not _DESCRIPTOR.fullmatch(url) and not _is_local(url):
                        self.external.append(f"<{tag} srcset={url[:80]}>")
            elif name == "style":
                self._css(value, tag)
            elif name == "srcdoc":
                inner = ExternalRefFinder()
                inner.feed(value)
                self.external += inner.external
                self.tags.update(inner.tags)

    handle_startendtag = handle_starttag

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self._css(data, "style")

    def _css(self, text: str, where: str) -> None:
        for url in _CSS_URL.findall(text) + _CSS_IMPORT.findall(text):
            if not _is_local(url):
                self.external.append(f"{where}: {url[:80]}")


def external_refs(html: str) -> ExternalRefFinder:
    finder = ExternalRefFinder()
    finder.feed(html)
    finder.close()
    return finder
