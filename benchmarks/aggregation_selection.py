"""Issue 20, second pass: can data-only criteria close the Dawid-Skene / GLAD gaps to crowd-kit?

    .venv/bin/python benchmarks/aggregation_selection.py          # all 26 categorical sets
    .venv/bin/python benchmarks/aggregation_selection.py --datasets act_zencrowd_us

On a few shared sets converged Dawid-Skene (and our class-conditional GLAD) is below majority
vote and below crowd-kit, whose DS stops after 1-2 EM iterations. This script evaluates the
remedies that need no gold, each a fixed rule (nothing tuned per data set):

* ``ds stop@heldout-LL``: hide 20 % of the answers (5 folds), run EM on the rest from the
  majority-vote start, and stop at the iteration whose parameters predict the hidden answers
  best; then run that many iterations on all answers (early stopping as regularisation);
* ``ds select@heldout-LL``: choose one-coin DS (one accuracy per worker) or full confusion
  matrices by the same held-out answer log-likelihood at convergence;
* ``ds select@heldout-agree``: the same choice by how often the item's label (fitted without
  the hidden answer) equals the hidden answer;
* ``ds worker-centred s``: each worker's confusion rows shrunk (strength s answers) towards
  that worker's own one-coin version (partial pooling of sensitivity and specificity);
* ``ds class-prior~share c``: class prior with a Dirichlet prior centred on the raw vote share,
  worth c x (number of items);
* GLAD: tied (classic) ability, tied with a fixed uniform class prior (as crowd-kit's GLAD),
  tied vs class-conditional chosen by held-out answer log-likelihood, and wrong answers spread
  like the crowd's pooled error pattern instead of evenly (``error_pattern="pooled"``).

Then leave-one-dataset-out: for each set, pick the candidate that keeps the most of the
*other* sets within 0.3 points of crowd-kit (ties: higher mean difference) and score it on the
held-out set. crowd-kit's DS is run here; crowd-kit's GLAD is too slow for all sets (tens of
minutes on the large ones), so its accuracies are the ones measured for docs/benchmarks.md and
docs/aggregation.md (``CK_GLAD_MEASURED``; sets it was not run on are left out of the GLAD part).
The results are in docs/aggregation.md ("Data-only model selection ...").
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from aggregation import SKIP, Dataset, load

from cxrlabel.aggregate import GLAD, DawidSkene, Judgments
from cxrlabel.aggregate.base import normalize_rows
from cxrlabel.aggregate.dawid_skene import (
    agreement_accuracy,
    confusion_counts,
    e_step,
    prior_centre,
    smoothed_confusion,
)

TOLERANCE = 0.003
FOLDS = 5
SEED = 0
#: crowd-kit 1.4.2 GLAD run to its own stopping rule on the same de-duplicated answers
#: (docs/benchmarks.md main table and docs/aggregation.md "Against crowd-kit's GLAD").
CK_GLAD_MEASURED = {
    "act_cf_amt_weather_sentiment": 0.8533,
    "act_cf_weather_sentiment": 0.8800,
    "act_ms_music_genre": 0.7886,
    "act_sp_amt_sentiment_polarity": 0.9460,
    "act_zencrowd_all": 0.8314,
    "act_zencrowd_in": 0.7618,
    "act_zencrowd_us": 0.8789,
    "chexpert_test_3readers_long": 0.9217,
    "chexpert_test_pneumonia_3readers": 0.9700,
    "nih_cxr14_4f_fracture": 0.9698,
    "nih_cxr14_4f_nodule_mass": 0.9447,
    "nih_cxr14_4f_pneumothorax": 0.9783,
    "nih_cxr14_af_abnormal": 0.9457,
    "nih_cxr14_af_pneumonia": 0.9975,
    "snow2008_temp": 0.9351,
    "welinder2010_bluebirds": 0.7226,
    "zheng_d_duck_identification": 0.7500,
    "zheng_d_sentiment": 0.9490,
    "zheng_s4_dog_data": 0.8327,
    "zheng_s4_face_sentiment": 0.6301,
    "zheng_s4_relevance": 0.5592,
}

#: M-step: (judgments, transposed answer matrix, posterior, prior diagonal) -> (prior, confusion)
Step = Callable[[Judgments, sp.csr_matrix, np.ndarray, float], tuple[np.ndarray, np.ndarray]]
Heldout = tuple[np.ndarray, np.ndarray, np.ndarray]  # items, workers, labels


# --- Dawid-Skene variants (EM written out here so each M-step can be swapped) -------------


def full_step(
    judgments: Judgments, answers_t: sp.csr_matrix, posterior: np.ndarray, diagonal: float
) -> tuple:
    """The library's M-step: Dirichlet prior worth 5 answers centred on the crowd's worker."""
    counts = confusion_counts(answers_t, posterior, judgments.n_workers)
    confusion = smoothed_confusion(counts, 5.0, prior_centre(counts, diagonal), 0.01)
    return class_prior(posterior), confusion


def one_coin_step(
    judgments: Judgments, answers_t: sp.csr_matrix, posterior: np.ndarray, diagonal: float
) -> tuple:
    """One accuracy per worker (prior worth 5 answers at the crowd's accuracy); errors spread
    like the crowd's pooled error pattern."""
    counts = confusion_counts(answers_t, posterior, judgments.n_workers)
    return class_prior(posterior), one_coin_rows(counts, diagonal)


def one_coin_rows(counts: np.ndarray, diagonal: float) -> np.ndarray:
    k = counts.shape[1]
    right = np.trace(counts, axis1=1, axis2=2)
    accuracy = (right + 5.0 * diagonal) / (counts.sum(axis=(1, 2)) + 5.0)
    errors = prior_centre(counts, diagonal)
    np.fill_diagonal(errors, 0.0)
    errors /= errors.sum(axis=1, keepdims=True)
    return (1 - accuracy)[:, None, None] * errors[None] + accuracy[:, None, None] * np.eye(k)


def worker_centred_step(strength: float) -> Step:
    def step(
        judgments: Judgments, answers_t: sp.csr_matrix, posterior: np.ndarray, diagonal: float
    ) -> tuple:
        counts = confusion_counts(answers_t, posterior, judgments.n_workers)
        confusion = counts + strength * one_coin_rows(counts, diagonal) + 0.01
        return class_prior(posterior), confusion / confusion.sum(axis=2, keepdims=True)

    return step


def share_prior_step(weight: float) -> Step:
    def step(
        judgments: Judgments, answers_t: sp.csr_matrix, posterior: np.ndarray, diagonal: float
    ) -> tuple:
        _, confusion = full_step(judgments, answers_t, posterior, diagonal)
        share = judgments.vote_counts().sum(axis=0)
        prior = posterior.sum(axis=0) + 1.0 + weight * posterior.shape[0] * share / share.sum()
        return prior / prior.sum(), confusion

    return step


def class_prior(posterior: np.ndarray) -> np.ndarray:
    prior = posterior.sum(axis=0) + 1.0
    return prior / prior.sum()


def run_em(
    judgments: Judgments,
    step: Step,
    diagonal: float,
    max_iter: int = 100,
    heldout: Heldout | None = None,
) -> tuple[list[np.ndarray], list[float]]:
    """EM from the vote share; returns the posterior after every iteration (index 0 = the
    vote share) and, with ``heldout``, the mean log-likelihood of the hidden answers under
    each iteration's (posterior, parameters) pair."""
    answers = judgments.worker_label_matrix()
    answers_t = answers.T.tocsr()
    posterior = normalize_rows(judgments.vote_counts())
    posteriors, scores = [posterior], []
    for _ in range(max_iter):
        prior, confusion = step(judgments, answers_t, posterior, diagonal)
        if heldout is not None:
            scores.append(heldout_log_lik(posterior, confusion, heldout))
        new_posterior = e_step(answers, prior, confusion)
        change = float(np.abs(new_posterior - posterior).max())
        posterior = new_posterior
        posteriors.append(posterior)
        if change < 1e-5:
            break
    if heldout is not None:
        confusion = step(judgments, answers_t, posterior, diagonal)[1]
        scores.append(heldout_log_lik(posterior, confusion, heldout))
    return posteriors, scores


def heldout_log_lik(posterior: np.ndarray, confusion: np.ndarray, heldout: Heldout) -> float:
    items, workers, labels = heldout
    return float(np.log((posterior[items] * confusion[workers, :, labels]).sum(axis=1)).mean())


def folds(data: Dataset) -> list[tuple[Judgments, Heldout]]:
    e = data.encoded
    fold = np.random.default_rng(SEED).integers(0, FOLDS, len(e.items))
    out = []
    for f in range(FOLDS):
        test = fold == f
        train = judgments_of(data, ~test)
        out.append((train, (e.items[test], e.worker_codes[test], e.labels[test])))
    return out


def judgments_of(data: Dataset, mask: np.ndarray | None = None) -> Judgments:
    e = data.encoded
    keep = np.ones(len(e.items), bool) if mask is None else mask
    return Judgments.build(
        e.items[keep],
        e.worker_codes[keep],
        e.labels[keep],
        len(e.classes),
        n_items=len(e.tasks),
        n_workers=len(e.workers),
    )


def ds_candidates(data: Dataset) -> dict[str, np.ndarray]:
    """Labels of every Dawid-Skene candidate on ``data``."""
    full = judgments_of(data)
    diagonal = agreement_accuracy(full)
    splits = folds(data)

    def final(step: Step) -> np.ndarray:
        return run_em(full, step, diagonal)[0][-1]

    # Early stopping: mean held-out log-likelihood per iteration over the folds.
    traces = [run_em(train, full_step, diagonal, heldout=h)[1] for train, h in splits]
    length = min(len(t) for t in traces)
    best_iter = int(np.argmax(np.mean([t[:length] for t in traces], axis=0)))
    stopped = run_em(full, full_step, diagonal, max_iter=max(best_iter, 1))[0]
    by_ll, by_agree = {}, {}
    for name, step in (("full", full_step), ("coin", one_coin_step)):
        ll = agree = 0.0
        for train, h in splits:
            posterior = run_em(train, step, diagonal)[0][-1]
            confusion = step(train, train.worker_label_matrix().T.tocsr(), posterior, diagonal)[1]
            ll += heldout_log_lik(posterior, confusion, h) * len(h[0])
            agree += float((posterior.argmax(axis=1)[h[0]] == h[2]).sum())
        by_ll[name], by_agree[name] = ll, agree
    posteriors = {
        "mv": normalize_rows(full.vote_counts()),
        "ds (default)": DawidSkene().fit_judgments(full).proba,
        "ds one-coin": final(one_coin_step),
        "ds stop@heldout-LL": stopped[min(best_iter, len(stopped) - 1)],
        "ds worker-centred 10": final(worker_centred_step(10.0)),
        "ds worker-centred 40": final(worker_centred_step(40.0)),
        "ds class-prior~share 1": final(share_prior_step(1.0)),
    }
    posteriors["ds select@heldout-LL"] = posteriors[
        "ds one-coin" if by_ll["coin"] > by_ll["full"] else "ds (default)"
    ]
    posteriors["ds select@heldout-agree"] = posteriors[
        "ds one-coin" if by_agree["coin"] > by_agree["full"] else "ds (default)"
    ]
    return {name: p.argmax(axis=1) for name, p in posteriors.items()}


# --- GLAD variants ---------------------------------------------------------------------------


class _RecordingGLAD(GLAD):
    """GLAD that keeps its last abilities and log-difficulties (to score held-out answers)."""

    def _m_step(self, *args: object) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        self.alpha_, self.b_ = super()._m_step(*args)  # type: ignore[arg-type]
        return self.alpha_, self.b_


class _UniformPriorGLAD(GLAD):
    """GLAD with the class prior fixed at uniform, as crowd-kit's GLAD (never re-estimated)."""

    def _fit(self, judgments: Judgments):  # type: ignore[no-untyped-def]
        import cxrlabel.aggregate.glad as glad_module

        learned = glad_module._class_prior
        glad_module._class_prior = lambda p: np.full(p.shape[1], 1.0 / p.shape[1])
        try:
            return super()._fit(judgments)
        finally:
            glad_module._class_prior = learned


def glad_heldout_log_lik(data: Dataset, class_ability: bool) -> float:
    total, n = 0.0, 0
    k = len(data.encoded.classes)
    for train, (items, workers, labels) in folds(data):
        model = _RecordingGLAD(class_ability=class_ability)
        posterior = model.fit_judgments(train).proba
        right = 1.0 / (1.0 + np.exp(-model.alpha_[workers] * np.exp(model.b_)[items][:, None]))
        is_answer = np.arange(k)[None, :] == labels[:, None]
        likelihood = np.where(is_answer, right, (1 - right) / max(k - 1, 1))
        total += float(np.log((posterior[items] * likelihood).sum(axis=1)).sum())
        n += len(items)
    return total / n


def glad_candidates(data: Dataset) -> dict[str, np.ndarray]:
    full = judgments_of(data)
    labels = {
        "glad (default, class-conditional)": GLAD().fit_judgments(full).labels,
        "glad tied": GLAD(class_ability=False).fit_judgments(full).labels,
        "glad pooled error pattern": GLAD(error_pattern="pooled").fit_judgments(full).labels,
        "glad tied, uniform class prior": _UniformPriorGLAD(class_ability=False)
        .fit_judgments(full)
        .labels,
    }
    tied_wins = glad_heldout_log_lik(data, False) > glad_heldout_log_lik(data, True)
    labels["glad select@heldout-LL"] = labels[
        "glad tied" if tied_wins else "glad (default, class-conditional)"
    ]
    return labels


# --- leave-one-dataset-out ---------------------------------------------------------------


def leave_one_out(deltas: dict[str, dict[str, float]]) -> dict[str, tuple[str, float]]:
    """For each set: the candidate that keeps most of the other sets within tolerance (ties:
    higher mean difference), and its difference on the held-out set."""
    out = {}
    candidates = next(iter(deltas.values())).keys()
    for held in deltas:
        others = [d for name, d in deltas.items() if name != held]

        def score(c: str, others: list[dict[str, float]] = others) -> tuple[int, float]:
            if not others:
                return (0, 0.0)
            return (sum(d[c] >= -TOLERANCE for d in others), float(np.mean([d[c] for d in others])))

        pick = max(candidates, key=score)
        out[held] = (pick, deltas[held][pick])
    return out


def report(title: str, deltas: dict[str, dict[str, float]]) -> None:
    candidates = list(next(iter(deltas.values())).keys())
    print(f"\n### {title}\n")
    print("| candidate | sets within 0.3 pts | mean Δ pts | below (Δ pts) |\n|---|---|---|---|")
    for c in candidates:
        below = [f"{n} {100 * d[c]:+.2f}" for n, d in deltas.items() if d[c] < -TOLERANCE]
        within = len(deltas) - len(below)
        mean = 100 * np.mean([d[c] for d in deltas.values()])
        print(f"| {c} | {within}/{len(deltas)} | {mean:+.2f} | {', '.join(below) or 'none'} |")
    loo = leave_one_out(deltas)
    within = sum(d >= -TOLERANCE for _, d in loo.values())
    picks = sorted({p for p, _ in loo.values()})
    mean = 100 * np.mean([d for _, d in loo.values()])
    print(
        f"\nleave-one-dataset-out: {within}/{len(loo)} held-out sets within 0.3 points, "
        f"mean Δ {mean:+.2f}; candidates picked: {', '.join(picks)}"
    )


def crowdkit_ds_accuracy(data: Dataset) -> float:
    from crowdkit.aggregation import DawidSkene as CrowdKitDS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predicted = CrowdKitDS().fit_predict(data.answers[["task", "worker", "label"]])
    return data.ck_accuracy(predicted)


def study_sets(argv: list[str], description: str) -> tuple[Path, list[str]]:
    """``--root`` and ``--datasets`` of the study scripts: the crowd folder and the set names."""
    parser = argparse.ArgumentParser(description=description)
    default_root = Path(os.environ.get("CXRLABEL_SHARED_DATA", "../shared/data")) / "crowd"
    parser.add_argument("--root", type=Path, default=default_root)
    parser.add_argument("--datasets", nargs="*", default=None)
    args = parser.parse_args(argv)
    names = args.datasets or sorted(
        p.name for p in args.root.iterdir() if (p / "answers.csv").is_file() and p.name not in SKIP
    )
    return args.root, names


def glad_study_line(
    name: str,
    data: Dataset,
    candidates: Callable[[Dataset], dict[str, np.ndarray]],
    glad_deltas: dict[str, dict[str, float]],
) -> str:
    """Score the GLAD candidates on a set with a measured crowd-kit GLAD figure (recorded in
    ``glad_deltas``); the text to add to the set's printed line ("" for the other sets)."""
    if name not in CK_GLAD_MEASURED:
        return ""
    ck_glad = CK_GLAD_MEASURED[name]
    deltas = {c: data.accuracy(lab) - ck_glad for c, lab in candidates(data).items()}
    if not deltas:  # a DS-only study
        return ""
    glad_deltas[name] = deltas
    return "; " + ", ".join(f"{c} {100 * d:+.2f}" for c, d in deltas.items())


def run_study(
    argv: list[str],
    doc: str,
    ds: Callable[[Dataset], dict[str, np.ndarray]],
    glad: Callable[[Dataset], dict[str, np.ndarray]],
    titles: tuple[str, str],
    describe: Callable[[Dataset], str] = lambda data: "",
) -> int:
    """The DS + GLAD study loop the study scripts share: one printed line per set (crowd-kit
    DS, each DS candidate's delta, GLAD deltas where crowd-kit's GLAD was measured), then the
    two ``report`` tables titled ``titles``. ``describe`` adds a note after the set's name."""
    root, names = study_sets(argv, doc.splitlines()[0])
    ds_deltas: dict[str, dict[str, float]] = {}
    glad_deltas: dict[str, dict[str, float]] = {}
    for name in names:
        data = load(root / name)
        ck = crowdkit_ds_accuracy(data)
        ds_deltas[name] = {c: data.accuracy(lab) - ck for c, lab in ds(data).items()}
        line = f"{name}{describe(data)}: crowd-kit DS {ck:.4f}; " + ", ".join(
            f"{c} {100 * d:+.2f}" for c, d in ds_deltas[name].items()
        )
        line += glad_study_line(name, data, glad, glad_deltas)
        print(line, flush=True)
    report(titles[0], ds_deltas)
    if glad_deltas:
        report(titles[1], glad_deltas)
    return 0


def main(argv: list[str]) -> int:
    return run_study(
        argv,
        __doc__,
        ds_candidates,
        glad_candidates,
        (
            "Dawid-Skene candidates against crowd-kit's DS",
            "GLAD candidates against crowd-kit's GLAD (measured)",
        ),
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
