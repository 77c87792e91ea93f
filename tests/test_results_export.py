"""Dataset export: selection, labels, patient-aware splits, formats, loading with HF datasets
and pandas, and the datasheet."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image as PILImage
from sqlalchemy import select
from typer.testing import CliRunner

from cxrlabel.cli import app
from cxrlabel.context import get_job
from cxrlabel.results.export import ExportError, ExportOptions, run_export
from cxrlabel.results.splits import SplitError, assign_splits, parse_ratios
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import Image, Job
from results_fixture import build_job, pub, write_rendition

CONTRACT = [
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
]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory):
    data_dir = tmp_path_factory.mktemp("export-small")
    db = Database(f"sqlite:///{data_dir / 'cxrlabel.sqlite3'}")
    with db.session() as s:
        build_job(s, data_dir)
    yield db, data_dir
    db.dispose()


def _export(db: Database, data_dir: Path, out: Path, **options) -> object:
    with db.session() as s:
        job = s.scalar(select(Job))
        _, spec = get_job(s, job.name)
        return run_export(s, job, spec, out, data_dir, ExportOptions(**options))


# --- splits (pure) -----------------------------------------------------------------------------


def _random_groups(seed: int, n_patients: int = 400) -> dict[str, list[str]]:
    rng = random.Random(seed)
    groups = {}
    for p in range(n_patients):
        label = "NORMAL" if rng.random() < 0.27 else "PNEUMONIA"
        groups[f"p{p}"] = [label] * rng.choice([1, 1, 1, 2, 2, 3, 5, 8])
    return groups


@pytest.mark.parametrize("ratios", [(0.8, 0.1, 0.1), (0.7, 0.15, 0.15), (0.6, 0.4, 0.0)])
def test_splits_hit_ratios_and_label_balance(ratios) -> None:
    groups = _random_groups(1)
    result = assign_splits(groups, ratios, seed=3)
    assert set(result.split_of_group) == set(groups)  # every patient in exactly one split
    total = sum(len(v) for v in groups.values())
    overall_normal = sum(v.count("NORMAL") for v in groups.values()) / total
    for name, ratio in zip(("train", "validation", "test"), ratios, strict=True):
        size = result.sizes()[name]
        assert abs(size / total - ratio) < 0.02, (name, size / total, ratio)
        if ratio:
            share = result.counts[name]["NORMAL"] / size
            assert abs(share - overall_normal) < 0.03, (name, share, overall_normal)
    assert result.sizes()["test"] == 0 if ratios[2] == 0 else result.sizes()["test"] > 0


def test_splits_seedable_and_order_independent() -> None:
    groups = _random_groups(2, 200)
    a = assign_splits(groups, seed=7).split_of_group
    shuffled = dict(sorted(groups.items(), reverse=True))
    assert assign_splits(shuffled, seed=7).split_of_group == a
    assert assign_splits(groups, seed=8).split_of_group != a


def test_small_dataset_still_fills_every_split() -> None:
    groups = {"a": ["N", "N"], "b": ["P"], "c": ["N"], "d": ["P"], "e": ["P"]}
    sizes = assign_splits(groups, (0.6, 0.2, 0.2), seed=0).sizes()
    assert all(sizes[s] >= 1 for s in sizes) and sum(sizes.values()) == 6


@pytest.mark.parametrize(
    "text, message",
    [
        ("0.8,0.2", "three numbers"),
        ("0.8,0.1,x", "must be numbers"),
        ("0.8,0.3,0.1", "sum to 1"),
        ("1.2,-0.1,-0.1", "non-negative"),
        ("0,0.5,0.5", "train"),
    ],
)
def test_bad_ratios_are_clear(text: str, message: str) -> None:
    with pytest.raises(SplitError, match=message):
        parse_ratios(text)


# --- selection and labels ----------------------------------------------------------------------


def test_export_selection_and_labels(small, tmp_path: Path) -> None:
    db, data_dir = small
    result = _export(db, data_dir, tmp_path / "out", size=128)
    meta = pd.read_csv(tmp_path / "out" / "metadata.csv")
    assert list(meta.columns[:10]) == CONTRACT
    rows = meta.set_index("image_id").to_dict("index")
    # finalised w1 w2 w6, expert w4, gold g1 g2; not w3 (review) nor w5 (unlabelled)
    assert set(rows) == {pub(k) for k in ("w1", "w2", "w4", "w6", "g1", "g2")}
    assert result.skipped == Counter({"needing expert review (use --include-review)": 1})
    w4 = rows[pub("w4")]  # the expert said PNEUMONIA; the crowd (recomputed) NORMAL
    assert (w4["label"], w4["confidence"], w4["p_PNEUMONIA"], w4["expert_reviewed"]) == (
        "PNEUMONIA",
        1.0,
        1.0,
        True,
    )
    assert (w4["crowd_label"], w4["crowd_confidence"]) == ("NORMAL", 1.0)
    assert w4["file_name"].endswith("/PNEUMONIA/img-w4.png")
    w1 = rows[pub("w1")]
    assert (w1["label"], w1["confidence"], w1["p_NORMAL"], w1["p_PNEUMONIA"]) == (
        "PNEUMONIA",
        0.95,
        0.05,
        0.95,
    )
    # source_upstream_resized comes from the Kermany manifest; unknown elsewhere
    assert (w1["source_upstream_resized"], rows[pub("w2")]["source_upstream_resized"]) == (
        True,
        False,
    )
    assert pd.isna(rows[pub("w6")]["source_upstream_resized"])
    g1 = rows[pub("g1")]
    assert (g1["is_gold"], g1["label"], g1["confidence"]) == (True, "PNEUMONIA", 1.0)
    assert not w1["is_gold"] and not w1["needs_review"]
    # images are PNG, downscaled so the longest side is 128 (never upscaled)
    for row in rows.values():
        with PILImage.open(tmp_path / "out" / row["file_name"]) as img:
            assert img.format == "PNG" and img.size == (row["width"], row["height"])
            assert max(img.size) <= 128
    assert (rows[pub("w1")]["width"], rows[pub("w1")]["height"]) == (128, 102)  # 300x240
    assert (rows[pub("g2")]["width"], rows[pub("g2")]["height"]) == (100, 80)  # kept
    # the same patient (P1: w1, w2) is in one split
    assert rows[pub("w1")]["split"] == rows[pub("w2")]["split"]
    assert "patient_id" in meta and "source_path" not in meta and "sha256" not in meta
    # ``source``: the original path (a DICOM whose file is gone falls back on its path too)
    assert rows[pub("w2")]["source"].endswith("/kermany/images/train/NORMAL/IM-0001-0001.jpeg")
    assert rows[pub("w6")]["source"] == "/uploads/scan-0006.dcm"


def test_include_review_and_min_confidence(small, tmp_path: Path) -> None:
    db, data_dir = small
    result = _export(db, data_dir, tmp_path / "a", include_review=True, min_confidence=0.8)
    by_id = {r["image_id"]: r for r in result.records}
    assert pub("w3") not in by_id  # needs review but 0.55 < 0.8
    assert pub("w6") not in by_id  # 0.7 < 0.8
    assert pub("w4") in by_id  # expert labels ignore --min-confidence
    assert result.skipped == Counter({"below --min-confidence": 2})
    result = _export(db, data_dir, tmp_path / "b", include_review=True)
    w3 = next(r for r in result.records if r["image_id"] == pub("w3"))
    assert (w3["needs_review"], w3["label"], w3["confidence"]) == (True, "PNEUMONIA", 0.55)


def test_output_folder_never_clobbered_and_missing_rendition(small, tmp_path: Path) -> None:
    db, data_dir = small
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        _export(db, data_dir, out)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(ExportError, match="--size"):
        _export(db, data_dir, tmp_path / "x", size=2)
    # a missing rendition is reported and skipped, the rest is exported
    with db.session() as s:
        image = s.scalar(select(Image).where(Image.public_id == pub("w6")))
        image.rendition_path = "renditions/gone.jpg"
    try:
        result = _export(db, data_dir, out, overwrite=True)
    finally:
        with db.session() as s:
            image = s.scalar(select(Image).where(Image.public_id == pub("w6")))
            image.rendition_path = f"renditions/{pub('w6')}.jpg"
    assert result.failed == [(pub("w6"), "rendition file missing")]
    assert not (out / "keep.txt").exists() and len(result.records) == 5
    assert "could not export `img-w6`" in (out / "README.md").read_text()
    assert not list(tmp_path.glob(".out.*"))  # no temporary folders left behind


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_table_formats_match_metadata(small, tmp_path: Path, fmt: str) -> None:
    db, data_dir = small
    _export(db, data_dir, tmp_path / fmt, format=fmt)
    meta = pd.read_csv(tmp_path / fmt / "metadata.csv")
    table = {
        "csv": lambda p: pd.read_csv(p),
        "jsonl": lambda p: pd.read_json(p, lines=True),
        "parquet": pd.read_parquet,
    }[fmt](tmp_path / fmt / f"labels.{fmt}")
    assert list(table.columns) == list(meta.columns)
    assert table["file_name"].tolist() == meta["file_name"].tolist()
    assert table["label"].tolist() == meta["label"].tolist()
    assert all((tmp_path / fmt / f).is_file() for f in table["file_name"])
    if fmt == "jsonl":
        first = json.loads((tmp_path / fmt / "labels.jsonl").read_text().splitlines()[0])
        assert isinstance(first["expert_reviewed"], bool)


def test_datasheet_contents(small, tmp_path: Path) -> None:
    db, data_dir = small
    _export(db, data_dir, tmp_path / "out")
    sheet = (tmp_path / "out" / "README.md").read_text()
    assert sheet.startswith("---\nlicense: other\n")  # mixed sources: not all CC BY 4.0
    assert "CC BY 4.0" in sheet and "doi:10.1016/j.cell.2018.02.010" in sheet
    assert "doi:10.17632/rscbjbr9sj.2" in sheet and "the license is the data owner's" in sheet
    assert "4 of 6 images come from the Kermany" in sheet
    assert "| Krippendorff's alpha (nominal) | 0.250 |" in sheet
    assert "| gold accuracy (graded gold answers) | 50.0% (n=6) |" in sheet
    assert "| images still in the expert review queue | 1 |" in sheet
    assert (
        "Known limitations" in sheet
        and "Where labels come from: crowd 3, expert 1, gold 2" in sheet
    )


# --- a bigger job: splits in the real export, HF datasets, pandas, PyTorch-style loading -------


@pytest.fixture(scope="module")
def bulk(tmp_path_factory: pytest.TempPathFactory):
    """120 images of 45 patients (1-5 images each), all finalised, ~30 % NORMAL; only
    some images carry a reference label, so a split may have none."""
    data_dir = tmp_path_factory.mktemp("export-bulk")
    db = Database(f"sqlite:///{data_dir / 'cxrlabel.sqlite3'}")
    rng = random.Random(5)
    with db.session() as s:
        job, _ = get_job(s, None)
        n = 0
        for p in range(45):
            label = "NORMAL" if rng.random() < 0.3 else "PNEUMONIA"
            for _ in range(rng.choice([1, 2, 3, 4, 5])):
                rendition = f"renditions/b{n}.jpg"
                write_rendition(data_dir / rendition, (40, 32), "L", shade=n)
                conf = round(rng.uniform(0.6, 1.0), 3)
                s.add(
                    Image(
                        job_id=job.id,
                        public_id=f"b{n:04d}",
                        source_path=f"/x/{n}.png",
                        source_format="png",
                        sha256=f"{n:064d}",
                        pixel_sha256=f"{n:064d}",
                        phash="0" * 16,
                        width=40,
                        height=32,
                        patient_id=f"pat{p}",
                        reference_label=label if n % 7 == 0 else None,
                        rendition_path=rendition,
                        thumb_path=rendition,
                        status="finalised",
                        label=label,
                        confidence=conf,
                        aggregation_method="ds",
                        proba={
                            label: conf,
                            ("PNEUMONIA" if label == "NORMAL" else "NORMAL"): round(1 - conf, 3),
                        },
                    )
                )
                n += 1
    out = data_dir / "export"
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "--data-dir",
            str(data_dir),
            "export",
            "-o",
            str(out),
            "--seed",
            "11",
            "--ratios",
            "0.7,0.15,0.15",
        ],
    )
    assert result.exit_code == 0, result.output
    yield out, n
    db.dispose()


def test_bulk_export_patient_aware_and_near_ratios(bulk) -> None:
    out, n = bulk
    meta = pd.read_csv(out / "metadata.csv")
    assert len(meta) == n
    assert meta.groupby("patient_id")["split"].nunique().max() == 1  # no patient in two splits
    shares = meta["split"].value_counts(normalize=True)
    for split, ratio in (("train", 0.7), ("validation", 0.15), ("test", 0.15)):
        assert abs(shares[split] - ratio) < 0.06, shares.to_dict()
    overall = (meta["label"] == "NORMAL").mean()
    for split, group in meta.groupby("split"):
        assert abs((group["label"] == "NORMAL").mean() - overall) < 0.12, split
    # every file_name is relative to the export folder and exists
    assert all((out / f).is_file() for f in meta["file_name"])
    # per-split metadata.parquet: file_name relative to the split folder, same rows
    for split, group in meta.groupby("split"):
        per = pd.read_parquet(out / split / "metadata.parquet")
        assert sorted(split + "/" + per["file_name"]) == sorted(group["file_name"])
        assert not (out / split / "metadata.csv").exists()  # one format per folder (HF rule)


def test_bulk_export_loads_with_hf_datasets(bulk) -> None:
    datasets = pytest.importorskip("datasets")
    out, n = bulk
    ds = datasets.load_dataset("imagefolder", data_dir=str(out))
    assert set(ds) == {"train", "validation", "test"}
    assert sum(ds[s].num_rows for s in ds) == n
    meta = pd.read_csv(out / "metadata.csv")
    label = ds["train"].features["label"]
    assert isinstance(label, datasets.ClassLabel) and label.names == ["NORMAL", "PNEUMONIA"]
    for split in ds:
        assert ds[split].num_rows == (meta["split"] == split).sum()
        assert ds[split].features == ds["train"].features
        row = ds[split][0]
        assert row["image"].size == (40, 32)
        assert label.int2str(row["label"]) in ("NORMAL", "PNEUMONIA") and row["split"] == split
        assert {"confidence", "p_NORMAL", "patient_id", "expert_reviewed", "source"} <= set(row)
    # the image and its metadata row belong together (label matches the folder name)
    train = ds["train"].select(range(min(10, ds["train"].num_rows)))
    by_id = meta.set_index("image_id")
    for row in train:
        assert by_id.loc[row["image_id"], "label"] == label.int2str(row["label"])
        assert by_id.loc[row["image_id"], "source"] == row["source"]


def test_bulk_export_torch_style_loading(bulk) -> None:
    """What the model code does: read metadata.csv and open file_name relative to the folder."""
    out, _ = bulk
    meta = pd.read_csv(out / "metadata.csv")
    train = meta[meta["split"] == "train"]
    classes = sorted(meta["label"].unique())
    first = train.iloc[0]
    with PILImage.open(out / first["file_name"]) as img:
        assert img.mode == "L" and img.size == (40, 32)
    assert classes == ["NORMAL", "PNEUMONIA"]
    assert ((train["p_NORMAL"] + train["p_PNEUMONIA"]).round(6) == 1.0).all()


# --- a 16-image job whose splits differ in which columns are empty (issue 19) ------------------


def _sixteen_image_job(data_dir: Path) -> None:
    """16 images of 8 patients: 3 gold (no crowd label, no aggregation method), one reference
    label, one image from a real DICOM file with known UIDs; the rest crowd-labelled."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    from cxrlabel.storage.models import GoldItem

    dcm = data_dir / "hospital" / "dx-0001.dcm"
    dcm.parent.mkdir(parents=True)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID, ds.SOPInstanceUID = "1.2.3.4.5.6", "1.2.3.4.5.6.7"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    pydicom.dcmwrite(dcm, ds, enforce_file_format=True)
    db = Database(f"sqlite:///{data_dir / 'cxrlabel.sqlite3'}")
    with db.session() as s:
        job, _ = get_job(s, None)
        for n in range(16):
            label = "NORMAL" if n % 3 == 0 else "PNEUMONIA"
            gold = n in (2, 5, 11)
            rendition = f"renditions/s{n}.jpg"
            write_rendition(data_dir / rendition, (48, 40), "L", shade=9 * n)
            image = Image(
                job_id=job.id,
                public_id=f"s{n:04d}",
                source_path=str(dcm) if n == 7 else f"/hospital/export/{n}.png",
                source_format="dicom" if n == 7 else "png",
                sha256=f"{n:064d}",
                pixel_sha256=f"{n:064d}",
                phash="0" * 16,
                width=48,
                height=40,
                patient_id=f"pat{n // 2}",
                reference_label=label if n == 0 else None,
                rendition_path=rendition,
                thumb_path=rendition,
                status="gold" if gold else "finalised",
                label=None if gold else label,
                confidence=None if gold else 0.9,
                trusted_judgments=0 if gold else 3,
                aggregation_method=None if gold else "ds",
                proba=None
                if gold
                else {label: 0.9, ("PNEUMONIA" if label == "NORMAL" else "NORMAL"): 0.1},
            )
            s.add(image)
            s.flush()
            if gold:
                s.add(GoldItem(job_id=job.id, image_id=image.id, accepted_answers=[label]))
    db.dispose()


@pytest.fixture(scope="module")
def sixteen(tmp_path_factory: pytest.TempPathFactory):
    data_dir = tmp_path_factory.mktemp("export-16")
    _sixteen_image_job(data_dir)
    return data_dir


def _cli_export(data_dir: Path, out: Path, *extra: str) -> None:
    result = CliRunner().invoke(
        app, ["--data-dir", str(data_dir), "export", "-o", str(out), "--seed", "3", *extra]
    )
    assert result.exit_code == 0, result.output


def _columns_empty_in_some_split_only(meta: pd.DataFrame) -> set[str]:
    empty = {
        c
        for c in meta.columns
        if any(g[c].isna().all() for _s, g in meta.groupby("split")) and not meta[c].isna().all()
    }
    return empty


def test_sixteen_image_export_loads_unchanged_in_hf_datasets(sixteen, tmp_path: Path) -> None:
    """The failure of issue 19: an empty column in one split made the splits' schemas differ
    (string vs float64) and `label` was a plain string."""
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "export"
    _cli_export(sixteen, out)
    meta = pd.read_csv(out / "metadata.csv")
    assert len(meta) == 16 and set(meta["split"]) == {"train", "validation", "test"}
    # the case that used to fail is really there: a text column empty in one split only
    assert {
        "reference_label",
        "crowd_label",
        "aggregation_method",
    } & _columns_empty_in_some_split_only(meta)
    for loaded in (
        datasets.load_dataset("imagefolder", data_dir=str(out)),
        datasets.load_dataset(str(out)),
    ):  # the latter reads the dataset card
        assert set(loaded) == {"train", "validation", "test"}
        features = loaded["train"].features
        assert isinstance(features["label"], datasets.ClassLabel)
        assert features["label"].names == ["NORMAL", "PNEUMONIA"]
        assert features["crowd_label"] == datasets.Value("string")
        assert features["reference_label"] == datasets.Value("string")
        assert features["trusted_judgments"] == datasets.Value("int64")
        assert all(loaded[s].features == features for s in loaded)
        assert sum(loaded[s].num_rows for s in loaded) == 16
        rows = {r["image_id"]: r for s in loaded for r in loaded[s]}
        assert rows["s0007"]["source"] == "dicom:1.2.3.4.5.6/1.2.3.4.5.6.7"
        assert rows["s0003"]["source"] == "/hospital/export/3.png"
        assert rows["s0002"]["crowd_label"] is None and rows["s0002"]["is_gold"] is True
        assert features["label"].int2str(rows["s0003"]["label"]) == "NORMAL"
    card = (out / "README.md").read_text()
    assert "dataset_info:" in card and '"class_label"' in card


def test_sixteen_image_export_loads_in_pandas_and_pyarrow(sixteen, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "export"
    _cli_export(sixteen, out, "--format", "parquet")
    table = pq.read_table(out / "labels.parquet")
    assert table.schema.field("crowd_label").type == "string"
    assert table.schema.field("expert_reviewed").type == "bool"
    frame = table.to_pandas()
    meta = pd.read_csv(out / "metadata.csv")
    assert frame["label"].tolist() == meta["label"].tolist()  # names, as in metadata.csv
    assert frame.set_index("image_id").loc["s0007", "source"] == "dicom:1.2.3.4.5.6/1.2.3.4.5.6.7"
    for split in ("train", "validation", "test"):  # per-split files share one schema
        assert (
            pq.read_schema(out / split / "metadata.parquet").remove_metadata()
            == pq.read_schema(out / "train" / "metadata.parquet").remove_metadata()
        )


def test_export_without_pyarrow_keeps_csv_and_says_so(
    sixteen, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cxrlabel.results import export

    monkeypatch.setattr(export, "have_pyarrow", lambda: False)  # as on a bare install
    out = tmp_path / "export"
    _cli_export(sixteen, out)
    assert (out / "train" / "metadata.csv").is_file()
    assert not list(out.glob("*/metadata.parquet"))
    assert "pip install 'cxrlabel[parquet]'" in (out / "README.md").read_text()


def test_reports_name_the_source(sixteen) -> None:
    from cxrlabel.results.reports import build_report

    db = Database(f"sqlite:///{sixteen / 'cxrlabel.sqlite3'}")
    try:
        with db.session() as s:
            job, spec = get_job(s, None)
            aggregated = build_report("aggregated", s, job, spec)
    finally:
        db.dispose()
    sources = dict(zip(aggregated.column("image"), aggregated.column("source"), strict=True))
    assert sources["s0007"] == "dicom:1.2.3.4.5.6/1.2.3.4.5.6.7"
    assert sources["s0000"] == "/hospital/export/0.png"


def test_source_of_a_dicomweb_instance_and_a_missing_dicom() -> None:
    from types import SimpleNamespace

    from cxrlabel.results.sources import SourceNamer

    namer = SourceNamer()
    url = "dicomweb+http://pacs:8042/dicom-web/studies/1.2.3/series/1.2.3.1/instances/1.2.3.1.7"
    assert namer(SimpleNamespace(source_path=url, source_format="dicom")) == "dicom:1.2.3/1.2.3.1.7"
    gone = SimpleNamespace(source_path="/no/such/file.dcm", source_format="dicom")
    assert namer(gone) == "/no/such/file.dcm"  # the header cannot be read: the path


def test_no_source_leaves_the_column_out_everywhere(sixteen, tmp_path: Path) -> None:
    out = tmp_path / "shared-copy"
    _cli_export(sixteen, out, "--no-source", "--format", "jsonl")
    meta = pd.read_csv(out / "metadata.csv")
    assert "source" not in meta and "image_id" in meta
    text = "".join(
        p.read_text(errors="ignore")
        for p in out.rglob("*")
        if p.is_file() and p.suffix in (".csv", ".jsonl", ".md")
    )
    text += "".join(pd.read_parquet(p).to_csv() for p in out.glob("*/metadata.parquet"))
    assert "/hospital/" not in text and "dicom:1.2.3" not in text
