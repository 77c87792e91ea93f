"""The reference dataset builder used by the model benchmark (real Kermany manifest)."""

from __future__ import annotations

import csv
from collections import defaultdict

from cxrlabel.model.data import read_export
from cxrlabel.model.reference import METADATA_COLUMNS, build_reference_dataset


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
        assert row["p_PNEUMONIA"] == ("1.0000" if row["reference_label"] == "PNEUMONIA"
                                      else "0.0000")
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
