"""What to ingest: a folder walked recursively, a CSV manifest, Label Studio task JSON, or a
single file (a DICOMweb server lists its own items: ingest/dicomweb.py).

A bad PATH or manifest raises :class:`SourceError` (the CLI exits 2); a bad *row* or an
unsupported file becomes a :class:`SourceItem` with a ``problem``, reported like any failure.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".dcm", ".dicom", ".dic", ""})
PATH_COLUMNS = ("path", "file", "file_name", "filename", "image")
LABEL_COLUMNS = ("label", "reference_label", "class")
PATIENT_COLUMNS = ("patient_id", "patient")
MAX_MANIFEST_BYTES = 64 * 1024 * 1024


class SourceError(ValueError):
    """The PATH itself is unusable (missing, unreadable, or a malformed manifest)."""


@dataclass(frozen=True)
class SourceItem:
    path: str  # absolute path of the file (or "manifest.csv:LINE" for a row without one)
    label: str | None = None  # reference label, canonical spelling
    patient_id: str | None = None  # from a manifest
    problem: str | None = None  # set: skip the file with this reason
    # Bytes from elsewhere than ``path`` (a DICOMweb retrieve; ``path`` is then the instance's
    # URL): called at most once, and not at all when ``path`` was already pulled.
    fetch: Callable[[], bytes] | None = field(default=None, compare=False, repr=False)


def require_exists(source: Path) -> None:
    """``SourceError`` when a local source is missing (checked before anything is created)."""
    if not source.exists():
        raise SourceError(f"{source}: no such file or folder")


def discover(source: Path, label_values: list[str]) -> list[SourceItem]:
    """The items under ``source`` in a stable order (sorted paths, or manifest order)."""
    require_exists(source)
    if source.is_dir():
        return walk_folder(source, label_values)
    if source.suffix.lower() == ".csv":
        return read_manifest(source, label_values)
    if source.suffix.lower() == ".json":  # Label Studio tasks (with reference labels)
        from cxrlabel.ingest.labelstudio import read_tasks

        return read_tasks(source, label_values)
    return [SourceItem(str(source.resolve()))]


def walk_folder(root: Path, label_values: list[str]) -> list[SourceItem]:
    """Every non-hidden file; the parent folder's name is the label when it names one."""
    canonical = {v.upper(): v for v in label_values}
    items = []
    for folder, dirs, files in os.walk(root.resolve()):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        label = canonical.get(Path(folder).name.upper())
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(folder) / name
            problem = None
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                problem = f"not an image file (extension {path.suffix.lower()})"
            items.append(SourceItem(str(path), label=label, problem=problem))
    if not items:
        raise SourceError(f"{root}: folder holds no files")
    return items


def read_manifest(csv_path: Path, label_values: list[str]) -> list[SourceItem]:
    """Rows of a CSV with a path column (relative to the CSV) and optional label, patient id."""
    try:
        if csv_path.stat().st_size > MAX_MANIFEST_BYTES:
            raise SourceError(f"{csv_path}: manifest larger than 64 MiB")
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise SourceError(f"{csv_path}: manifest is not UTF-8 text") from None
    except OSError as exc:
        raise SourceError(f"{csv_path}: cannot read manifest: {exc.strerror}") from None
    try:
        rows = list(csv.DictReader(text.splitlines()))
    except csv.Error as exc:
        raise SourceError(f"{csv_path}: not a valid CSV file: {exc}") from None
    header = {h.strip().lower(): h for h in (rows[0].keys() if rows else _header(text)) if h}
    path_col = _pick(header, PATH_COLUMNS)
    if path_col is None:
        raise SourceError(
            f"{csv_path}: manifest needs a column named one of "
            f"{', '.join(PATH_COLUMNS)} (found: {', '.join(header) or 'none'})"
        )
    if not rows:
        raise SourceError(f"{csv_path}: manifest has no rows")
    label_col, patient_col = _pick(header, LABEL_COLUMNS), _pick(header, PATIENT_COLUMNS)
    canonical = {v.upper(): v for v in label_values}
    base = csv_path.resolve().parent
    items = []
    for line, row in enumerate(rows, start=2):
        items.append(
            _manifest_item(row, line, csv_path, base, path_col, label_col, patient_col, canonical)
        )
    return items


def _manifest_item(
    row: dict[str, str | None],
    line: int,
    csv_path: Path,
    base: Path,
    path_col: str,
    label_col: str | None,
    patient_col: str | None,
    canonical: dict[str, str],
) -> SourceItem:
    raw_path = (row.get(path_col) or "").strip()
    if not raw_path:
        return SourceItem(f"{csv_path.name}:{line}", problem="manifest row has an empty path")
    path = str((base / raw_path).resolve())
    raw_label = (row.get(label_col) or "").strip() if label_col else ""
    label = canonical.get(raw_label.upper()) if raw_label else None
    if raw_label and label is None:
        allowed = ", ".join(canonical.values())
        return SourceItem(path, problem=f"manifest label {raw_label!r} is not one of {allowed}")
    patient = (row.get(patient_col) or "").strip() if patient_col else ""
    return SourceItem(path, label=label, patient_id=patient or None)


def _header(text: str) -> list[str]:
    first = next(csv.reader(text.splitlines()[:1]), [])
    return [h for h in first if h]


def _pick(header: dict[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        if name in header:
            return header[name]
    return None
