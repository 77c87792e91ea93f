"""Aggregation methods on small hand-computed and synthetic cases."""

from __future__ import annotations

import numpy as np
import pytest

from cxrlabel.aggregate import (
    GLAD,
    METHODS,
    AggregationInputError,
    CertaintyDawidSkene,
    DawidSkene,
    MajorityVote,
    TrustWeighted,
    fit,
    get_method,
)
from cxrlabel.aggregate.base import Judgments, argmax_tie_break
from cxrlabel.aggregate.dawid_skene import agreement_accuracy, e_step, prior_centre
from cxrlabel.aggregate.trust import gold_accuracy_trust


def arrays(rows: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table = np.array(rows, dtype=np.int64)
    return table[:, 0], table[:, 1], table[:, 2]


def synthetic(
    n_items: int = 400,
    accuracies: tuple[float, ...] = (0.9, 0.8, 0.75, 0.7, 0.65),
    n_classes: int = 2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every worker answers every item; wrong answers are uniform over the other classes."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, n_classes, n_items)
    items = np.repeat(np.arange(n_items), len(accuracies))
    workers = np.tile(np.arange(len(accuracies)), n_items)
    correct = rng.random(items.size) < np.asarray(accuracies)[workers]
    wrong = (truth[items] + rng.integers(1, n_classes, items.size)) % n_classes
    labels = np.where(correct, truth[items], wrong)
    return items, workers, labels, truth


# --- majority vote and tie policy -------------------------------------------------------


def test_majority_vote_hand_computed() -> None:
    items, workers, labels = arrays([(0, 0, 1), (0, 1, 1), (0, 2, 0), (1, 0, 2), (1, 1, 2)])
    result = MajorityVote().fit(items, workers, labels, n_classes=3)
    np.testing.assert_allclose(result.proba, [[1 / 3, 2 / 3, 0], [0, 0, 1]])
    assert result.labels.tolist() == [1, 2]
    np.testing.assert_allclose(result.confidence, [2 / 3, 1.0])
    # worker 2 disagreed with the consensus on its only answer
    np.testing.assert_allclose(result.worker_skill, [1.0, 1.0, 0.0])


def test_tie_goes_to_lowest_class_unless_tie_break_given() -> None:
    items, workers, labels = arrays([(0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 1)])
    plain = MajorityVote().fit(items, workers, labels, n_classes=2)
    np.testing.assert_allclose(plain.proba[0], [0.5, 0.5])  # ties -> uniform proba
    assert plain.labels.tolist() == [0, 1]
    harmful_first = MajorityVote(tie_break=1).fit(items, workers, labels, n_classes=2)
    assert harmful_first.labels.tolist() == [1, 1]


def test_tie_break_only_applies_to_ties() -> None:
    proba = np.array([[0.6, 0.4], [0.5, 0.5], [0.2, 0.8]])
    assert argmax_tie_break(proba, tie_break=1).tolist() == [0, 1, 1]
    assert argmax_tie_break(proba, tie_break=0).tolist() == [0, 0, 1]


def test_item_without_answers_gets_uniform_row() -> None:
    result = MajorityVote().fit(np.array([0]), np.array([0]), np.array([1]), 2, n_items=2)
    np.testing.assert_allclose(result.proba[1], [0.5, 0.5])


# --- Appen trust ------------------------------------------------------------------------

# Appen's worked example: 8 contributors; trust sums 4.4703 (beef, 5 people),
# 1.8571 (chicken, 2) and 0.9231 (veggie, 1); total 7.2505. The individual trusts are not
# published, so these are chosen to give exactly those sums.
APPEN_TRUST = np.array([0.9231, 0.8571, 0.9000, 0.8901, 0.9000, 0.9286, 0.9285, 0.9231])
APPEN_ANSWERS = np.array([0, 0, 0, 0, 0, 1, 1, 2])  # beef, chicken, veggie


def test_appen_worked_example() -> None:
    result = TrustWeighted().fit(
        np.zeros(8, dtype=int), np.arange(8), APPEN_ANSWERS, n_classes=3, trust=APPEN_TRUST
    )
    assert APPEN_TRUST.sum() == pytest.approx(7.2505)
    assert result.proba[0, 0] == pytest.approx(4.4703 / 7.2505, abs=1e-12)
    assert round(float(result.confidence[0]), 4) == 0.6166
    np.testing.assert_allclose(result.proba[0], np.array([4.4703, 1.8571, 0.9231]) / 7.2505)
    assert result.labels[0] == 0


def test_trust_from_gold_is_accuracy_on_gold() -> None:
    # item 0 is gold (class 1); worker 0 right, worker 1 wrong; worker 2 saw no gold.
    items, workers, labels = arrays([(0, 0, 1), (0, 1, 0), (1, 0, 0), (1, 1, 1), (1, 2, 1)])
    judgments = Judgments.build(items, workers, labels, 2, gold={0: 1})
    trust = gold_accuracy_trust(judgments)
    np.testing.assert_allclose(trust, [1.0, 0.0, 0.5])  # untested -> median of tested
    result = TrustWeighted().fit(items, workers, labels, 2, gold={0: 1})
    # item 1: class 0 has trust 1.0, class 1 has 0.0 + 0.5
    np.testing.assert_allclose(result.proba[1], [1 / 1.5, 0.5 / 1.5])


def test_trust_without_gold_or_trust_is_vote_share() -> None:
    items, workers, labels, _ = synthetic(n_items=50)
    trust = TrustWeighted().fit(items, workers, labels, 2)
    vote = MajorityVote().fit(items, workers, labels, 2)
    np.testing.assert_allclose(trust.proba, vote.proba)


# --- Dawid-Skene --------------------------------------------------------------------------


def test_ds_e_step_hand_computed() -> None:
    # one item, two workers; worker 0 answered 0, worker 1 answered 1
    confusion = np.array([[[0.9, 0.1], [0.2, 0.8]], [[0.6, 0.4], [0.3, 0.7]]])
    prior = np.array([0.3, 0.7])
    judgments = Judgments.build(np.array([0, 0]), np.array([0, 1]), np.array([0, 1]), 2)
    post = e_step(judgments.worker_label_matrix(), prior, confusion)
    unnormalised = np.array([0.3 * 0.9 * 0.4, 0.7 * 0.2 * 0.7])
    np.testing.assert_allclose(post[0], unnormalised / unnormalised.sum())


def test_ds_beats_majority_when_a_bloc_is_biased() -> None:
    # two good workers; three workers who always answer class 0 (uninformative bias)
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 2, 300)
    good = [(i, w, t if rng.random() < 0.9 else 1 - t) for i, t in enumerate(truth) for w in (0, 1)]
    biased = [(i, w, 0) for i in range(300) for w in (2, 3, 4)]
    items, workers, labels = arrays(good + biased)
    mv = MajorityVote().fit(items, workers, labels, 2)
    # EM's tail is slow here (about 100 iterations to tol=1e-5 with either prior centre)
    ds = DawidSkene(max_iter=300).fit(items, workers, labels, 2)
    assert (ds.labels == truth).mean() > 0.85  # Bayes rate with two 90 % workers is 0.90
    assert (ds.labels == truth).mean() > (mv.labels == truth).mean() + 0.2
    assert ds.converged and ds.confusion is not None
    np.testing.assert_allclose(ds.confusion.sum(axis=2), 1.0)


def test_ds_gold_items_keep_their_gold_label() -> None:
    items, workers, labels, truth = synthetic(n_items=200, seed=3)
    # gold says the opposite of what everybody answered on items 0..9
    flipped = {i: int(1 - truth[i]) for i in range(10)}
    for method in ("ds", "certainty", "glad", "mv", "trust"):
        result = fit(items, workers, labels, 2, method=method, gold=flipped)
        assert all(result.labels[i] == g for i, g in flipped.items()), method
        np.testing.assert_allclose(result.proba[list(flipped)].max(axis=1), 1.0)


def test_ds_sparse_worker_stays_finite_and_smoothed() -> None:
    items, workers, labels, _ = synthetic(n_items=100, seed=4)
    # worker 5 answers a single item
    items = np.append(items, 0)
    workers = np.append(workers, 5)
    labels = np.append(labels, 1)
    result = DawidSkene().fit(items, workers, labels, 2)
    sparse_worker = result.confusion[5]
    assert np.all(sparse_worker > 0.05) and np.all(sparse_worker < 0.95)
    assert np.all(np.isfinite(result.proba))


# --- GLAD ---------------------------------------------------------------------------------


def test_glad_log_likelihood_hand_computed() -> None:
    from cxrlabel.aggregate.glad import _answer_indicator, _log_likelihood

    judgments = Judgments.build(np.array([0]), np.array([0]), np.array([1]), 3)
    alpha = np.array([[2.0, 2.0, 2.0]])
    b = np.array([np.log(0.5)])  # beta = 0.5 -> alpha * beta = 1
    got = _log_likelihood(judgments, _answer_indicator(judgments), alpha, b)[0]
    s = 1 / (1 + np.exp(-1.0))
    np.testing.assert_allclose(got, np.log([(1 - s) / 2, s, (1 - s) / 2]))


@pytest.mark.parametrize("class_ability", [True, False])
def test_glad_recovers_truth_and_ranks_workers(class_ability: bool) -> None:
    items, workers, labels, truth = synthetic(n_items=300, seed=5)
    result = GLAD(class_ability=class_ability).fit(items, workers, labels, 2)
    assert (result.labels == truth).mean() > 0.9
    # abilities follow the simulated accuracies 0.9 > 0.8 > (0.75, 0.7, 0.65)
    skill = result.worker_skill
    assert skill[0] > skill[1] > skill[2:].max()
    assert result.item_difficulty is not None and np.all(result.item_difficulty > 0)


# --- certainty-aware ----------------------------------------------------------------------


def certainty_data(informative: bool, seed: int = 6) -> tuple[np.ndarray, ...]:
    """Workers answer every item; 40 % of answers are 'cant_tell'. If ``informative``, those
    answers are coin flips and the 'definitely' ones 85 % right; else certainty is random."""
    rng = np.random.default_rng(seed)
    n_items, n_workers = 400, 5
    truth = rng.integers(0, 2, n_items)
    items = np.repeat(np.arange(n_items), n_workers)
    workers = np.tile(np.arange(n_workers), n_items)
    certainty = np.where(rng.random(items.size) < 0.4, 2, 0)
    honest = np.where(certainty == 2, 0.5, 0.85)
    p_right = honest if informative else np.full(items.size, 0.75)
    labels = np.where(rng.random(items.size) < p_right, truth[items], 1 - truth[items])
    return items, workers, labels, certainty, truth


def test_certainty_without_certainty_is_dawid_skene() -> None:
    items, workers, labels, _ = synthetic(n_items=150, seed=7)
    ds = DawidSkene().fit(items, workers, labels, 2)
    cds = CertaintyDawidSkene().fit(items, workers, labels, 2)
    np.testing.assert_allclose(cds.proba, ds.proba, atol=1e-9)


def test_certainty_helps_when_hedged_answers_are_guesses() -> None:
    items, workers, labels, certainty, truth = certainty_data(informative=True)
    ds = DawidSkene().fit(items, workers, labels, 2)
    cds = CertaintyDawidSkene().fit(items, workers, labels, 2, certainty=certainty)
    assert (cds.labels == truth).mean() > (ds.labels == truth).mean() + 0.02
    assert cds.level_reliability[2] < 0.3  # learned: cant_tell answers carry ~no signal


def test_certainty_does_not_help_when_certainty_is_noise() -> None:
    items, workers, labels, certainty, truth = certainty_data(informative=False)
    ds = DawidSkene().fit(items, workers, labels, 2)
    cds = CertaintyDawidSkene().fit(items, workers, labels, 2, certainty=certainty)
    assert abs((cds.labels == truth).mean() - (ds.labels == truth).mean()) < 0.02
    assert cds.level_reliability[2] > 0.7  # learned: cant_tell is as good as definitely


# --- properties shared by every method ----------------------------------------------------


@pytest.mark.parametrize("method", sorted(METHODS))
def test_permutation_invariance(method: str) -> None:
    items, workers, labels, _ = synthetic(n_items=120, n_classes=3, seed=8)
    certainty = np.random.default_rng(8).integers(0, 3, items.size)
    base = fit(items, workers, labels, 3, method=method, certainty=certainty)
    rng = np.random.default_rng(9)
    item_perm = rng.permutation(120)  # new code of old item i is item_perm[i]
    worker_perm = rng.permutation(5)
    order = rng.permutation(items.size)
    shuffled = fit(
        item_perm[items][order],
        worker_perm[workers][order],
        labels[order],
        3,
        method=method,
        certainty=certainty[order],
    )
    np.testing.assert_allclose(shuffled.proba[item_perm], base.proba, atol=1e-8)
    np.testing.assert_allclose(shuffled.worker_skill[worker_perm], base.worker_skill, atol=1e-8)


def test_all_methods_agree_on_unanimous_data() -> None:
    truth = np.array([0, 1, 2, 1, 0, 2])
    items = np.repeat(np.arange(6), 4)
    workers = np.tile(np.arange(4), 6)
    labels = truth[items]
    for method in METHODS:
        result = fit(items, workers, labels, 3, method=method, certainty=np.zeros_like(items))
        assert result.labels.tolist() == truth.tolist(), method
        assert np.all(result.confidence > 0.9), method
        np.testing.assert_allclose(result.proba.sum(axis=1), 1.0)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_soft_labels_are_distributions(method: str) -> None:
    items, workers, labels, _ = synthetic(n_items=60, n_classes=4, seed=10)
    result = fit(items, workers, labels, 4, method=method)
    assert result.proba.shape == (60, 4)
    assert np.all(result.proba >= 0)
    np.testing.assert_allclose(result.proba.sum(axis=1), 1.0)
    assert result.worker_skill.shape == (5,)


def test_get_method_and_fitted_attributes() -> None:
    items, workers, labels, _ = synthetic(n_items=30)
    ds = get_method("ds", tie_break=1)
    with pytest.raises(RuntimeError):
        _ = ds.labels_
    ds.fit(items, workers, labels, 2)
    assert ds.labels_.shape == (30,) and ds.probas_.shape == (30, 2)
    with pytest.raises(AggregationInputError, match="unknown method"):
        get_method("nope")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": np.array([0, 5])}, "n_classes"),
        ({"items": np.array([0])}, "same length"),
        ({"items": np.array([0.5, 1.0])}, "integer"),
        ({"gold": {7: 0}}, "gold item"),
    ],
)
def test_array_input_validation(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "items": np.array([0, 1]),
        "workers": np.array([0, 0]),
        "labels": np.array([0, 1]),
    }
    gold = kwargs.pop("gold", None)
    args.update(kwargs)
    with pytest.raises(AggregationInputError, match=message):
        fit(args["items"], args["workers"], args["labels"], 2, gold=gold)  # type: ignore[arg-type]


# --- the data-fitted Dawid-Skene prior (issue 20) ------------------------------------------


def graded_crowd(n_items: int = 1500, per_item: int = 5, accuracy: float = 0.55, seed: int = 3):
    """4 grades; many sparse workers who are often wrong, and wrong towards a neighbour."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 4, n_items)
    items = np.repeat(np.arange(n_items), per_item)
    workers = rng.integers(0, n_items, items.size)  # ~per_item answers per worker
    step = rng.choice([-1, 1], items.size)
    neighbour = np.clip(truth[items] + step, 0, 3)
    neighbour = np.where(neighbour == truth[items], truth[items] - step, neighbour)
    labels = np.where(rng.random(items.size) < accuracy, truth[items], neighbour)
    return items, workers, labels, truth


def test_agreement_accuracy_recovers_a_symmetric_crowd() -> None:
    rng = np.random.default_rng(4)
    truth = rng.integers(0, 4, 3000)
    items = np.repeat(np.arange(3000), 6)
    wrong = (truth[items] + rng.integers(1, 4, items.size)) % 4  # errors spread evenly
    labels = np.where(rng.random(items.size) < 0.6, truth[items], wrong)
    judgments = Judgments.build(items, np.arange(items.size) % 50, labels, 4)
    assert agreement_accuracy(judgments) == pytest.approx(0.6, abs=0.02)


def test_prior_centre_keeps_the_diagonal_and_follows_pooled_errors() -> None:
    counts = np.zeros((2, 3, 3))
    counts[:, 0] = [10, 8, 0]  # true class 0 is mistaken for 1, never for 2
    centre = prior_centre(counts, 0.7)
    np.testing.assert_allclose(centre.sum(axis=1), 1.0)
    np.testing.assert_allclose(np.diagonal(centre), 0.7)
    assert centre[0, 1] > 10 * centre[0, 2]
    np.testing.assert_allclose(prior_centre(counts, 0.7, pooled=False)[0], [0.7, 0.15, 0.15])


def test_glad_pooled_error_pattern_helps_on_graded_crowds() -> None:
    # Wrong answers go to a neighbouring grade: uniform errors treat "off by one" and "off by
    # three" alike, the pooled pattern learns the difference (~+16 points here).
    items, workers, labels, truth = graded_crowd()
    even = GLAD().fit(items, workers, labels, 4)
    pooled = GLAD(error_pattern="pooled").fit(items, workers, labels, 4)
    assert (pooled.labels == truth).mean() > (even.labels == truth).mean() + 0.10


def test_glad_pooled_error_pattern_changes_nothing_on_binary_data() -> None:
    items, workers, labels, _ = synthetic(n_items=200, seed=8)
    even = GLAD().fit(items, workers, labels, 2)
    pooled = GLAD(error_pattern="pooled").fit(items, workers, labels, 2)
    np.testing.assert_allclose(pooled.proba, even.proba, atol=1e-12)


def test_glad_log_likelihood_with_an_error_pattern_hand_computed() -> None:
    from cxrlabel.aggregate.glad import _answer_indicator, _log_likelihood

    judgments = Judgments.build(np.array([0]), np.array([0]), np.array([1]), 3)
    alpha, b = np.array([[2.0, 2.0, 2.0]]), np.array([np.log(0.5)])  # alpha * beta = 1
    log_error = np.log(np.array([[1.0, 0.9, 0.1], [0.5, 1.0, 0.5], [0.3, 0.7, 1.0]]))
    got = _log_likelihood(judgments, _answer_indicator(judgments), alpha, b, log_error)[0]
    s = 1 / (1 + np.exp(-1.0))
    np.testing.assert_allclose(got, np.log([(1 - s) * 0.9, s, (1 - s) * 0.7]))


def test_glad_rejects_an_unknown_error_pattern() -> None:
    with pytest.raises(ValueError, match="error_pattern"):
        GLAD(error_pattern="neighbours")


def test_fitted_prior_beats_the_fixed_one_on_sparse_graded_crowds() -> None:
    items, workers, labels, truth = graded_crowd()
    fitted = DawidSkene().fit(items, workers, labels, 4)
    fixed = DawidSkene(prior_accuracy=0.8, error_pattern="even").fit(items, workers, labels, 4)
    assert (fitted.labels == truth).mean() > (fixed.labels == truth).mean() + 0.05  # ~+9 pts
