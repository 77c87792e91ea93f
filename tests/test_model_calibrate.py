"""Calibration, operating points, bands and metrics (NumPy only: run without PyTorch)."""

from __future__ import annotations

import numpy as np
import pytest

from cxrlabel.model import calibrate, metrics


def _scores(n: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.6).astype(int)
    p = np.clip(rng.normal(0.3 + 0.4 * y, 0.15), 0, 1)
    return y, p


def test_roc_auc_matches_pairwise_count():
    y, p = _scores(120)
    pos, neg = p[y == 1], p[y == 0]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert metrics.roc_auc(y, p) == pytest.approx(pairs)
    assert np.isnan(metrics.roc_auc(np.ones(5), np.arange(5)))


def test_temperature_undoes_overconfidence_but_never_sharpens():
    rng = np.random.default_rng(1)
    true_logit = rng.normal(0, 2, 3000)
    y = (rng.random(3000) < calibrate.sigmoid(true_logit)).astype(float)
    temperature, fitted = calibrate.fit_temperature(true_logit * 3, y)  # 3x overconfident
    assert fitted == pytest.approx(3.0, rel=0.15)
    assert temperature == fitted
    used, fitted = calibrate.fit_temperature(true_logit / 3, y)  # underconfident
    assert fitted < 0.5 and used == 1.0


def test_soft_targets_give_their_own_temperature():
    logits = np.array([-4.0, 4.0] * 50)
    soft = np.where(logits > 0, 0.8, 0.2)  # the crowd was only 80 % sure
    _, fitted = calibrate.fit_temperature(logits, soft)
    assert calibrate.sigmoid(4.0 / fitted) == pytest.approx(0.8, abs=1e-3)


def test_flag_threshold_keeps_sensitivity():
    y, p = _scores()
    t = calibrate.flag_threshold(y, p, 0.95)
    sens, _ = metrics.sensitivity_specificity(y, p, t)
    assert sens >= 0.95
    # the highest such threshold: one step higher loses sensitivity
    higher = np.min(p[(y == 1) & (p > t)])
    assert metrics.sensitivity_specificity(y, p, higher)[0] < 0.95


def test_clear_threshold_keeps_npv():
    y, p = _scores()
    t = calibrate.clear_threshold(y, p, 0.97)
    assert 0 < t < 1
    assert metrics.negative_predictive_value(y, p, t) >= 0.97
    assert calibrate.clear_threshold(np.ones(10, int), p[:10], 0.97) == 0.0  # no safe cut


def test_operating_points_are_conservative_and_report_spread():
    y, p = _scores()
    groups = np.arange(len(y)) // 2
    ops = calibrate.choose_operating_points(y, p, groups, n_boot=200)
    for th in (ops.flag, ops.clear):
        assert th.chosen <= th.point
        assert th.q05 <= th.q50 <= th.q95
    assert calibrate.OperatingPoints.from_dict(ops.to_dict()) == ops


def test_bands_flag_wins_over_clear():
    assert calibrate.band(0.9, flag_at=0.6, clear_below=0.2) == "flag"
    assert calibrate.band(0.4, flag_at=0.6, clear_below=0.2) == "review"
    assert calibrate.band(0.1, flag_at=0.6, clear_below=0.2) == "clear"
    # overlapping thresholds: nothing is both flagged and cleared
    assert calibrate.band(0.5, flag_at=0.3, clear_below=0.7) == "flag"
    assert calibrate.band(0.2, flag_at=0.3, clear_below=0.7) == "clear"


def test_group_bootstrap_keeps_patients_whole():
    groups = np.array(["a", "a", "b", "c", "c", "c"])
    for idx in metrics.group_bootstrap_indices(groups, 20, seed=3):
        chosen = groups[idx]
        for g in set(chosen):
            assert (chosen == g).sum() % (groups == g).sum() == 0


def test_ece_is_zero_for_perfect_calibration_and_large_when_wrong():
    p = np.repeat([0.1, 0.9], 100)
    y = np.concatenate([np.r_[np.ones(10), np.zeros(90)], np.r_[np.ones(90), np.zeros(10)]])
    assert metrics.expected_calibration_error(y, p) == pytest.approx(0.0, abs=1e-12)
    assert metrics.expected_calibration_error(1 - y, p) == pytest.approx(0.8)
