"""Dawid–Skene (1979): EM over full per-worker confusion matrices.

Model: item i has a hidden class k ~ prior; worker w answers j with probability
``confusion[w, k, j]``. EM alternates posterior class probabilities (E-step) and
prior/confusion estimates (M-step). Both steps are one sparse-matrix product with the
(items x workers*classes) answer matrix, so there is no loop over judgments.

Priors (why): a worker with a handful of answers would get confusion rows of exact zeros
and ones, and a single zero makes one answer veto a class. Worse, with a rare class (2
pneumonia cases in 810 images) maximum-likelihood EM happily re-purposes the rare class as a
"hard items" cluster with 5-15 % sensitivity for every reader and loses to majority vote.
Each confusion row therefore gets a Dirichlet prior worth ``prior_strength`` answers,
centred on a diagonal-dominant row (``prior_accuracy`` on the diagonal, the rest spread
evenly), plus ``smoothing`` pseudo-counts per cell. A sparse worker or a rare-class row stays
near "a decent annotator"; a row with hundreds of answers is barely affected. (A prior centred
on the pooled confusion of all workers was tried first: it drifts with the degenerate
cluster and does not prevent it.) The class prior gets one pseudo-count per class.

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
        prior_strength: float = 5.0,
        prior_accuracy: float = 0.8,
        smoothing: float = 0.01,
    ) -> None:
        super().__init__(tie_break=tie_break)
        self.max_iter = max_iter
        self.tol = tol
        self.prior_strength = prior_strength
        self.prior_accuracy = prior_accuracy
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
        confusion = smoothed_confusion(
            counts, self.prior_strength, self.prior_accuracy, self.smoothing
        )
        class_prior = posterior.sum(axis=0) + 1.0
        return class_prior / class_prior.sum(), confusion


def confusion_counts(
    answer_matrix_t: sp.csr_matrix, posterior: np.ndarray, n_workers: int
) -> np.ndarray:
    """Expected counts ``[w, true, answered]`` = sum over w's answers of P(true | item)."""
    n_classes = posterior.shape[1]
    flat = np.asarray(answer_matrix_t @ posterior)  # (workers*answered, true)
    return flat.reshape(n_workers, n_classes, n_classes).transpose(0, 2, 1)


def smoothed_confusion(
    counts: np.ndarray, prior_strength: float, prior_accuracy: float, smoothing: float
) -> np.ndarray:
    """Posterior-mean confusion rows under a Dirichlet prior centred on a diagonal-dominant
    matrix (``prior_accuracy`` on the diagonal)."""
    n_classes = counts.shape[1]
    off_diagonal = (1.0 - prior_accuracy) / max(n_classes - 1, 1)
    centre = np.full((n_classes, n_classes), off_diagonal)
    np.fill_diagonal(centre, prior_accuracy if n_classes > 1 else 1.0)
    confusion = counts + prior_strength * centre[None, :, :] + smoothing
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
    result: np.ndarray = diagonal @ class_prior
    return result
