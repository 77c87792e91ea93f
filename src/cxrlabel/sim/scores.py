"""Per-image model scores for a simulated job: a CSV of ``file,p_pneumonia`` (what
``cxrlabel predict`` writes, or out-of-fold scores from the model's own benchmark) loaded
into ``Image.model_score``, so that the job's model-assisted options (a model-ordered work
queue, crowd/model disagreement sent to review) can be measured in the simulator.

Rows are matched to the job's images by content hash (a ``sha256`` column, when the file has
one) or by path: the longest trailing run of path components that the file's path and the
image's source path share, e.g. ``train/NORMAL/IM-0115-0001.jpeg`` matches
``/.../kermany/images/train/NORMAL/IM-0115-0001.jpeg``. A suffix shared by several rows (two
folders with the same file name) is never used to match.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from sqlalchemy import select

from cxrlabel.sim.prepare import SimSetupError
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import Image

SCORE_COLUMN = "p_pneumonia"
MAX_SUFFIX_PARTS = 6


def read_scores(path: Path) -> list[tuple[str, str | None, float]]:
    """(file, sha256 or None, score) per row; one clear error for a bad file."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = set(reader.fieldnames or [])
            if not {"file", SCORE_COLUMN} <= columns:
                raise SimSetupError(
                    f"{path}: model scores need the columns file,{SCORE_COLUMN} "
                    f"(found: {', '.join(sorted(columns)) or 'none'})"
                )
            rows = []
            for line, row in enumerate(reader, start=2):
                rows.append(
                    (
                        _norm(row["file"]),
                        (row.get("sha256") or "").lower() or None,
                        _score(row[SCORE_COLUMN], path, line),
                    )
                )
    except OSError as exc:
        raise SimSetupError(f"{path}: cannot read model scores: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SimSetupError(f"{path}: model scores are not UTF-8 text") from None
    if not rows:
        raise SimSetupError(f"{path}: no rows of model scores")
    return rows


def load_model_scores(db: Database, job_id: int, path: Path) -> dict[str, Any]:
    """Write ``Image.model_score`` for every image of the job that the file names.

    Returns a summary (rows, matched images, images left without a score); raises
    ``SimSetupError`` when no image matches (the wrong file for these images)."""
    rows = read_scores(Path(path))
    by_sha = {sha: score for _f, sha, score in rows if sha}
    by_suffix = _suffix_index(rows)
    matched = 0
    with db.session() as session:
        images = session.scalars(select(Image).where(Image.job_id == job_id)).all()
        for image in images:
            score = by_sha.get(image.sha256)
            if score is None:
                score = _match_path(image.source_path, by_suffix)
            image.model_score = score
            matched += score is not None
    if matched == 0:
        raise SimSetupError(
            f"{path}: none of its {len(rows)} rows matches an image of the job "
            "(by sha256 or by path)"
        )
    return {
        "file": str(path),
        "rows": len(rows),
        "matched": matched,
        "images_without_score": len(images) - matched,
    }


def _norm(file: str) -> str:
    return file.strip().replace("\\", "/").removeprefix("./")


def _score(raw: str, path: Path, line: int) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise SimSetupError(f"{path}:{line}: {SCORE_COLUMN} {raw!r} is not a number") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise SimSetupError(f"{path}:{line}: {SCORE_COLUMN} {raw!r} is not in [0, 1]")
    return value


def _suffixes(file: str) -> list[str]:
    parts = [p for p in file.split("/") if p]
    return ["/".join(parts[-k:]) for k in range(min(len(parts), MAX_SUFFIX_PARTS), 0, -1)]


def _suffix_index(rows: list[tuple[str, str | None, float]]) -> dict[str, float | None]:
    """Every trailing path of every row -> its score (None when several rows share it)."""
    index: dict[str, float | None] = {}
    for file, _sha, score in rows:
        for suffix in _suffixes(file):
            index[suffix] = None if suffix in index else score
    return index


def _match_path(source_path: str, index: dict[str, float | None]) -> float | None:
    for suffix in _suffixes(_norm(source_path)):  # longest first
        if suffix in index:
            return index[suffix]
    return None
