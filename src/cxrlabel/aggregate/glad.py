"""GLAD (Whitehill et al., NIPS 2009): worker ability x item difficulty.

Model: P(worker w answers item i correctly) = sigmoid(alpha_w * beta_i), beta_i = exp(b_i) > 0;
a wrong answer is uniform over the other K-1 classes. alpha_w is ability (negative means
adversarial), 1/beta_i is difficulty. EM: the E-step is one bincount over answers; the M-step
does a few block-coordinate Newton sweeps (all alphas at once given the betas, then all b's
given the alphas), each a handful of bincounts, instead of a generic optimiser over a
Python objective.

Priors (why): Gaussian priors alpha ~ N(alpha_mean, alpha_var) and b ~ N(0, b_var) keep a
worker with few answers, or an item everybody agrees on, from running off to infinity
(separable data has no finite maximum-likelihood estimate).
"""

from __future__ import annotations

import numpy as np

from .base import AggregationResult, Aggregator, Judgments, normalize_rows, softmax_rows

_MAX_NEWTON_STEP = 2.0


class GLAD(Aggregator):
    name = "glad"

    def __init__(
        self,
        *,
        tie_break: int | None = None,
        max_iter: int = 100,
        tol: float = 1e-5,
        newton_sweeps: int = 3,
        alpha_mean: float = 1.0,
        alpha_var: float = 1.0,
        b_var: float = 1.0,
    ) -> None:
        super().__init__(tie_break=tie_break)
        self.max_iter = max_iter
        self.tol = tol
        self.newton_sweeps = newton_sweeps
        self.alpha_mean = alpha_mean
        self.alpha_var = alpha_var
        self.b_var = b_var

    def _fit(self, judgments: Judgments) -> AggregationResult:
        alpha = np.full(judgments.n_workers, self.alpha_mean)
        b = np.zeros(judgments.n_items)
        posterior = judgments.clamp_gold(normalize_rows(judgments.vote_counts()))
        converged, n_iter = False, 0
        for n_iter in range(1, self.max_iter + 1):  # noqa: B007 - n_iter is reported
            class_prior = _class_prior(posterior)
            alpha, b = self._m_step(judgments, posterior, alpha, b)
            new_posterior = judgments.clamp_gold(_e_step(judgments, class_prior, alpha, b))
            change = float(np.abs(new_posterior - posterior).max()) if posterior.size else 0.0
            posterior = new_posterior
            if change < self.tol:
                converged = True
                break
        return AggregationResult(
            labels=np.zeros(judgments.n_items, dtype=np.int64),
            proba=posterior,
            worker_skill=alpha,
            method=self.name,
            item_difficulty=np.exp(-b),
            class_prior=_class_prior(posterior),
            n_iter=n_iter,
            converged=converged,
        )

    def _m_step(
        self, judgments: Judgments, posterior: np.ndarray, alpha: np.ndarray, b: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        items, workers = judgments.items, judgments.workers
        # q = P(answer is correct) under the current posterior; fixed during the M-step.
        q = posterior[items, judgments.labels]
        for _ in range(self.newton_sweeps):
            beta = np.exp(b)[items]
            s = _sigmoid(alpha[workers] * beta)
            grad = np.bincount(workers, (q - s) * beta, judgments.n_workers)
            grad -= (alpha - self.alpha_mean) / self.alpha_var
            curv = np.bincount(workers, s * (1 - s) * beta**2, judgments.n_workers)
            curv += 1.0 / self.alpha_var
            alpha = alpha + np.clip(grad / curv, -_MAX_NEWTON_STEP, _MAX_NEWTON_STEP)

            x = alpha[workers] * np.exp(b)[items]
            s = _sigmoid(x)
            grad = np.bincount(items, (q - s) * x, judgments.n_items) - b / self.b_var
            # Fisher scoring (expected curvature) keeps the step an ascent direction
            # even where the objective is not concave in b.
            curv = np.bincount(items, s * (1 - s) * x**2, judgments.n_items) + 1.0 / self.b_var
            b = b + np.clip(grad / curv, -_MAX_NEWTON_STEP, _MAX_NEWTON_STEP)
        return alpha, b


def _e_step(
    judgments: Judgments, class_prior: np.ndarray, alpha: np.ndarray, b: np.ndarray
) -> np.ndarray:
    k = judgments.n_classes
    x = alpha[judgments.workers] * np.exp(b)[judgments.items]
    # Every class but the answered one gets log((1-s)/(K-1)); the answered class gets log s,
    # i.e. log s - log((1-s)/(K-1)) = x + log(K-1) more. The shared part cancels in the
    # softmax, so only this bonus is accumulated.
    bonus = x + (np.log(k - 1) if k > 1 else 0.0)
    flat = np.bincount(
        judgments.items * k + judgments.labels, bonus, judgments.n_items * k
    ).reshape(judgments.n_items, k)
    return softmax_rows(flat + np.log(class_prior)[None, :])


def _class_prior(posterior: np.ndarray) -> np.ndarray:
    prior = posterior.sum(axis=0) + 1.0
    return prior / prior.sum()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))
