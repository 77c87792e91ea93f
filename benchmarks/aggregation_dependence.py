"""Issue 20, fifth pass: do worker-pair dependence weights close the DS gaps?

    PYTHONPATH=src .venv/bin/python benchmarks/aggregation_dependence.py          # 26 sets
    PYTHONPATH=src .venv/bin/python benchmarks/aggregation_dependence.py --datasets act_zencrowd_us

The third and fourth passes (benchmarks/aggregation_bayes.py, aggregation_confusing.py) traced
the remaining gaps against crowd-kit's DS to a few dense workers whose errors fall on the same
items: Dawid-Skene assumes answers independent given the true class, so two workers who err
together count as two independent witnesses. The item-level model of the fourth pass explained
the shared errors by the *items*; this pass models the *pairs* of workers instead.

After the default DS has converged, every pair of workers with at least ``MIN_SHARED`` items in
common gets a dependence d in [0, 1]: how much more often they agree than the fitted model
expects, (observed - expected) / (shared - expected), counted only when the excess is
significant (z > 2 under the model's binomial variance). Each answer then gets the weight
1 / (1 + sum of d with the other workers on that item) (two fully dependent workers count as one
witness, as in the effective-sample-size correction), and DS is fitted again with weighted
answers: in the E-step only ("weights in the E-step"), or in both steps ("weights in both
steps"), once or with the dependence re-estimated from the weighted fit ("twice"). The DS rows
keep the library's prior. Leave-one-dataset-out and crowd-kit's DS as in the earlier passes.
"""

from __future__ import annotations

import sys
from collections import defaultdict

import numpy as np
import scipy.sparse as sp
from aggregation import Dataset
from aggregation_selection import judgments_of, run_study

from cxrlabel.aggregate import DawidSkene, Judgments
from cxrlabel.aggregate.base import normalize_rows, softmax_rows
from cxrlabel.aggregate.dawid_skene import (
    agreement_accuracy,
    confusion_counts,
    prior_centre,
    smoothed_confusion,
)

STRENGTH, SMOOTHING, MIN_SHARED, Z = 5.0, 0.01, 20, 2.0


def pair_dependence(
    j: Judgments, posterior: np.ndarray, confusion: np.ndarray
) -> dict[tuple[int, int], float]:
    """d[w, v] for worker pairs whose agreement exceeds the fitted model's, significantly."""
    by_item: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for item, worker, label in zip(j.items, j.workers, j.labels, strict=True):
        by_item[int(item)].append((int(worker), int(label)))
    observed: dict[tuple[int, int], float] = defaultdict(float)
    expected: dict[tuple[int, int], float] = defaultdict(float)
    variance: dict[tuple[int, int], float] = defaultdict(float)
    shared: dict[tuple[int, int], int] = defaultdict(int)
    for item, answers in by_item.items():
        if len(answers) < 2:
            continue
        p = posterior[item]
        for a in range(len(answers)):
            w, aw = answers[a]
            for b in range(a + 1, len(answers)):
                v, av = answers[b]
                key = (w, v) if w < v else (v, w)
                agree_given = (confusion[w] * confusion[v]).sum(axis=1)  # per true class
                e = float(p @ agree_given)
                observed[key] += float(aw == av)
                expected[key] += e
                variance[key] += e * (1.0 - e)
                shared[key] += 1
    d = {}
    for key, n in shared.items():
        if n < MIN_SHARED:
            continue
        excess = observed[key] - expected[key]
        if excess <= Z * np.sqrt(max(variance[key], 1e-9)):
            continue
        d[key] = float(np.clip(excess / max(n - expected[key], 1e-9), 0.0, 1.0))
    return d


def answer_weights(j: Judgments, d: dict[tuple[int, int], float]) -> np.ndarray:
    by_item: dict[int, list[int]] = defaultdict(list)
    for index, item in enumerate(j.items):
        by_item[int(item)].append(index)
    weights = np.ones(j.n_answers)
    for indices in by_item.values():
        for a in indices:
            w = int(j.workers[a])
            total = 0.0
            for b in indices:
                v = int(j.workers[b])
                if v != w:
                    total += d.get((w, v) if w < v else (v, w), 0.0)
            weights[a] = 1.0 / (1.0 + total)
    return weights


def weighted_ds(
    j: Judgments, weights: np.ndarray, *, in_m_step: bool, max_iter: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    k, n_workers = j.n_classes, j.n_workers
    columns = j.workers * k + j.labels
    ones = np.ones(j.n_answers)
    a_e = sp.csr_matrix((weights, (j.items, columns)), shape=(j.n_items, n_workers * k))
    a_m = a_e if in_m_step else sp.csr_matrix((ones, (j.items, columns)), shape=a_e.shape)
    a_m_t = a_m.T.tocsr()
    diagonal = agreement_accuracy(j)
    posterior = normalize_rows(j.vote_counts())
    confusion = np.ones((n_workers, k, k)) / k
    for _ in range(max_iter):
        counts = confusion_counts(a_m_t, posterior, n_workers)
        centre = prior_centre(counts, diagonal)
        confusion = smoothed_confusion(counts, STRENGTH, centre, SMOOTHING)
        prior = posterior.sum(axis=0) + 1.0
        prior /= prior.sum()
        log_lik = np.log(confusion).transpose(0, 2, 1).reshape(n_workers * k, k)
        log_post = np.asarray(a_e @ log_lik) + np.log(prior)[None, :]
        new = softmax_rows(log_post, in_place=True)
        change = float(np.abs(new - posterior).max()) if new.size else 0.0
        posterior = new
        if change < 1e-5:
            break
    return posterior, confusion


def fit_default(j: Judgments) -> tuple[np.ndarray, np.ndarray]:
    result = DawidSkene().fit_judgments(j)
    assert result.confusion is not None
    return result.proba, result.confusion


def fit_vote_share(j: Judgments) -> tuple[np.ndarray, np.ndarray]:
    """The vote share and the confusion rows one M-step fits to it (DS's starting point)."""
    posterior = normalize_rows(j.vote_counts())
    a_t = sp.csr_matrix(
        (np.ones(j.n_answers), (j.items, j.workers * j.n_classes + j.labels)),
        shape=(j.n_items, j.n_workers * j.n_classes),
    ).T.tocsr()
    counts = confusion_counts(a_t, posterior, j.n_workers)
    centre = prior_centre(counts, agreement_accuracy(j))
    return posterior, smoothed_confusion(counts, STRENGTH, centre, SMOOTHING)


# (weights in the M-step too, rounds, dependence measured against: "ds" | "vote share")
CANDIDATES = {
    "weights in the E-step": (False, 1, "ds"),
    "weights in both steps": (True, 1, "ds"),
    "weights in the E-step, twice": (False, 2, "ds"),
    "weights in both steps, twice": (True, 2, "ds"),
    "E-step weights, dependence against the vote share": (False, 1, "vote share"),
    "both steps, dependence against the vote share": (True, 1, "vote share"),
}


def ds_candidates(data: Dataset) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    j = judgments_of(data)
    posterior, confusion = fit_default(j)
    start = {"ds": (posterior, confusion), "vote share": fit_vote_share(j)}
    labels = {"ds (default)": posterior.argmax(axis=1)}
    pairs = {}
    for name, (in_m_step, rounds, against) in CANDIDATES.items():
        post, conf = start[against]
        for _ in range(rounds):
            d = pair_dependence(j, post, conf)
            post, conf = weighted_ds(j, answer_weights(j, d), in_m_step=in_m_step)
        labels[name] = post.argmax(axis=1)
        pairs[name] = len(d)
    return labels, pairs


def main(argv: list[str]) -> int:
    return run_study(
        argv,
        __doc__,
        lambda data: ds_candidates(data)[0],
        lambda data: {},  # DS only: GLAD has no pair weights here
        ("Dawid-Skene with worker-pair dependence weights against crowd-kit's DS", ""),
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
