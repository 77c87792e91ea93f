"""The reference dataset builder used by the model benchmark (real Kermany manifest)."""

from __future__ import annotations

import csv
from collections import defaultdict

import pytest

from cxrlabel.model.data import read_export
from cxrlabel.model.reference import (
    METADATA_COLUMNS,
    CrowdLabel,
    build_reference_dataset,
    read_crowd_export,
)


def test_reference_dataset_is_patient_grouped_with_a_squashed_test_split(shared_data, tmp_path):
    manifest = shared_data / "kermany" / "manifest.csv"
    counts = build_reference_dataset(manifest, tmp_path / "ds", limit=400, seed=1)
    assert set(counts) == {"train", "validation", "test"}
    with (tmp_path / "ds" / "metadata.csv").open() as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == METADATA_COLUMNS
        rows = list(reader)
    splits_of = defaultdict(set)
    for row in rows:
        splits_of[row["patient_id"]].add(row["split"])
        assert (tmp_path / "ds" / row["file_name"]).is_file()
        if row["split"] == "test":
            assert row["source_upstream_resized"] == "true"
        assert row["p_PNEUMONIA"] == (
            "1.0000" if row["reference_label"] == "PNEUMONIA" else "0.0000"
        )
    assert all(len(s) == 1 for s in splits_of.values()), "a patient crosses splits"
    examples = read_export(tmp_path / "ds")
    assert {e.evaluation_target for e in examples if e.split == "test"} == {0, 1}


def test_label_noise_makes_soft_crowd_like_train_labels(shared_data, tmp_path):
    manifest = shared_data / "kermany" / "manifest.csv"
    build_reference_dataset(manifest, tmp_path / "ds", limit=300, label_noise=0.2, seed=2)
    examples = read_export(tmp_path / "ds")
    train = [e for e in examples if e.split == "train"]
    flipped = sum(e.label != e.reference_label for e in train)
    assert 0 < flipped < len(train) / 2
    assert all(0.0 < e.p_pneumonia < 1.0 for e in train)
    # validation and test keep the expert labels
    assert all(e.label == e.reference_label for e in examples if e.split != "train")


def _rows_by_name(folder):
    with (folder / "metadata.csv").open() as fh:
        return {row["file_name"].rsplit("/", 1)[1]: row for row in csv.DictReader(fh)}


def test_crowd_labels_replace_train_and_validation_labels_on_the_same_splits(shared_data, tmp_path):
    manifest = shared_data / "kermany" / "manifest.csv"
    build_reference_dataset(manifest, tmp_path / "expert", limit=300, seed=3)
    expert = _rows_by_name(tmp_path / "expert")
    names = sorted(expert)
    # A crowd that got every fifth image wrong (soft 0.3/0.7) and never labelled the last one.
    crowd = {}
    for i, name in enumerate(names[:-1]):
        truth = expert[name]["reference_label"]
        wrong = i % 5 == 0
        label = {"NORMAL": "PNEUMONIA", "PNEUMONIA": "NORMAL"}[truth] if wrong else truth
        crowd[name] = CrowdLabel(
            label, 0.7 if label == "PNEUMONIA" else 0.3, "expert" if i % 7 == 0 else "crowd"
        )
    counts = build_reference_dataset(
        manifest,
        tmp_path / "crowd",
        limit=300,
        seed=3,
        crowd=crowd,
        crowd_notes="## Quality figures\n\nq",
    )
    rows = _rows_by_name(tmp_path / "crowd")
    for name, row in rows.items():
        assert row["split"] == expert[name]["split"], "the splits must not change"
        if row["split"] == "test":  # the held-out images keep the expert labels
            assert row["reference_label"] == expert[name]["reference_label"]
        else:
            assert row["label"] == crowd[name].label and row["reference_label"] == ""
            assert float(row["p_PNEUMONIA"]) == crowd[name].p_pneumonia
            assert row["expert_reviewed"] == str(crowd[name].made_by == "expert").lower()
    missing = names[-1]
    assert (missing in rows) == (expert[missing]["split"] == "test")
    assert sum(counts.get("unlabelled", {}).values()) == (expert[missing]["split"] != "test")
    readme = (tmp_path / "crowd" / "README.md").read_text()
    assert "crowd labels" in readme.splitlines()[0] and "## Quality figures" in readme
    assert "expert labels" in (tmp_path / "expert" / "README.md").read_text().splitlines()[0]


def test_read_crowd_export_maps_image_ids_to_source_names(tmp_path):
    (tmp_path / "metadata.csv").write_text(
        "file_name,label,p_PNEUMONIA,image_id,is_gold,expert_reviewed\n"
        "train/NORMAL/a.png,NORMAL,0.12,a,false,false\n"
        "train/PNEUMONIA/b.png,PNEUMONIA,1.0,b,true,false\n"
        "test/PNEUMONIA/c.png,PNEUMONIA,1.0,c,false,true\n"
    )
    labels = read_crowd_export(tmp_path, {"a": "IM-1.jpeg", "b": "p1.jpeg", "c": "p2.jpeg"})
    assert labels == {
        "IM-1.jpeg": CrowdLabel("NORMAL", 0.12, "crowd"),
        "p1.jpeg": CrowdLabel("PNEUMONIA", 1.0, "gold"),
        "p2.jpeg": CrowdLabel("PNEUMONIA", 1.0, "expert"),
    }
    with pytest.raises(ValueError, match="not in the job database"):
        read_crowd_export(tmp_path, {"a": "IM-1.jpeg"})


def test_model_card_says_who_made_the_labels(tmp_path):
    from cxrlabel.model.card import _label_source

    (tmp_path / "README.md").write_text("# Reference dataset (Kermany images, expert labels)\n")
    assert "expert labels" in _label_source(tmp_path) and "crowd-made" not in _label_source(
        tmp_path
    )
    (tmp_path / "README.md").write_text("# Reference dataset (Kermany images, crowd labels)\n")
    assert "crowd-made" in _label_source(tmp_path)
    (tmp_path / "README.md").write_text("# Dataset: pneumonia-pediatric\n")  # a real export
    assert "crowd-made" in _label_source(tmp_path)


def test_model_card_label_summary_counts_only_the_labels_trained_on(tmp_path):
    from cxrlabel.model.card import _label_summary

    (tmp_path / "metadata.csv").write_text(
        "file_name,label,confidence,p_PNEUMONIA,split,expert_reviewed,reference_label\n"
        "a,PNEUMONIA,0.8,0.8,train,false,NORMAL\n"
        "b,NORMAL,1.0,0.0,validation,true,NORMAL\n"
        "c,PNEUMONIA,1.0,1.0,test,false,PNEUMONIA\n"
    )
    summary = _label_summary(tmp_path)
    assert "2 train + validation images; 1 labelled PNEUMONIA" in summary
    assert "on 1/2 of these images (50.0%)" in summary and "Expert-reviewed: 1." in summary
