"""The datasheet (``README.md``) written into every export, and source-data detection.

A datasheet says where the images come from, how the labels were made, how good they are, what
is known to be wrong with them, and under which license they may be used (after Gebru et al.,
"Datasheets for Datasets"). It starts with a small YAML block so the Hugging Face Hub shows the
license and task if the folder is uploaded as a dataset repository.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePath
from typing import Any

from cxrlabel.jobspec import JobSpec
from cxrlabel.results.typed import card_features

# Kermany/Kaggle file stems: person123_bacteria_456, IM-0001-0001, NORMAL2-IM-0123-0001.
KERMANY_NAME = re.compile(r"^(person\d+_(bacteria|virus)_\d+|(NORMAL2-)?IM-\d{4}-\d{4})$")

KERMANY_CITATION = """\
- Daniel S. Kermany, Michael Goldbaum, Wenjia Cai, et al. "Identifying Medical Diagnoses and
  Treatable Diseases by Image-Based Deep Learning." *Cell* 172(5):1122-1131.e9, 2018.
  doi:10.1016/j.cell.2018.02.010
- Kermany, Daniel; Zhang, Kang; Goldbaum, Michael (2018). "Labeled Optical Coherence Tomography
  (OCT) and Chest X-Ray Images for Classification." Mendeley Data, v2. doi:10.17632/rscbjbr9sj.2
"""

KERMANY_BIBTEX = """\
@article{kermany2018identifying,
  title   = {Identifying Medical Diagnoses and Treatable Diseases by Image-Based Deep Learning},
  author  = {Kermany, Daniel S. and Goldbaum, Michael and Cai, Wenjia and others},
  journal = {Cell}, volume = {172}, number = {5}, pages = {1122--1131.e9}, year = {2018},
  doi     = {10.1016/j.cell.2018.02.010}
}
@misc{kermany2018data,
  title  = {Labeled Optical Coherence Tomography (OCT) and Chest X-Ray Images for Classification},
  author = {Kermany, Daniel and Zhang, Kang and Goldbaum, Michael},
  year   = {2018}, publisher = {Mendeley Data}, version = {2}, doi = {10.17632/rscbjbr9sj.2}
}"""


# --- source detection --------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceFile:
    is_kermany: bool
    upstream_resized: bool | None  # from the source manifest when one is found


@lru_cache(maxsize=256)
def _manifest(root: str) -> dict[str, dict[str, str]] | None:
    """``file -> row`` of a Kermany-style ``manifest.csv`` in ``root``, or None."""
    path = Path(root) / "manifest.csv"
    readme = Path(root) / "README.md"
    try:
        if not path.is_file() or "kermany" not in readme.read_text(errors="ignore").lower():
            return None
        with path.open(newline="", encoding="utf-8") as fh:
            return {row["file"]: row for row in csv.DictReader(fh) if "file" in row}
    except OSError:
        return None


def describe_source_file(source_path: str) -> SourceFile:
    """Is this image from the Kermany data, and was it resized upstream (see its README)?

    Looks for a ``manifest.csv`` + README mentioning Kermany in the file's ancestor folders;
    falls back on the path or the Kermany file-name pattern (then resizing is unknown).
    """
    path = PurePath(source_path)
    for parent in list(path.parents)[:6]:
        rows = _manifest(str(parent))
        if rows is not None:
            row = rows.get(path.relative_to(parent).as_posix())
            if row is not None:
                flag = (row.get("upstream_resized") or "").strip().lower()
                resized = {"true": True, "false": False}.get(flag)
                return SourceFile(True, resized)
    named = "kermany" in source_path.lower() or bool(KERMANY_NAME.match(path.stem))
    return SourceFile(named, None)


# --- datasheet ---------------------------------------------------------------------------------


@dataclass
class DatasheetInput:
    job_name: str
    spec: JobSpec
    format: str
    created_at: str
    seed: int
    ratios: tuple[float, float, float]
    size: int | None
    min_confidence: float
    include_review: bool
    columns: list[str]
    records: list[dict[str, Any]]  # the exported table (one dict per image)
    skipped: Counter[str]
    failed: list[tuple[str, str]]  # (public id, reason)
    qa: dict[str, Any]  # cxrlabel.results.qa.qa_summary
    table_files: list[str] = field(default_factory=list)


def render_datasheet(d: DatasheetInput) -> str:
    kermany = sum(1 for r in d.records if r["_kermany"])
    all_kermany = bool(d.records) and kermany == len(d.records)
    parts = [
        _front_matter(all_kermany, d.job_name, card_features(d.columns, d.spec.label_values)),
        f"# Dataset: {d.spec.title}\n",
        f"Exported by cxrlabel from job `{d.job_name}` on {d.created_at} (format "
        f"`{d.format}`). {len(d.records)} images, labels NORMAL vs PNEUMONIA from pediatric "
        "chest X-rays, labelled by non-expert annotators with quality control, with expert "
        "review of uncertain images.\n",
        "> **Not a diagnostic device.** These labels come from a crowd with radiologist review "
        "of a minority of images. A model trained on them is a triage aid at most.\n",
        _section_source(d, kermany, all_kermany),
        _section_process(d),
        _section_qa(d),
        _section_distribution(d),
        _section_files(d),
        _section_limitations(d, kermany),
        _section_license(kermany, all_kermany),
    ]
    return "\n".join(parts)


def _front_matter(all_kermany: bool, job_name: str, features: list[dict[str, Any]]) -> str:
    """The dataset card's YAML header; the features (JSON is valid YAML) are what
    ``load_dataset(DIR)`` and the Hub use, the same as the per-split Parquet files carry."""
    license_id = "cc-by-4.0" if all_kermany else "other"
    return (
        "---\n"
        f"license: {license_id}\n"
        "task_categories:\n- image-classification\n"
        "tags:\n- medical\n- chest-x-ray\n- crowdsourcing\n"
        f"pretty_name: cxrlabel export of {job_name}\n"
        f"dataset_info:\n  features: {json.dumps(features)}\n"
        "---\n"
    )


def _section_source(d: DatasheetInput, kermany: int, all_kermany: bool) -> str:
    lines = ["## Source data\n"]
    if kermany:
        share = "All" if all_kermany else f"{kermany} of {len(d.records)}"
        lines.append(
            f"{share} images come from the Kermany et al. (2018) pediatric chest X-ray data "
            "(Guangzhou Women and Children's Medical Center, patients aged one to five), via "
            'the Kaggle redistribution "chest-xray-pneumonia". The copy used here was '
            "converted to grayscale and downscaled; many images were resized to 224x224 by a "
            "third party before that (column `source_upstream_resized`).\n"
        )
    if not all_kermany:
        lines.append(
            f"{len(d.records) - kermany} images come from a source cxrlabel does not "
            "recognise; ask the data owner for its provenance.\n"
        )
    lines.append(
        "Identifying DICOM metadata was removed at ingest; `patient_id` is the "
        "pseudonymous grouping key assigned at ingest, never a DICOM identifier. "
        "Images are re-encoded as PNG renditions"
        + (f" whose longest side is at most {d.size} px" if d.size else "")
        + ".\n"
    )
    return "\n".join(lines)


def _section_process(d: DatasheetInput) -> str:
    s = d.spec
    return (
        "## Labeling process\n\n"
        f'- Question: "{s.question.prompt}" with answers '
        f"{', '.join(s.label_values)}, a certainty ({', '.join(s.certainty_values)}) and an "
        "optional image-quality flag.\n"
        f"- Annotators are non-experts who first pass a quiz of {s.gold.quiz_length} gold "
        f"questions (at least {s.gold.min_accuracy:.0%} right). Hidden gold questions "
        f"({s.gold.per_page} per page of {s.pages.items_per_page}) keep measuring each "
        "annotator's trust; annotators whose trust drops are removed and their judgments "
        "are tainted (excluded); pages answered faster than "
        f"{s.pages.min_seconds_per_page:g} s count as speed-trap trips.\n"
        f"- Each image gets {s.judgments.min} to {s.judgments.max} trusted judgments: more are "
        f"asked while the confidence is below {s.judgments.confidence_target:g}.\n"
        f"- Labels are aggregated with method `{s.aggregation.method}`; `p_<label>` columns are "
        "the class probabilities (soft labels) and `confidence` the probability of the label.\n"
        "- Images where annotators disagree or cannot tell go to a radiologist; the expert's "
        "label overrides the crowd (`expert_reviewed = true`, `confidence = 1.0`, one-hot "
        "`p_<label>`; the crowd's own label stays in `crowd_label`/`crowd_confidence`).\n"
        "- Gold (test-question) images are exported with their accepted answer "
        "(`is_gold = true`, `confidence = 1.0`).\n"
    )


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x:.1%}" if pct else f"{x:.3f}" if isinstance(x, float) else str(x)


def _section_qa(d: DatasheetInput) -> str:
    q = d.qa
    by_state = q["annotators_by_state"]
    rows = [
        (
            "judgments (all / tainted / on gold)",
            f"{q['judgments']} / {q['judgments_tainted']} / {q['judgments_gold']}",
        ),
        (
            "annotators (active / removed / total)",
            f"{by_state.get('active', 0)} / {by_state.get('removed', 0)} / {q['annotators']}",
        ),
        (
            "gold accuracy (graded gold answers)",
            f"{_fmt(q['gold_accuracy'], True)} (n={q['gold_graded']})",
        ),
        ("Krippendorff's alpha (nominal)", _fmt(q["krippendorff_alpha"])),
        ("Fleiss' kappa", _fmt(q["fleiss_kappa"])),
        ("mean confidence of crowd labels", _fmt(q["mean_confidence"])),
        (
            "agreement with the source's reference labels",
            f"{_fmt(q['reference_agreement'], True)} (n={q['reference_compared']})",
        ),
        (
            "crowd agreement with expert labels",
            f"{_fmt(q['expert_agreement'], True)} (n={q['expert_compared']})",
        ),
        ("images still in the expert review queue", str(q["review_queue"])),
    ]
    for name, c in q["calibration"].items():
        rows.append((f"expected calibration error, {name}", f"{_fmt(c['ece'])} (n={c['n']})"))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (
        "## Quality figures (whole job, at export time)\n\n| measure | value |\n| --- | --- |\n"
        f"{table}\n\n`cxrlabel report qa -o qa.html` draws these as plots.\n"
    )


def _section_distribution(d: DatasheetInput) -> str:
    labels = d.spec.label_values
    splits = ["train", "validation", "test"]
    by = Counter((r["split"], r["label"]) for r in d.records)
    header = "| split | " + " | ".join(labels) + " | total | patients |\n"
    header += "| --- |" + " ---: |" * (len(labels) + 2) + "\n"
    body = ""
    for split in splits:
        recs = [r for r in d.records if r["split"] == split]
        patients = len({r["_group"] for r in recs})
        body += (
            f"| {split} | "
            + " | ".join(str(by[(split, lab)]) for lab in labels)
            + f" | {len(recs)} | {patients} |\n"
        )
    body += (
        "| all | "
        + " | ".join(str(sum(by[(s, lab)] for s in splits)) for lab in labels)
        + f" | {len(d.records)} | {len({r['_group'] for r in d.records})} |\n"
    )
    kinds = Counter(
        "expert"
        if r["expert_reviewed"]
        else "gold"
        if r["is_gold"]
        else "needs review (crowd)"
        if r["needs_review"]
        else "crowd"
        for r in d.records
    )
    bins = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0]
    conf_rows = ""
    crowd = [r["confidence"] for r in d.records if not r["expert_reviewed"] and not r["is_gold"]]
    for lo, hi in zip(bins, bins[1:], strict=False):
        n = sum(1 for c in crowd if lo <= c < hi or (hi == 1.0 and c == 1.0))
        conf_rows += f"| [{lo:g}, {hi:g}{']' if hi == 1.0 else ')'} | {n} |\n"
    below = sum(1 for c in crowd if c < 0.5)
    if below:
        conf_rows += f"| below 0.5 | {below} |\n"
    ratios = ", ".join(f"{s} {r:g}" for s, r in zip(splits, d.ratios, strict=True))
    return (
        "## Splits and label distribution\n\n"
        f"Patient-aware, label-stratified split (ratios {ratios}; seed {d.seed}): all images of "
        "one patient are in the same split; images without a patient id are their own group. "
        "Groups are assigned greedily, largest first, to keep label ratios close to the whole "
        "dataset's.\n\n"
        + header
        + body
        + "\nWhere labels come from: "
        + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
        + ".\n\n### Confidence of crowd labels\n\n| confidence | images |\n| --- | ---: |\n"
        + conf_rows
        + "\n"
        f"Selection: `--min-confidence {d.min_confidence:g}`; images needing review were "
        + ("included (flag `needs_review`)" if d.include_review else "left out")
        + ". Left out: "
        + (", ".join(f"{n} {why}" for why, n in sorted(d.skipped.items())) or "none")
        + ".\n"
        + (
            "".join(f"\n- could not export `{pid}`: {why}" for pid, why in d.failed[:50])
            + ("\n" if d.failed else "")
        )
    )


def _section_files(d: DatasheetInput) -> str:
    typed = any(t.endswith("/metadata.parquet") for t in d.table_files)
    per_split = (
        "one typed `metadata.parquet` per split folder (same columns, `label` a `ClassLabel`"
        if typed
        else "one `metadata.csv` per split folder (pyarrow was not installed: a column "
        "empty in one split only may stop `datasets` from loading it; export again "
        "after `pip install 'cxrlabel[parquet]'`"
    )
    layout = (
        "`{train,validation,test}/<label>/<image id>.png`; `metadata.csv` at the root "
        f"(`file_name` relative to this folder) and {per_split}; `file_name` relative to "
        "that split folder, as the Hugging Face `imagefolder` loader wants)"
    )
    if "source" in d.columns:
        layout += (
            ". The `source` column names each image's original file or DICOM "
            "study/instance: keep it with the data owner (`cxrlabel export "
            "--no-source` writes a copy without it)"
        )
    tables = ", ".join(f"`{t}`" for t in d.table_files)
    return (
        "## Files and columns\n\n"
        f"Images: {layout}. Label tables: {tables}.\n\n"
        "Columns: " + ", ".join(f"`{c}`" for c in d.columns) + ". See docs/results.md in "
        "cxrlabel for their meaning.\n\n"
        "```python\n"
        "from datasets import load_dataset           # Hugging Face datasets\n"
        'ds = load_dataset("imagefolder", data_dir="THIS_FOLDER")\n'
        "import pandas as pd\n"
        'meta = pd.read_csv("THIS_FOLDER/metadata.csv")  # file_name relative to THIS_FOLDER\n'
        "```\n"
    )


def _section_limitations(d: DatasheetInput, kermany: int) -> str:
    items = [
        "Labels are crowd judgments with expert review of a minority; they contain noise. "
        "Use the soft labels (`p_<label>`) and `confidence` rather than treating every label "
        "as certain.",
        "Images needing review were "
        + (
            "included: their labels are the least reliable (`needs_review = true`)."
            if d.include_review
            else "left out, so the hardest images are under-represented."
        ),
        "The gold images were chosen as clear teaching examples and are easier than average.",
    ]
    if kermany:
        items += [
            "Kermany: one hospital, children aged one to five; prevalence (about 74 % "
            "PNEUMONIA in its train split) does not match other settings.",
            "Kermany: most images were squashed to 224x224 by a third party before this copy "
            "(aspect ratio lost; `source_upstream_resized = true`).",
            "Kermany: `personNNN` patient ids of the bacteria and virus series are numbered "
            "independently, so one id may merge two children; grouping by it is conservative "
            "(never splits one child across splits) but may merge unrelated images.",
            "Kermany: the source data contains a few identical images under different names; "
            "ingest removes exact and near duplicates, but check before reporting test scores.",
        ]
    return "## Known limitations\n\n" + "\n".join(f"- {i}" for i in items) + "\n"


def _section_license(kermany: int, all_kermany: bool) -> str:
    text = "## License and citation\n\n"
    if kermany:
        text += (
            "Kermany images: Creative Commons Attribution 4.0 International (CC BY 4.0). "
            "The images were modified (grayscale, downscaled, re-encoded as PNG). If you "
            "use them, cite:\n\n"
            + KERMANY_CITATION
            + "\n```bibtex\n"
            + KERMANY_BIBTEX
            + "\n```\n\n"
        )
    if not all_kermany:
        text += (
            "Images from other sources: the license is the data owner's; do not "
            "redistribute them without the owner's permission.\n\n"
        )
    text += (
        "The labels were produced with cxrlabel (Apache-2.0); cite the source data above "
        "and describe the crowd labeling when you publish results.\n"
    )
    return text
