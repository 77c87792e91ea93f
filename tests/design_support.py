"""Helpers for the job-design tests: the bundled job in a fresh DB, synthetic images via the ORM."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from sqlalchemy.orm import Session

from cxrlabel.context import ensure_job
from cxrlabel.ingest.phash import phash, to_hex
from cxrlabel.jobspec import JobSpec, resolve_job_path
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
        job_id=job.id, source_path=f"/data/src/{name or f'img-{seed}.jpeg'}",
        source_format="png", sha256=sha, pixel_sha256=sha, phash=hash_hex, width=width,
        height=height, patient_id=patient_id, reference_label=reference_label,
        rendition_path=rel, thumb_path=rel, status=status, judgment_target=3,
    )
    session.add(image)
    session.flush()
    return image


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text.lstrip(), encoding="utf-8")
    return path
