"""Issue 20, fourth pass: does an item-level "confusing" component close the DS gaps?

    PYTHONPATH=src .venv/bin/python benchmarks/aggregation_confusing.py          # 26 sets, ~1 min
    PYTHONPATH=src .venv/bin/python benchmarks/aggregation_confusing.py --datasets act_zencrowd_us

The third pass (benchmarks/aggregation_bayes.py) found that the remaining gaps against
crowd-kit's DS come from a few dense workers whose false positives fall on the *same* items
("hard negatives"): under conditional independence the only explanation of agreement is that
the item is positive, so DS overestimates those workers' specificity. The candidates here give
every item a hidden flag c ~ Bernoulli(rho), rho ~ Beta(mean 0.1) (learned): if c = 0 the answers
come from the workers' own DS confusions as usual, if c = 1 ("confusing item") from a second
component. The E-step runs over (true class x flag); the M-step counts an answer towards its
worker's DS confusion only with weight P(z = k, c = 0 | answers), so answers on confusing items
stop inflating a worker's estimated specificity. The DS rows keep the library's prior (Dirichlet
worth 5 answers at the crowd's agreement-based worker, + 0.01 per cell). The confusing
component (``kind``):

* ``spam``: MACE-like item-level spam: answers independent of the truth, drawn from one
  crowd-wide answer distribution q(j) (learned, +1 per class);
* ``shared confusion``: every worker answers through one crowd-level confusion S[k, j]
  (learned; Dirichlet worth 10 answers per row centred on uniform);
* ``tempered``: each worker through its own DS row raised to the power 1/2, renormalised;
* ``own hard-item confusion``: each worker through a second confusion matrix of its own, fitted
  on the confusing items (a two-regime DS: easy and hard items), with the library's prior
  (worth 5 or 20 answers) centred on the crowd centre, on chance, or on the pooled hard-item
  confusion.

Options, each one fixed rule for every set: rho's Beta prior worth 20 pseudo-items (rho learned)
or as many as the set has items (rho stays near 0.1); EM started with every item confusing with
probability 0.1, or with its disagreement (1 - top vote share: 0 when unanimous), which is what
lets the second component become different from the first; labels = argmax of the marginal
P(z | answers), or the plain DS E-step with the rows fitted on the clear items ("labels from the
clear-item rows"). Leave-one-dataset-out as in benchmarks/aggregation_selection.py; crowd-kit's
DS is run in the same script. Results and reading in docs/aggregation.md ("Item-level confusing
component").
"""

from __future__ import annotations

import sys
import time

import numpy as np
import scipy.sparse as sp
from aggregation import Dataset, load
from aggregation_selection import crowdkit_ds_accuracy, judgments_of, report, study_sets

from cxrlabel.aggregate import DawidSkene, Judgments
from cxrlabel.aggregate.base import normalize_rows
from cxrlabel.aggregate.dawid_skene import (
    agreement_accuracy,
    confusion_counts,
    e_step,
    prior_centre,
    smoothed_confusion,
)

STRENGTH, SMOOTHING, RHO_MEAN = 5.0, 0.01, 0.1


def log_table(confusion: np.ndarray) -> np.ndarray:
    """(W*K answered, K true) table of log confusion[w, true, answered] for the sparse E-step."""
    n_workers, k, _ = confusion.shape
    return np.log(confusion).transpose(0, 2, 1).reshape(n_workers * k, k)


class ConfusingDS:
    """Dawid-Skene with an item-level "confusing" flag; ``kind`` picks the confusing component."""

    def __init__(
        self,
        kind: str,
        rho_weight: float | None = 20.0,
        shared_strength: float = 10.0,
        start_from_disagreement: bool = False,
        hard_centre: str = "crowd",
        hard_strength: float = STRENGTH,
        label_with_clear_rows: bool = False,
    ):
        self.kind, self.rho_weight, self.shared_strength = kind, rho_weight, shared_strength
        self.start_from_disagreement = start_from_disagreement
        self.hard_centre, self.hard_strength = hard_centre, hard_strength
        self.label_with_clear_rows = label_with_clear_rows
        self.rho = RHO_MEAN

    def fit(self, judgments: Judgments) -> np.ndarray:
        answers = judgments.worker_label_matrix()
        answers_t = answers.T.tocsr()
        votes = judgments.vote_counts()
        diagonal = agreement_accuracy(judgments)
        posterior = normalize_rows(votes)
        # Start: every item confusing with probability rho's prior mean, or with its
        # disagreement (1 - the top vote share: 0 when unanimous).
        flag = RHO_MEAN
        if self.start_from_disagreement:
            flag = 1.0 - posterior.max(axis=1, keepdims=True)
        plain, confusing = (1.0 - flag) * posterior, flag * posterior
        for _ in range(100):
            params = self._m_step(answers_t, votes, plain, confusing, diagonal, judgments)
            plain, confusing = self._e_step(answers, votes, *params)
            new = plain + confusing
            change = float(np.abs(new - posterior).max())
            posterior = new
            if change < 1e-5:
                break
        if self.label_with_clear_rows:  # rows fitted on the clear items, applied to every item
            class_prior, confusion, _ = params
            return e_step(answers, class_prior, confusion)
        return posterior

    def _m_step(
        self,
        answers_t: sp.csr_matrix,
        votes: np.ndarray,
        plain: np.ndarray,
        confusing: np.ndarray,
        diagonal: float,
        judgments: Judgments,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        counts = confusion_counts(answers_t, plain, judgments.n_workers)
        confusion = smoothed_confusion(counts, STRENGTH, prior_centre(counts, diagonal), SMOOTHING)
        n_items = len(plain)
        weight = n_items if self.rho_weight is None else self.rho_weight
        a, b = RHO_MEAN * weight, (1.0 - RHO_MEAN) * weight
        self.rho = float((confusing.sum() + a) / (n_items + a + b))
        class_prior = normalize_rows((plain + confusing).sum(axis=0, keepdims=True) + 1.0)[0]
        k = votes.shape[1]
        if self.kind == "spam":
            answered = votes.T @ confusing.sum(axis=1) + 1.0  # q(j), whatever the truth
            shared = np.tile(answered / answered.sum(), (k, 1))
        elif self.kind == "shared confusion":
            shared = normalize_rows((votes.T @ confusing).T + self.shared_strength / k)
        elif self.kind == "own hard-item confusion":  # per worker, (W, K, K)
            hard = confusion_counts(answers_t, confusing, judgments.n_workers)
            centre = self._centre(hard, diagonal)
            shared = smoothed_confusion(hard, self.hard_strength, centre, SMOOTHING)
        else:  # tempered: per-worker, built in the E-step
            shared = np.zeros((k, k))
        return class_prior, confusion, shared

    def _centre(self, hard: np.ndarray, diagonal: float) -> np.ndarray:
        """Prior centre of the hard-item rows: the library's crowd centre, chance, or the
        crowd's pooled confusion on confusing items (+1 per cell)."""
        k = hard.shape[1]
        if self.hard_centre == "crowd":
            return prior_centre(hard, diagonal)
        if self.hard_centre == "chance":
            return np.full((k, k), 1.0 / k)
        return normalize_rows(hard.sum(axis=0) + 1.0)

    def _e_step(
        self,
        answers: sp.csr_matrix,
        votes: np.ndarray,
        class_prior: np.ndarray,
        confusion: np.ndarray,
        shared: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        log_plain = np.asarray(answers @ log_table(confusion))
        if self.kind == "tempered":
            log_confusing = np.asarray(answers @ log_table(normalize_rows3(np.sqrt(confusion))))
        elif shared.ndim == 3:
            log_confusing = np.asarray(answers @ log_table(shared))
        else:
            log_confusing = votes @ np.log(shared).T  # [i, true] = sum_j n_ij log S[true, j]
        log_prior = np.log(class_prior)[None, :]
        clear = log_plain + log_prior + np.log(1.0 - self.rho)
        joint = np.concatenate([clear, log_confusing + log_prior + np.log(self.rho)], axis=1)
        joint = np.exp(joint - joint.max(axis=1, keepdims=True))
        joint /= joint.sum(axis=1, keepdims=True)
        k = class_prior.size
        return joint[:, :k], joint[:, k:]


def normalize_rows3(x: np.ndarray) -> np.ndarray:
    return x / x.sum(axis=2, keepdims=True)


CANDIDATES = {
    "spam, rho learned": lambda: ConfusingDS("spam"),
    "spam, rho ~ 0.1 (prior worth n items)": lambda: ConfusingDS("spam", rho_weight=None),
    "shared confusion, rho learned": lambda: ConfusingDS("shared confusion"),
    "shared confusion, rho ~ 0.1": lambda: ConfusingDS("shared confusion", rho_weight=None),
    "shared confusion, rho learned, start from disagreement": lambda: ConfusingDS(
        "shared confusion", start_from_disagreement=True
    ),
    "spam, rho learned, start from disagreement": lambda: ConfusingDS(
        "spam", start_from_disagreement=True
    ),
    "own hard-item confusion, rho learned, start from disagreement": lambda: ConfusingDS(
        "own hard-item confusion", start_from_disagreement=True
    ),
    "own hard-item confusion, rho ~ 0.1, start from disagreement": lambda: ConfusingDS(
        "own hard-item confusion", rho_weight=None, start_from_disagreement=True
    ),
    "own hard-item confusion centred on chance, rho learned, start from disagreement": lambda: (
        ConfusingDS("own hard-item confusion", start_from_disagreement=True, hard_centre="chance")
    ),
    "own hard-item confusion centred on the pooled hard confusion": lambda: ConfusingDS(
        "own hard-item confusion", start_from_disagreement=True, hard_centre="pooled"
    ),
    "own hard-item confusion centred on the pooled hard confusion, worth 20 answers": lambda: (
        ConfusingDS(
            "own hard-item confusion",
            start_from_disagreement=True,
            hard_centre="pooled",
            hard_strength=20.0,
        )
    ),
    "own hard-item confusion, hard rows worth 20 answers": lambda: ConfusingDS(
        "own hard-item confusion", start_from_disagreement=True, hard_strength=20.0
    ),
    "own hard-item confusion, labels from the clear-item rows": lambda: ConfusingDS(
        "own hard-item confusion", start_from_disagreement=True, label_with_clear_rows=True
    ),
    "shared confusion, labels from the clear-item rows": lambda: ConfusingDS(
        "shared confusion", start_from_disagreement=True, label_with_clear_rows=True
    ),
    "shared confusion, labels from the clear-item rows, rho ~ 0.1": lambda: ConfusingDS(
        "shared confusion",
        rho_weight=None,
        start_from_disagreement=True,
        label_with_clear_rows=True,
    ),
    "shared confusion, labels from the clear-item rows, started at rho = 0.1": lambda: ConfusingDS(
        "shared confusion", label_with_clear_rows=True
    ),
    "shared confusion worth 5 answers, labels from the clear-item rows": lambda: ConfusingDS(
        "shared confusion",
        shared_strength=5.0,
        start_from_disagreement=True,
        label_with_clear_rows=True,
    ),
    "spam, labels from the clear-item rows": lambda: ConfusingDS(
        "spam", start_from_disagreement=True, label_with_clear_rows=True
    ),
    "tempered, rho learned": lambda: ConfusingDS("tempered"),
    "tempered, rho ~ 0.1": lambda: ConfusingDS("tempered", rho_weight=None),
}


def ds_candidates(data: Dataset) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    full = judgments_of(data)
    labels = {"ds (default)": DawidSkene().fit_judgments(full).labels}
    rhos = {}
    for name, make in CANDIDATES.items():
        model = make()
        labels[name] = model.fit(full).argmax(axis=1)
        rhos[name] = model.rho
    return labels, rhos


def main(argv: list[str]) -> int:
    root, names = study_sets(argv, __doc__.splitlines()[0])
    deltas: dict[str, dict[str, float]] = {}
    for name in names:
        data = load(root / name)
        ck = crowdkit_ds_accuracy(data)
        start = time.perf_counter()
        labels, rhos = ds_candidates(data)
        seconds = time.perf_counter() - start
        deltas[name] = {c: data.accuracy(lab) - ck for c, lab in labels.items()}
        print(
            f"{name}: crowd-kit DS {ck:.4f}; "
            + ", ".join(
                f"{c} {100 * d:+.2f}" + (f" (rho {rhos[c]:.3f})" if c in rhos else "")
                for c, d in deltas[name].items()
            )
            + f"; all candidates {seconds:.1f} s",
            flush=True,
        )
    report("Dawid-Skene with a confusing-item component against crowd-kit's DS", deltas)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
