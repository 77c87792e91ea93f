"""Model-assisted labeling: model scores into the database.

``score_job`` writes ``Image.model_score`` (calibrated p(PNEUMONIA)) from each image's
rendition. The rules that use the score live in the engine, once each: the queue order in
``annotate/claim.py`` (``model_uncertainty``), review of disagreements and early
finalising in ``quality/consensus.py`` (``model_disagrees``), all off unless the job asks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from cxrlabel.ingest.decode import DecodeError
from cxrlabel.model.data import squash
from cxrlabel.model.infer import OnnxModel, _decode
from cxrlabel.storage.models import Image


@dataclass
class ScoreReport:
    scored: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # image public id -> reason


def score_job(
    session: Session,
    job_id: int,
    model: OnnxModel,
    data_dir: Path,
    batch_size: int = 64,
    on_done: Callable[[int], None] | None = None,
    only_missing: bool = False,
) -> ScoreReport:
    """Score every image of a job from its rendition; the caller commits."""
    query = select(Image).where(Image.job_id == job_id).order_by(Image.id)
    if only_missing:
        query = query.where(Image.model_score.is_(None))
    images = list(session.scalars(query))
    report = ScoreReport()
    for start in range(0, len(images), batch_size):
        chunk, pixels = [], []
        for image in images[start : start + batch_size]:
            try:
                pixels.append(squash(_decode(Path(data_dir) / image.rendition_path), model.size))
                chunk.append(image)
            except DecodeError as exc:
                report.failed[image.public_id] = exc.reason
        if chunk:
            probs, _ = model.probabilities(np.stack(pixels))
            for image, p in zip(chunk, probs, strict=True):
                image.model_score = float(p)
            report.scored += len(chunk)
        session.flush()
        if on_done:
            on_done(min(batch_size, len(images) - start))
    return report


def count_images(session: Session, job_id: int) -> int:
    from sqlalchemy import func

    return int(session.scalar(select(func.count()).where(Image.job_id == job_id)) or 0)
