"""An export-like dataset folder built straight from the Kermany manifest (expert labels).

Used by the benchmark and the tests so that the model can be trained and measured without a
finished crowd job. The layout is the ``imagefolder`` export of docs/contracts.md.

The held-out ``test`` split is a **proxy** for the official Kermany test set (which is not in
the shared folder): whole patients whose images are all third-party 224 x 224 squashed copies,
as every official test image is, with the official test set's class mix (234 normal, 390
pneumonia). It comes from the same folders as training, so it is likely easier than the real
test set. Validation prefers the same kind of patients, plus the 16 official ``val`` images.

With ``crowd=`` the train and validation labels come from a crowd export instead (the product's
real pipeline: ``cxrlabel simulate`` or a real job, then ``cxrlabel export``), on the very same
patient splits, while ``test`` keeps the expert labels; so the two label sources are measured on
the same held-out images.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrlabel.vocab import NORMAL, PNEUMONIA

METADATA_COLUMNS = (
    "file_name",
    "label",
    "confidence",
    "p_NORMAL",
    "p_PNEUMONIA",
    "split",
    "patient_id",
    "expert_reviewed",
    "reference_label",
    "source_upstream_resized",
)


def metadata_row(
    file_name: str,
    label: str,
    p_pneumonia: float,
    split: str,
    patient_id: str,
    *,
    expert_reviewed: bool = False,
    reference_label: str = "",
    upstream_resized: bool | None = None,
    decimals: int = 4,
) -> dict[str, str]:
    """One ``metadata.csv`` row of the export contract (``METADATA_COLUMNS``), from the soft
    label p(PNEUMONIA); ``upstream_resized`` None: unknown (empty)."""
    p = p_pneumonia
    resized = "" if upstream_resized is None else str(upstream_resized).lower()
    return {
        "file_name": file_name,
        "label": label,
        "confidence": f"{max(p, 1 - p):.{decimals}f}",
        "p_NORMAL": f"{1 - p:.{decimals}f}",
        "p_PNEUMONIA": f"{p:.{decimals}f}",
        "split": split,
        "patient_id": patient_id,
        "expert_reviewed": str(expert_reviewed).lower(),
        "reference_label": reference_label,
        "source_upstream_resized": resized,
    }


@dataclass(frozen=True)
class _Row:
    file: str
    split: str
    label: str
    patient_id: str
    upstream_resized: bool


def _read_manifest(manifest: Path) -> list[_Row]:
    with Path(manifest).open(newline="", encoding="utf-8") as fh:
        return [
            _Row(
                r["file"],
                r["split"],
                r["label"],
                r["patient_id"],
                r["upstream_resized"].strip().lower() == "true",
            )
            for r in csv.DictReader(fh)
        ]


def _groups(rows: list[_Row]) -> dict[str, list[_Row]]:
    # ``personNNN`` alone may merge two children (see the data README); merging is the safe
    # direction: it never puts one child's images on both sides of a split.
    groups: dict[str, list[_Row]] = defaultdict(list)
    for row in rows:
        groups[row.patient_id].append(row)
    return groups


def _label_of(group: list[_Row]) -> str:
    return max((NORMAL, PNEUMONIA), key=lambda c: sum(r.label == c for r in group))


def _take(
    candidates: list[str], groups: dict[str, list[_Row]], wanted: int, taken: set[str]
) -> list[str]:
    chosen, count = [], 0
    for pid in candidates:
        if count >= wanted:
            break
        if pid not in taken:
            chosen.append(pid)
            count += len(groups[pid])
    taken.update(chosen)
    return chosen


def assign_splits(
    rows: list[_Row], test_counts: tuple[int, int], val_fraction: float, seed: int
) -> dict[str, str]:
    """patient_id -> train | validation | test (whole patients, stratified by class)."""
    rng = np.random.default_rng(seed)
    groups = _groups(rows)
    order = list(groups)
    rng.shuffle(order)
    squashed_only = [pid for pid in order if all(r.upstream_resized for r in groups[pid])]
    taken: set[str] = set()
    split: dict[str, str] = {}
    for pid in order:  # the official val images always validate
        if any(r.split == "val" for r in groups[pid]):
            split[pid] = "validation"
            taken.add(pid)
    for cls, wanted in zip((NORMAL, PNEUMONIA), test_counts, strict=True):
        pool = [pid for pid in squashed_only if _label_of(groups[pid]) == cls]
        for pid in _take(pool, groups, wanted, taken):
            split[pid] = "test"
    for cls in (NORMAL, PNEUMONIA):
        n_cls = sum(len(g) for g in groups.values() if _label_of(g) == cls)
        pool = [pid for pid in squashed_only + order if _label_of(groups[pid]) == cls]
        for pid in _take(pool, groups, round(n_cls * val_fraction), taken):
            split[pid] = "validation"
    for pid in order:
        split.setdefault(pid, "train")
    return split


def _subsample(rows: list[_Row], limit: int, seed: int) -> list[_Row]:
    """About ``limit`` images, whole patients, keeping the class mix (for tests and dev)."""
    groups = _groups(rows)
    order = list(groups)
    np.random.default_rng(seed).shuffle(order)
    kept: list[_Row] = []
    for cls in (NORMAL, PNEUMONIA):
        share = sum(r.label == cls for r in rows) / len(rows)
        taken = _take(
            [p for p in order if _label_of(groups[p]) == cls], groups, round(limit * share), set()
        )
        kept += [r for pid in taken for r in groups[pid]]
    return kept


@dataclass(frozen=True)
class CrowdLabel:
    """One exported label: hard label, p(PNEUMONIA) and who made it (crowd | expert | gold)."""

    label: str
    p_pneumonia: float
    made_by: str


def read_crowd_export(export_dir: Path, name_of: dict[str, str]) -> dict[str, CrowdLabel]:
    """Source file name -> exported label, from a ``cxrlabel export`` folder's metadata.csv.

    An export names images by their public id only (``image_id``); ``name_of`` maps that id to
    the source file's name (e.g. from the job database's ``Image.source_path``). Kermany file
    names are unique, so the name alone identifies the image.
    """
    out: dict[str, CrowdLabel] = {}
    with (Path(export_dir) / "metadata.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            name = name_of.get(row["image_id"])
            if name is None:
                raise ValueError(f"export image {row['image_id']} is not in the job database")
            made_by = (
                "expert"
                if row.get("expert_reviewed", "").lower() == "true"
                else "gold"
                if row.get("is_gold", "").lower() == "true"
                else "crowd"
            )
            out[name] = CrowdLabel(row["label"], float(row["p_PNEUMONIA"]), made_by)
    return out


def _soft_label(label: str, noise: float, rng: np.random.Generator) -> tuple[str, float]:
    """(crowd label, p_PNEUMONIA): flipped with probability ``noise``, confidence 0.6-1.0."""
    if noise > 0 and rng.random() < noise:
        label = PNEUMONIA if label == NORMAL else NORMAL
    confidence = 1.0 if noise == 0 else float(rng.uniform(0.6, 1.0))
    return label, confidence if label == PNEUMONIA else 1.0 - confidence


def build_reference_dataset(
    manifest: Path,
    out_dir: Path,
    *,
    test_counts: tuple[int, int] = (234, 390),
    val_fraction: float = 0.15,
    seed: int = 0,
    label_noise: float = 0.0,
    limit: int | None = None,
    crowd: dict[str, CrowdLabel] | None = None,
    crowd_notes: str = "",
) -> dict[str, dict[str, int]]:
    """Write ``out_dir/{split}/{label}/<name>`` (symlinks to the shared JPEGs) + metadata.csv.

    ``label_noise`` > 0 turns the expert labels into crowd-like soft labels for the train
    split (flip rate and confidence as in ``_soft_label``); ``reference_label`` always keeps
    the expert label. Returns image counts per split and (expert) label.

    ``crowd`` (file name -> exported label, see ``read_crowd_export``) replaces the train and
    validation labels by the crowd's, with ``reference_label`` left empty there (the product
    has no expert label for them, so validation, calibration and thresholds use the crowd's
    labels too); images the crowd export lacks are left out (counted as ``unlabelled``). The
    splits are the same as without ``crowd``. ``crowd_notes`` (Markdown, e.g. the export's
    quality figures) goes into the README, where the model card quotes it.
    """
    manifest, out_dir = Path(manifest).resolve(), Path(out_dir)
    rows = [r for r in _read_manifest(manifest) if r.split in ("train", "val")]
    if limit:
        rows = _subsample(rows, limit, seed)
        scale = limit / 5206
        test_counts = (max(2, round(test_counts[0] * scale)), max(2, round(test_counts[1] * scale)))
    split_of = assign_splits(rows, test_counts, val_fraction, seed)
    rng = np.random.default_rng(seed + 1)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "metadata.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=METADATA_COLUMNS)
        writer.writeheader()
        for row in rows:
            split = split_of[row.patient_id]
            noise = label_noise if split == "train" else 0.0
            label, p = _soft_label(row.label, noise, rng)
            reference, reviewed = row.label, False
            if crowd is not None and split != "test":
                made = crowd.get(Path(row.file).name)
                if made is None:
                    counts["unlabelled"][row.label] += 1
                    continue
                label, p, reference = made.label, made.p_pneumonia, ""
                reviewed = made.made_by == "expert"
            source = manifest.parent / row.file
            rel = Path(split) / label / Path(row.file).name
            (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            if not (out_dir / rel).exists():
                os.symlink(source, out_dir / rel)
            writer.writerow(
                metadata_row(
                    rel.as_posix(),
                    label,
                    p,
                    split,
                    row.patient_id,
                    expert_reviewed=reviewed,
                    reference_label=reference,
                    upstream_resized=row.upstream_resized,
                )
            )
            counts[split][row.label] += 1
    _write_readme(out_dir, manifest, label_noise, seed, crowd is not None, crowd_notes)
    return {k: dict(v) for k, v in counts.items()}


def _write_readme(
    out_dir: Path, manifest: Path, label_noise: float, seed: int, crowd: bool, notes: str
) -> None:
    if crowd:
        title = "Kermany images, crowd labels"
        labels = (
            "Train and validation labels are **crowd-made**: the aggregate (or the "
            "expert's review, or the gold answer) of a `cxrlabel export`, soft "
            "`p_PNEUMONIA` included. Test labels are the dataset's expert labels."
        )
    elif label_noise:
        title = "Kermany images, expert labels made crowd-like"
        labels = (
            f"Train labels were made crowd-like: flipped with probability {label_noise}, "
            "soft confidence uniform in 0.6-1.0."
        )
    else:
        title = "Kermany images, expert labels"
        labels = "All labels are the dataset's expert labels (p_PNEUMONIA is 0 or 1)."
    (out_dir / "README.md").write_text(
        f"# Reference dataset ({title})\n\nBuilt by "
        f"`cxrlabel.model.reference.build_reference_dataset` from `{manifest}` (seed {seed}).\n\n"
        f"## Labels\n\n{labels}\n\n{notes.strip()}\n\n## Splits\n\n"
        "Whole patients (`personNNN` / `IM-XXXX`). "
        "`test` is a proxy for the official test set: patients whose images are all "
        "third-party 224 x 224 squashed copies, with that set's class mix. It comes from the "
        "training folders and is likely easier than the real test set.\n",
        encoding="utf-8",
    )
