"""Dawid–Skene (1979): EM over full per-worker confusion matrices.

Model: item i has a hidden class k ~ prior; worker w answers j with probability
``confusion[w, k, j]``. EM alternates posterior class probabilities (E-step) and
prior/confusion estimates (M-step). Both steps are one sparse-matrix product with the
(items x workers*classes) answer matrix, so there is no loop over judgments.

Priors (why): a worker with a handful of answers would get confusion rows of exact zeros
and ones, and a single zero makes one answer veto a class. Each confusion row therefore gets
a Dirichlet prior centred on the *pooled* confusion matrix of all workers, worth
``prior_strength`` answers, plus ``smoothing`` pseudo-counts per cell; a sparse worker is
pulled towards the typical worker, a busy worker is barely affected. The class prior gets one
pseudo-count per class.

Gold items are clamped to their known class in every E-step, so they anchor the confusion
matrices and their labels never change.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .base import AggregationResult, Aggregator, Judgments, normalize_rows, softmax_rows


class DawidSkene(Aggregator):
    name = "ds"

    def __init__(
        self,
        *,
        tie_break: int | None = None,
        max_iter: int = 100,
        tol: float = 1e-5,
        prior_strength: float = 2.0,
        smoothing: float = 0.01,
    ) -> None:
        super().__init__(tie_break=tie_break)
        self.max_iter = max_iter
        self.tol = tol
        self.prior_strength = prior_strength
        self.smoothing = smoothing

    def _fit(self, judgments: Judgments) -> AggregationResult:
        answer_matrix = judgments.worker_label_matrix()
        answer_matrix_t = answer_matrix.T.tocsr()
        # Start from the vote share: EM then only has to refine a sensible consensus.
        posterior = judgments.clamp_gold(normalize_rows(judgments.vote_counts()))
        converged, n_iter = False, 0
        for n_iter in range(1, self.max_iter + 1):  # noqa: B007 - n_iter is reported
            class_prior, confusion = self._m_step(answer_matrix_t, posterior, judgments)
            new_posterior = e_step(answer_matrix, class_prior, confusion)
            judgments.clamp_gold(new_posterior)
            change = float(np.abs(new_posterior - posterior).max()) if posterior.size else 0.0
            posterior = new_posterior
            if change < self.tol:
                converged = True
                break
        class_prior, confusion = self._m_step(answer_matrix_t, posterior, judgments)
        return AggregationResult(
            labels=np.zeros(judgments.n_items, dtype=np.int64),
            proba=posterior,
            worker_skill=expected_accuracy(class_prior, confusion),
            method=self.name,
            confusion=confusion,
            class_prior=class_prior,
            n_iter=n_iter,
            converged=converged,
        )

    def _m_step(
        self, answer_matrix_t: sp.csr_matrix, posterior: np.ndarray, judgments: Judgments
    ) -> tuple[np.ndarray, np.ndarray]:
        counts = confusion_counts(answer_matrix_t, posterior, judgments.n_workers)
        confusion = smoothed_confusion(counts, self.prior_strength, self.smoothing)
        class_prior = posterior.sum(axis=0) + 1.0
        return class_prior / class_prior.sum(), confusion


def confusion_counts(
    answer_matrix_t: sp.csr_matrix, posterior: np.ndarray, n_workers: int
) -> np.ndarray:
    """Expected counts ``[w, true, answered]`` = sum over w's answers of P(true | item)."""
    n_classes = posterior.shape[1]
    flat = np.asarray(answer_matrix_t @ posterior)  # (workers*answered, true)
    return flat.reshape(n_workers, n_classes, n_classes).transpose(0, 2, 1)


def smoothed_confusion(counts: np.ndarray, prior_strength: float, smoothing: float) -> np.ndarray:
    """Posterior-mean confusion rows under a Dirichlet prior centred on the pooled matrix."""
    pooled = counts.sum(axis=0) + smoothing
    pooled /= pooled.sum(axis=1, keepdims=True)
    confusion = counts + prior_strength * pooled[None, :, :] + smoothing
    confusion /= confusion.sum(axis=2, keepdims=True)
    return confusion


def e_step(
    answer_matrix: sp.csr_matrix, class_prior: np.ndarray, confusion: np.ndarray
) -> np.ndarray:
    """Posterior class probabilities: prior x product of the answers' likelihoods."""
    n_workers, n_classes, _ = confusion.shape
    # Row w*K + j of log_lik holds log confusion[w, :, j] (likelihood of answer j per class).
    log_lik = np.log(confusion).transpose(0, 2, 1).reshape(n_workers * n_classes, n_classes)
    log_post = np.asarray(answer_matrix @ log_lik) + np.log(class_prior)[None, :]
    return softmax_rows(log_post)


def expected_accuracy(class_prior: np.ndarray, confusion: np.ndarray) -> np.ndarray:
    """P(worker answers the true class) under the fitted model."""
    diagonal = np.diagonal(confusion, axis1=1, axis2=2)
    return diagonal @ class_prior
