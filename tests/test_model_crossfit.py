"""Out-of-fold scores: patient-disjoint folds, every image scored by a model that never saw it."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="the [model] extra (PyTorch) is not installed")

from rich.console import Console

from cxrlabel.model import crossfit
from cxrlabel.model.data import load_batch, read_export
from cxrlabel.model.train import TrainConfig
from model_support import write_synthetic_export


def test_patient_folds_keep_patients_whole_and_balance_classes():
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 150, size=600)
    groups = np.array([f"p{i}" for i in ids])
    y = (ids % 3 != 0).astype(int)  # one class per patient, about 2:1 as in Kermany
    fold = crossfit.patient_folds(groups, y, n_folds=2, seed=1)
    for g in np.unique(groups):
        assert len(set(fold[groups == g])) == 1, f"patient {g} is in both folds"
    for cls in (0, 1):
        counts = np.bincount(fold[y == cls], minlength=2)
        assert abs(counts[0] - counts[1]) <= 0.1 * counts.sum(), counts
    assert not np.array_equal(fold, crossfit.patient_folds(groups, y, n_folds=2, seed=2))


def test_cross_fit_scores_every_image_out_of_fold(tmp_path, monkeypatch):
    export = write_synthetic_export(tmp_path / "export", n=40)
    examples = read_export(export)
    pixels = load_batch([e.path for e in examples], 32)
    trained_on: list[set[str]] = []
    real_fit = crossfit.fit

    def spy_fit(splits, *args, **kwargs):  # records which patients each model trained on
        trained_on.append({e.patient_id for s in splits.values() for e in s.examples})
        return real_fit(splits, *args, **kwargs)

    monkeypatch.setattr(crossfit, "fit", spy_fit)
    cfg = TrainConfig(size=32, max_epochs=1, batch_size=8, threads=1)
    result = crossfit.cross_fit(examples, pixels, cfg, n_folds=2, console=Console(quiet=True))
    assert np.isfinite(result.p).all() and ((result.p > 0) & (result.p < 1)).all()
    assert len(result.folds) == 2 and all(f.temperature >= 1.0 for f in result.folds)
    for k, seen in enumerate(trained_on):
        scored = {e.patient_id for e, f in zip(examples, result.fold, strict=True) if f == k}
        assert scored and not scored & seen, "a model scored a patient it was trained on"
    assert sum(f.n_scored for f in result.folds) == len(examples)
