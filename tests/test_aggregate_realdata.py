"""A small run on one real crowd dataset (D_PosSent); skipped when the shared data is absent."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from cxrlabel.aggregate import fit
from cxrlabel.aggregate.io import encode, read_answers, read_gold
from cxrlabel.aggregate.metrics import (
    answer_counts,
    expected_calibration_error,
    fleiss_kappa,
    krippendorff_alpha_nominal,
)

pytestmark = pytest.mark.shared_data

DATASET = "zheng_d_sentiment"


def crowd_dir() -> Path:
    root = Path(os.environ.get("CXRLABEL_SHARED_DATA", "../shared/data"))
    folder = root / "crowd" / DATASET
    if not (folder / "answers.csv").is_file():
        pytest.skip(f"shared crowd data not found at {folder} (set CXRLABEL_SHARED_DATA)")
    return folder


@pytest.fixture(scope="module")
def encoded() -> object:
    folder = crowd_dir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        answers = read_answers(folder / "answers.csv")
    return encode(answers, read_gold(folder / "gold.csv"))


def accuracy(labels: np.ndarray, gold: dict[int, int]) -> float:
    items = np.fromiter(gold.keys(), dtype=int)
    return float((labels[items] == np.fromiter(gold.values(), dtype=int)).mean())


def test_published_accuracy_levels(encoded: object) -> None:
    args = (encoded.items, encoded.worker_codes, encoded.labels, len(encoded.classes))
    mv = fit(*args, method="mv")
    ds = fit(*args, method="ds")
    glad = fit(*args, method="glad")
    # published: MV 0.932-0.933, D&S 0.960, GLAD 0.948-0.952 (Zheng 2017; crowd-kit JOSS)
    assert accuracy(mv.labels, encoded.gold) == pytest.approx(0.932, abs=0.002)
    assert accuracy(ds.labels, encoded.gold) >= 0.955
    assert accuracy(glad.labels, encoded.gold) >= 0.948
    correct = ds.labels[list(encoded.gold)] == np.array(list(encoded.gold.values()))
    assert expected_calibration_error(ds.confidence[list(encoded.gold)], correct) < 0.1


def test_gold_clamping_on_real_data(encoded: object) -> None:
    args = (encoded.items, encoded.worker_codes, encoded.labels, len(encoded.classes))
    half = dict(list(encoded.gold.items())[:500])
    ds = fit(*args, method="ds", gold=half)
    assert accuracy(ds.labels, half) == 1.0
    held_out = dict(list(encoded.gold.items())[500:])
    assert accuracy(ds.labels, held_out) >= 0.95


def test_agreement_on_real_data(encoded: object) -> None:
    counts = answer_counts(encoded.items, encoded.labels, len(encoded.tasks), 2)
    kappa, alpha = fleiss_kappa(counts), krippendorff_alpha_nominal(counts)
    # every task has 20 answers, so the two coincide up to the finite-sample correction
    assert 0.1 < kappa < 0.3  # ~70 % accurate workers: low pairwise agreement
    assert alpha == pytest.approx(kappa, abs=0.01)
