"""Certainty-aware Dawid–Skene: answers stated as less certain are partly treated as guesses.

Each answer carries a stated certainty level l ("definitely" / "probably" / "cant_tell").
Model: with probability r_l the answer comes from the worker's confusion matrix (as in
Dawid–Skene); otherwise it is a guess drawn from the overall answer distribution u, which
carries no information about the true class:

    P(answer j | true k, worker w, level l) = r_l * confusion[w, k, j] + (1 - r_l) * u[j]

EM learns r_l together with the confusion matrices (the guess/informative indicator is a
second latent variable), so the weight of "probably" and "cant_tell" is learned from the
data rather than hard-coded. r_0 ("definitely") is fixed at 1 as the reference level; that
keeps the model identifiable and makes it *exactly* Dawid–Skene when every answer is
"definitely" or no certainty was given.

Where it helps: when hedged answers really are less accurate (the EM finds r_l < 1 and
discounts them). Where it does not: when stated certainty is unrelated to correctness; the
EM then drives r_l towards 1 and the result tracks plain Dawid–Skene (see
docs/aggregation.md and benchmarks/aggregation.py for both cases).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .base import (
    CERTAINTY_LEVELS,
    AggregationResult,
    Judgments,
    normalize_rows,
    softmax_rows,
)
from .dawid_skene import DawidSkene, expected_accuracy, prior_centre, smoothed_confusion

if TYPE_CHECKING:
    import scipy.sparse as sp

#: Starting reliability per level; also the centre of its Beta prior.
INITIAL_RELIABILITY: tuple[float, ...] = (1.0, 0.8, 0.4)


class CertaintyDawidSkene(DawidSkene):
    """Dawid-Skene's settings (same priors, same EM stopping) plus a reliability per level."""

    name = "certainty"
    uses_certainty = True

    def __init__(
        self, *, reliability_prior: float = 4.0, **ds_settings: float | int | None
    ) -> None:
        super().__init__(**ds_settings)  # type: ignore[arg-type]
        self.reliability_prior = reliability_prior

    def _fit(self, judgments: Judgments) -> AggregationResult:
        import scipy.sparse as sp  # here, not at the top: `cxrlabel aggregate -m ds` skips it

        levels = _levels(judgments)
        self._diagonal = self.prior_diagonal(judgments)
        n_items, n_classes = judgments.n_items, judgments.n_classes
        reliability = np.array(INITIAL_RELIABILITY)
        guess = np.bincount(judgments.labels, minlength=n_classes) + 1.0
        guess /= guess.sum()
        incidence = sp.csr_matrix(
            (np.ones(judgments.n_answers), (judgments.items, np.arange(judgments.n_answers))),
            shape=(n_items, judgments.n_answers),
        )
        onehot = sp.csr_matrix(
            (
                np.ones(judgments.n_answers),
                (judgments.workers * n_classes + judgments.labels, np.arange(judgments.n_answers)),
            ),
            shape=(judgments.n_workers * n_classes, judgments.n_answers),
        )
        weights = reliability[levels]
        posterior = judgments.clamp_gold(normalize_rows(judgments.vote_counts(weights)))
        converged, n_iter = False, 0
        confusion = np.empty((judgments.n_workers, n_classes, n_classes))
        class_prior = np.full(n_classes, 1.0 / n_classes)
        for n_iter in range(1, self.max_iter + 1):  # n_iter is reported
            class_prior, confusion, reliability = self._m_step_levels(
                judgments, levels, posterior, confusion, reliability, guess, onehot, n_iter == 1
            )
            log_lik = np.log(_answer_likelihood(judgments, levels, confusion, reliability, guess))
            log_post = np.asarray(incidence @ log_lik) + np.log(class_prior)[None, :]
            new_posterior = judgments.clamp_gold(softmax_rows(log_post))
            change = float(np.abs(new_posterior - posterior).max()) if posterior.size else 0.0
            posterior = new_posterior
            if change < self.tol:
                converged = True
                break
        return AggregationResult(
            labels=np.zeros(n_items, dtype=np.int64),
            proba=posterior,
            worker_skill=expected_accuracy(class_prior, confusion),
            method=self.name,
            confusion=confusion,
            class_prior=class_prior,
            level_reliability=reliability,
            n_iter=n_iter,
            converged=converged,
        )

    def _m_step_levels(
        self,
        judgments: Judgments,
        levels: np.ndarray,
        posterior: np.ndarray,
        confusion: np.ndarray,
        reliability: np.ndarray,
        guess: np.ndarray,
        onehot: sp.csr_matrix,
        first: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n_classes = judgments.n_classes
        item_post = posterior[judgments.items]  # (answers, K): P(true = k)
        if first:
            # No confusion yet: weight each answer by the level's starting reliability.
            informative = item_post * reliability[levels][:, None]
        else:
            lik = _answer_likelihood(judgments, levels, confusion, reliability, guess)
            own = reliability[levels][:, None] * _confusion_column(judgments, confusion)
            informative = item_post * own / lik  # P(true = k, informative | answer)
        flat = np.asarray(onehot @ informative)
        counts = flat.reshape(judgments.n_workers, n_classes, n_classes).transpose(0, 2, 1)
        centre = prior_centre(counts, self._diagonal, pooled=self.error_pattern == "pooled")
        confusion = smoothed_confusion(counts, self.prior_strength, centre, self.smoothing)
        reliability = self._update_reliability(levels, informative.sum(axis=1))
        class_prior = posterior.sum(axis=0) + 1.0
        return class_prior / class_prior.sum(), confusion, reliability

    def _update_reliability(self, levels: np.ndarray, informative: np.ndarray) -> np.ndarray:
        """MAP of r_l under a Beta prior centred on INITIAL_RELIABILITY."""
        n_levels = len(CERTAINTY_LEVELS)
        hits = np.bincount(levels, informative, n_levels)
        seen = np.bincount(levels, minlength=n_levels)
        centre = np.array(INITIAL_RELIABILITY)
        a = self.reliability_prior * centre
        b = self.reliability_prior * (1.0 - centre)
        reliability = (hits + a) / (seen + a + b)
        reliability[0] = 1.0  # reference level, see module docstring
        return np.clip(reliability, 1e-3, 1.0)


def _levels(judgments: Judgments) -> np.ndarray:
    if judgments.certainty is None:
        return np.zeros(judgments.n_answers, dtype=np.int64)
    return judgments.certainty


def _confusion_column(judgments: Judgments, confusion: np.ndarray) -> np.ndarray:
    """confusion[w_a, :, j_a] for every answer a: (answers, K)."""
    return confusion[judgments.workers, :, judgments.labels]


def _answer_likelihood(
    judgments: Judgments,
    levels: np.ndarray,
    confusion: np.ndarray,
    reliability: np.ndarray,
    guess: np.ndarray,
) -> np.ndarray:
    r = reliability[levels][:, None]
    informative = r * _confusion_column(judgments, confusion)
    result: np.ndarray = informative + (1.0 - r) * guess[judgments.labels][:, None]
    return result
