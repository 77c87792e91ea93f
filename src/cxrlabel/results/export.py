"""ML-ready dataset export: images as PNG, labels with soft labels, patient-aware splits.

Layout (contract with the model code, docs/contracts.md)::

    DIR/train/<label>/<public_id>.png      (also validation/, test/)
    DIR/metadata.csv                       file_name relative to DIR (pandas, our trainer)
    DIR/<split>/metadata.parquet           file_name relative to DIR/<split> (HF imagefolder;
                                           metadata.csv when pyarrow is not installed)
    DIR/labels.{csv,jsonl,parquet}         only for --format csv|jsonl|parquet
    DIR/labelstudio-{tasks.json,config.xml} only for --format labelstudio (results.labelstudio)
    DIR/README.md                          datasheet (its YAML header declares the features)

Why per-split metadata files: Hugging Face ``datasets`` (checked with 5.x) ignores a root
``metadata.csv`` when the images sit in split folders; it reads one per split folder, with
``file_name`` relative to it. The root file keeps the contract's DIR-relative paths. The
per-split files are typed Parquet (see ``results.typed``) so every split has the same features
and ``label`` is a ``ClassLabel``, even when a column is empty in one split.

The export is written into a hidden temporary folder next to DIR and renamed at the end, so a
crash never leaves a half export under DIR, and an existing DIR is only replaced on request.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from PIL import UnidentifiedImageError
from sqlalchemy.orm import Session

from cxrlabel.jobspec import JobSpec
from cxrlabel.results.datasheet import DatasheetInput, describe_source_file, render_datasheet
from cxrlabel.results.labelstudio import write_labelstudio
from cxrlabel.results.qa import collect_qa, qa_summary
from cxrlabel.results.reports import crowd_opinions, crowd_view, images_with_labels
from cxrlabel.results.sources import SourceNamer
from cxrlabel.results.splits import DEFAULT_RATIOS, SPLIT_NAMES, assign_splits, check_ratios
from cxrlabel.results.typed import have_pyarrow, write_parquet
from cxrlabel.storage.models import ExpertReview, GoldItem, Image, ImageStatus, Job

EXPORT_FORMATS = ("imagefolder", "csv", "jsonl", "parquet", "labelstudio")
# The contract's columns first, then additive ones (p_<label> follow the job's labels).
CONTRACT_HEAD = ["file_name", "label", "confidence"]
CONTRACT_TAIL = [
    "split",
    "patient_id",
    "expert_reviewed",
    "reference_label",
    "source_upstream_resized",
]
# ``source`` (original path, or DICOM Study/SOP Instance UIDs) is for the admin: it lets labels
# be joined back to the hospital's records, and is never shown to annotators.
EXTRA_COLUMNS = [
    "image_id",
    "is_gold",
    "needs_review",
    "crowd_label",
    "crowd_confidence",
    "aggregation_method",
    "trusted_judgments",
    "width",
    "height",
    "source",
]


class ExportError(ValueError):
    """A problem the user can fix (bad option, output folder in the way, missing library)."""


@dataclass(frozen=True)
class ExportOptions:
    format: str = "imagefolder"
    min_confidence: float = 0.0
    include_review: bool = False
    size: int | None = None  # longest side in px; None keeps the rendition's size
    seed: int = 0
    ratios: tuple[float, float, float] = DEFAULT_RATIOS
    overwrite: bool = False
    include_source: bool = True  # False (--no-source) for a copy that leaves the hospital

    def check(self) -> None:
        if self.format not in EXPORT_FORMATS:
            raise ExportError(
                f"unknown format {self.format!r}; use one of {', '.join(EXPORT_FORMATS)}"
            )
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ExportError(
                f"--min-confidence must be between 0 and 1, got {self.min_confidence}"
            )
        if self.size is not None and not 8 <= self.size <= 8192:
            raise ExportError(f"--size must be between 8 and 8192 px, got {self.size}")
        try:
            check_ratios(self.ratios)
        except ValueError as exc:
            raise ExportError(str(exc)) from None


@dataclass
class ExportResult:
    out_dir: Path
    records: list[dict[str, Any]]
    skipped: Counter[str] = field(default_factory=Counter)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def split_sizes(self) -> dict[str, int]:
        counts = Counter(r["split"] for r in self.records)
        return {s: counts.get(s, 0) for s in SPLIT_NAMES}


def export_columns(spec: JobSpec, include_source: bool = True) -> list[str]:
    extra = EXTRA_COLUMNS if include_source else [c for c in EXTRA_COLUMNS if c != "source"]
    return [*CONTRACT_HEAD, *[f"p_{v}" for v in spec.label_values], *CONTRACT_TAIL, *extra]


# --- which images, with which label ------------------------------------------------------------


def select_records(
    session: Session, job: Job, spec: JobSpec, opts: ExportOptions, data_dir: Path
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """One record per exported image (split not yet set) and the reasons others were left out.

    Private keys start with ``_`` (rendition path, grouping key, source facts) and are never
    written to the tables.
    """
    records: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    labels = spec.label_values
    opinions = crowd_opinions(session, job, spec)
    source_of = SourceNamer()
    for image, gold, review in images_with_labels(session, job):
        chosen = _choose_label(image, gold, review, opts, labels)
        if isinstance(chosen, str):
            if chosen:
                skipped[chosen] += 1
            continue
        record = _record(image, gold, review, chosen, labels, data_dir)
        crowd = crowd_view(image, review, opinions)
        record["crowd_label"], record["crowd_confidence"] = crowd.label, crowd.confidence
        record["source"] = source_of(image)
        records.append(record)
    return records, skipped


@dataclass(frozen=True)
class _Choice:
    label: str
    confidence: float
    proba: dict[str, float]
    needs_review: bool = False


def _choose_label(
    image: Image,
    gold: GoldItem | None,
    review: ExpertReview | None,
    opts: ExportOptions,
    labels: list[str],
) -> _Choice | str:
    """The label to export, or a reason for leaving the image out ("" = not worth counting)."""
    if review is not None:
        if review.label not in labels:
            return f"expert label not a job label ({review.label})"
        return _Choice(review.label, 1.0, _one_hot(review.label, labels))
    if gold is not None:
        if not gold.active:
            return "inactive gold items"
        answers = [str(a) for a in gold.accepted_answers]
        if len(answers) != 1 or answers[0] not in labels:
            return "gold items without a single accepted label"
        return _Choice(answers[0], 1.0, _one_hot(answers[0], labels))
    if image.status == ImageStatus.NEEDS_REVIEW and not opts.include_review:
        return "needing expert review (use --include-review)"
    if image.status not in (ImageStatus.FINALISED, ImageStatus.NEEDS_REVIEW, ImageStatus.EXPERT):
        return "" if image.status == ImageStatus.NEEDS_JUDGMENTS else f"status {image.status}"
    if image.label not in labels:
        return "without a crowd label"
    confidence = float(image.confidence or 0.0)
    if confidence < opts.min_confidence:
        return "below --min-confidence"
    proba = {v: float((image.proba or {}).get(v, 0.0)) for v in labels}
    return _Choice(image.label, confidence, proba, image.status == ImageStatus.NEEDS_REVIEW)


def _one_hot(label: str, labels: list[str]) -> dict[str, float]:
    return {v: 1.0 if v == label else 0.0 for v in labels}


def _record(
    image: Image,
    gold: GoldItem | None,
    review: ExpertReview | None,
    chosen: _Choice,
    labels: list[str],
    data_dir: Path,
) -> dict[str, Any]:
    source = describe_source_file(image.source_path)
    rendition = Path(image.rendition_path)
    return {
        "file_name": None,
        "label": chosen.label,
        "confidence": round(chosen.confidence, 6),
        **{f"p_{v}": round(chosen.proba[v], 6) for v in labels},
        "split": None,
        "patient_id": image.patient_id,
        "expert_reviewed": review is not None,
        "reference_label": image.reference_label,
        "source_upstream_resized": source.upstream_resized,
        "image_id": image.public_id,
        "is_gold": gold is not None,
        "needs_review": chosen.needs_review,
        "crowd_label": image.label,
        "crowd_confidence": image.confidence,
        "aggregation_method": image.aggregation_method,
        "trusted_judgments": image.trusted_judgments,
        "width": None,
        "height": None,
        "source": None,
        "_rendition": rendition if rendition.is_absolute() else data_dir / rendition,
        # Images without a patient id form their own group (keyed by their public id).
        "_group": f"patient:{image.patient_id}" if image.patient_id else f"image:{image.public_id}",
        "_kermany": source.is_kermany,
    }


def assign_record_splits(
    records: list[dict[str, Any]], ratios: tuple[float, float, float], seed: int
) -> None:
    groups: dict[Hashable, list[str]] = {}
    for r in records:
        groups.setdefault(r["_group"], []).append(r["label"])
    result = assign_splits(groups, ratios, seed)
    for r in records:
        r["split"] = result.split_of_group[r["_group"]]
        r["file_name"] = f"{r['split']}/{r['label']}/{r['image_id']}.png"


# --- writing -----------------------------------------------------------------------------------


def write_image(src: Path, dest: Path, size: int | None) -> tuple[int, int]:
    """Copy one rendition as PNG, downscaled so its longest side is at most ``size``."""
    with PILImage.open(src) as opened:
        opened.load()
        img: PILImage.Image = opened
        if img.mode not in ("L", "RGB"):
            img = img.convert("L" if img.mode in ("I", "I;16", "F", "LA", "1") else "RGB")
        if size is not None and max(img.size) > size:
            img.thumbnail((size, size), PILImage.Resampling.LANCZOS)
        dest.parent.mkdir(parents=True, exist_ok=True)
        img.save(dest, format="PNG")
        return img.size


def run_export(
    session: Session,
    job: Job,
    spec: JobSpec,
    out_dir: Path,
    data_dir: Path,
    opts: ExportOptions,
    *,
    now: datetime | None = None,
    on_start: Callable[[int], None] | None = None,
    on_image: Callable[[], None] | None = None,
) -> ExportResult:
    """Select, split, write images and tables and the datasheet; returns what was written.

    ``on_start(total)`` and ``on_image()`` let the CLI drive a progress bar.
    """
    opts.check()
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, opts.overwrite)
    if opts.format == "parquet":
        _require_pyarrow()
    records, skipped = select_records(session, job, spec, opts, data_dir)
    assign_record_splits(records, opts.ratios, opts.seed)
    qa = qa_summary(collect_qa(session, job, spec, now))

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; an export is meant to be shared
    try:
        failed = _write_images(records, tmp, opts.size, on_start, on_image)
        records = [r for r in records if r["width"] is not None]
        columns = export_columns(spec, opts.include_source)
        tables = _write_tables(records, columns, tmp, opts.format, spec.label_values, out_dir.name)
        sheet = DatasheetInput(
            job_name=job.name,
            spec=spec,
            format=opts.format,
            created_at=(now or datetime.now(UTC)).isoformat(timespec="seconds"),
            seed=opts.seed,
            ratios=opts.ratios,
            size=opts.size,
            min_confidence=opts.min_confidence,
            include_review=opts.include_review,
            columns=columns,
            records=records,
            skipped=skipped,
            failed=failed,
            qa=qa,
            table_files=tables,
        )
        (tmp / "README.md").write_text(render_datasheet(sheet), encoding="utf-8")
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out_dir, records, skipped, failed)


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(f"{out_dir} is not empty; choose a new folder or pass --overwrite")


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ExportError(
            "--format parquet needs pyarrow: pip install 'cxrlabel[parquet]'"
        ) from None


def _write_images(
    records: list[dict[str, Any]],
    root: Path,
    size: int | None,
    on_start: Callable[[int], None] | None,
    on_image: Callable[[], None] | None,
) -> list[tuple[str, str]]:
    """Write every image; a missing or unreadable rendition is reported, not fatal."""
    if on_start:
        on_start(len(records))
    failed = []
    for r in records:
        try:
            r["width"], r["height"] = write_image(r["_rendition"], root / r["file_name"], size)
        except FileNotFoundError:
            failed.append((r["image_id"], "rendition file missing"))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            failed.append((r["image_id"], f"unreadable rendition: {exc}"))
        if on_image:
            on_image()
    return failed


def _public(records: list[dict[str, Any]], columns: list[str]) -> list[dict[str, Any]]:
    return [{c: r[c] for c in columns} for r in records]


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def write_metadata_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _csv_cell(row[c]) for c in columns})


def _write_tables(
    records: list[dict[str, Any]],
    columns: list[str],
    root: Path,
    fmt: str,
    labels: list[str],
    folder_name: str,
) -> list[str]:
    rows = _public(records, columns)
    write_metadata_csv(root / "metadata.csv", rows, columns)
    written = ["metadata.csv"]
    typed = have_pyarrow()
    for split in SPLIT_NAMES:
        in_split = [
            dict(r, file_name=r["file_name"].split("/", 1)[1]) for r in rows if r["split"] == split
        ]
        if not in_split:
            continue
        if typed:
            write_parquet(
                root / split / "metadata.parquet", in_split, columns, labels, class_label=True
            )
            written.append(f"{split}/metadata.parquet")
        else:
            write_metadata_csv(root / split / "metadata.csv", in_split, columns)
            written.append(f"{split}/metadata.csv")
    if fmt == "csv":
        write_metadata_csv(root / "labels.csv", rows, columns)
        written.append("labels.csv")
    elif fmt == "jsonl":
        with (root / "labels.jsonl").open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        written.append("labels.jsonl")
    elif fmt == "parquet":
        # Typed like the per-split files, but the label stays its name (as in metadata.csv).
        write_parquet(root / "labels.parquet", rows, columns, labels, class_label=False)
        written.append("labels.parquet")
    elif fmt == "labelstudio":
        written += write_labelstudio(root, rows, labels, folder_name)
    return written


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move the finished export into place; an old export is removed only after that works."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
