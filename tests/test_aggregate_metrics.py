"""Agreement and calibration metrics on textbook and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from cxrlabel.aggregate.metrics import (
    answer_counts,
    cohen_kappa_vs_consensus,
    expected_calibration_error,
    fleiss_kappa,
    item_entropy,
    krippendorff_alpha_nominal,
    reliability_diagram,
)

# Fleiss (1971) as tabulated on Wikipedia: 10 subjects, 14 raters, 5 categories; kappa 0.210.
FLEISS_TABLE = np.array(
    [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
)

# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", nominal example with
# missing values: 4 observers x 12 units, alpha = 0.743 (unit 12 has one value: unpairable).
KRIPPENDORFF_READS = {
    "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    "C": [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
}


def test_fleiss_kappa_textbook() -> None:
    assert fleiss_kappa(FLEISS_TABLE) == pytest.approx(0.2099, abs=1e-4)


def test_fleiss_kappa_perfect_and_single_rater_items() -> None:
    perfect = np.array([[3, 0], [0, 3], [3, 0]])
    assert fleiss_kappa(perfect) == pytest.approx(1.0)
    # a single-rater item is not pairable and must not change the result
    assert fleiss_kappa(np.vstack([perfect, [[0, 1]]])) == pytest.approx(1.0)


def test_krippendorff_alpha_textbook() -> None:
    rows = [
        (unit, value - 1)
        for values in KRIPPENDORFF_READS.values()
        for unit, value in enumerate(values)
        if value is not None
    ]
    items, labels = np.array(rows).T
    assert krippendorff_alpha_nominal(answer_counts(items, labels)) == pytest.approx(
        0.743, abs=5e-4
    )


def test_krippendorff_alpha_hand_computed_two_coders() -> None:
    # two coders, 4 units: agree on 3 (a, a, b), disagree on 1 (a vs b)
    counts = np.array([[2, 0], [2, 0], [0, 2], [1, 1]])
    # coincidences: o_aa = 4, o_bb = 2, o_ab = o_ba = 1; n_a = 5, n_b = 3, n = 8
    expected = 1 - (8 - 1) * (8 - 6) / (8 * 8 - (25 + 9))
    assert krippendorff_alpha_nominal(counts) == pytest.approx(expected)


def test_cohen_kappa_vs_consensus_hand_computed() -> None:
    consensus = np.array([0, 0, 1, 1])
    # worker 0 matches the consensus everywhere; worker 1 flips item 3
    items = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    workers = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    labels = np.array([0, 0, 1, 1, 0, 0, 1, 0])
    kappa = cohen_kappa_vs_consensus(items, workers, labels, consensus)
    # worker 1: po = 3/4, worker marginals (3/4, 1/4), consensus (1/2, 1/2) -> pe = 1/2
    np.testing.assert_allclose(kappa, [1.0, (0.75 - 0.5) / 0.5])


def test_cohen_kappa_undefined_is_nan() -> None:
    kappa = cohen_kappa_vs_consensus(
        np.array([0, 1]), np.array([0, 0]), np.array([1, 1]), np.array([1, 1]), n_workers=2
    )
    assert np.isnan(kappa).all()  # single class on both sides; worker 1 has no answers


def test_item_entropy() -> None:
    entropy = item_entropy(np.array([[0.5, 0.5], [1.0, 0.0], [3, 1], [0, 0]]))
    assert entropy[0] == pytest.approx(1.0)
    assert entropy[1] == pytest.approx(0.0)
    assert entropy[2] == pytest.approx(-(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25)))
    assert np.isnan(entropy[3])


def test_ece_hand_computed() -> None:
    # bin (0.5, 0.6]: conf 0.55 x2, one right -> |0.5 - 0.55| = 0.05, weight 2/5
    # bin (0.9, 1.0]: conf 0.95 x2 and 1.0, all right -> mean conf 0.9667, acc 1, weight 3/5
    confidence = np.array([0.55, 0.55, 0.95, 0.95, 1.0])
    correct = np.array([1, 0, 1, 1, 1])
    expected = 2 / 5 * 0.05 + 3 / 5 * (1 - (0.95 + 0.95 + 1.0) / 3)
    assert expected_calibration_error(confidence, correct) == pytest.approx(expected)
    diagram = reliability_diagram(confidence, correct)
    assert diagram.counts.tolist() == [0, 0, 0, 0, 0, 2, 0, 0, 0, 3]
    assert diagram.accuracy[5] == pytest.approx(0.5)
    assert np.isnan(diagram.mean_confidence[0])


def test_ece_single_bin_and_perfect_calibration() -> None:
    confidence = np.full(10, 0.75)
    correct = np.array([1] * 8 + [0] * 2)  # 80 % right at stated 75 %: gap 0.05
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.05)
    assert expected_calibration_error(np.ones(4), np.ones(4)) == 0.0
