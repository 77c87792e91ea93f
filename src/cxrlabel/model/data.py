"""Reading an export and turning X-rays into model inputs (NumPy only: shared by both runtimes).

Preprocessing squashes every image to a square, exactly as the third-party 224 x 224 copies in
the Kermany data were made (``upstream_resized=true``: all of the official ``val`` and ``test``
images). Training on squashed images means the model sees new images the same way it saw its
training images, whatever their original aspect ratio; the 224 px intermediate step gives native
images the same loss of detail as the upstream copies.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cxrlabel.ingest.decode import DecodeError, decode_image
from cxrlabel.vocab import NORMAL, PNEUMONIA

SQUASH_SIDE = 224  # the side of the upstream square copies
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom"})
# Fixed normalisation of [0, 1] grey levels; BatchNorm absorbs the remaining offsets.
INPUT_MEAN, INPUT_STD = 0.5, 0.25
REQUIRED_COLUMNS = ("file_name", "split", "p_PNEUMONIA", "patient_id")

__all__ = [
    "DatasetError",
    "DecodeError",
    "Example",
    "read_export",
    "squash",
    "load_gray",
    "load_batch",
    "normalise",
    "find_images",
    "IMAGE_SUFFIXES",
]


class DatasetError(Exception):
    """An export folder that cannot be trained on; the message says what to fix."""


@dataclass(frozen=True)
class Example:
    path: Path
    p_pneumonia: float  # soft label: the aggregate's probability of PNEUMONIA
    split: str  # train | validation | test
    patient_id: str
    label: str  # hard aggregate label (NORMAL | PNEUMONIA)
    reference_label: str | None  # an expert's label, when the export carries one
    upstream_resized: bool | None

    @property
    def evaluation_target(self) -> int:
        """1 for pneumonia: the expert label when known, else the crowd's hard label."""
        return int((self.reference_label or self.label) == PNEUMONIA)


def _parse_bool(text: str | None) -> bool | None:
    value = (text or "").strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    return None


def read_export(dataset_dir: Path) -> list[Example]:
    """The examples of an ``export --format imagefolder`` folder (see docs/contracts.md)."""
    meta = Path(dataset_dir) / "metadata.csv"
    if not meta.is_file():
        raise DatasetError(f"{meta} not found: expected an export made by `cxrlabel export`")
    with meta.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{meta} lacks column(s): {', '.join(missing)}")
        rows = list(reader)
    examples = [_example(Path(dataset_dir), row, i + 2, meta) for i, row in enumerate(rows)]
    if not examples:
        raise DatasetError(f"{meta} has no rows")
    return examples


def _example(root: Path, row: dict[str, str], line: int, meta: Path) -> Example:
    try:
        p = float(row["p_PNEUMONIA"])
    except ValueError:
        raise DatasetError(f"{meta}:{line}: p_PNEUMONIA is not a number") from None
    if not 0.0 <= p <= 1.0:
        raise DatasetError(f"{meta}:{line}: p_PNEUMONIA {p} outside [0, 1]")
    label = (row.get("label") or "").strip() or (PNEUMONIA if p >= 0.5 else NORMAL)
    return Example(
        path=root / row["file_name"],
        p_pneumonia=p,
        split=row["split"].strip().lower(),
        patient_id=(row.get("patient_id") or "").strip() or f"row{line}",
        label=label,
        reference_label=(row.get("reference_label") or "").strip() or None,
        upstream_resized=_parse_bool(row.get("source_upstream_resized")),
    )


def squash(pixels: np.ndarray, size: int) -> np.ndarray:
    """(size, size) uint8: squash to 224 x 224 like the upstream copies, then downscale."""
    image = Image.fromarray(pixels, mode="L")
    if image.size != (SQUASH_SIDE, SQUASH_SIDE):
        image = image.resize((SQUASH_SIDE, SQUASH_SIDE), Image.Resampling.BILINEAR)
    if size != SQUASH_SIDE:
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


def load_gray(path: Path) -> np.ndarray:
    """8-bit grayscale pixels through ingest's safe decoder; raises DecodeError."""
    return decode_image(path).pixels


def load_batch(
    paths: Iterable[Path], size: int, on_done: Callable[[], None] | None = None
) -> np.ndarray:
    """(N, size, size) uint8 for training; any undecodable training image is an error."""
    paths = list(paths)
    out = np.empty((len(paths), size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            out[i] = squash(load_gray(path), size)
        except DecodeError as exc:
            raise DatasetError(f"{path}: {exc.reason}") from None
        if on_done:
            on_done()
    return out


def normalise(batch_uint8: np.ndarray) -> np.ndarray:
    """(N, S, S) uint8 -> (N, 1, S, S) float32 model input."""
    x = batch_uint8.astype(np.float32)[:, None] / 255.0
    return (x - INPUT_MEAN) / INPUT_STD


def find_images(paths: Iterable[Path]) -> list[Path]:
    """Files named on the command line, plus image files found recursively in folders.

    A named file is always tried (a DICOM often has no extension); inside folders only known
    image suffixes are taken, so a folder's notes or CSVs are not reported as failures.
    """
    found: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            found.extend(
                sorted(
                    p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                )
            )
        else:
            found.append(path)
    return found
