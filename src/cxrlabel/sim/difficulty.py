"""Per-image difficulty, derived honestly from the pixels by cross-fitting.

How: every image becomes a small feature vector (32x32 squashed grey pixels, a 16-bin grey
histogram, mean and spread). A plain L2 logistic regression is trained K times (K = 5); each
fold's images are scored by the model trained on the *other* folds, grouped by patient so no
patient's other views leak into their own score. The out-of-fold probability p(PNEUMONIA)
then tells how "textbook" an image looks:

* with a reference label: margin = logit(p) toward the reference class; an image the model
  calls confidently right is easy, one it calls confidently wrong is hard (it looks like the
  other class, so people are misled too);
* without one: ambiguity, 1 - |2p - 1| (no label is ever needed to score an image).

The score is turned into a percentile in [0, 1] (0 = easiest), so personas can be
calibrated on a known distribution (see ``personas.py``). The label alone never decides the
difficulty: two images with the same label get different difficulties from their pixels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from scipy.optimize import minimize
from scipy.special import expit
from scipy.stats import rankdata

from cxrlabel.vocab import PNEUMONIA

SIZE = 32
HIST_BINS = 16
FEATURE_VERSION = 1


@dataclass(frozen=True)
class DifficultyResult:
    score: np.ndarray  # out-of-fold p(positive class) per image
    difficulty: np.ndarray  # percentile in [0, 1], 0 = easiest
    auc: float | None  # out-of-fold AUC of the helper model (how informative it is)
    accuracy: float | None  # out-of-fold accuracy at 0.5
    method: str  # "cross-fitted" | "ambiguity" | "random"


def image_features(path: str | Path) -> np.ndarray:
    """Squashed 32x32 grey pixels + 16-bin histogram + mean and spread, all in [0, 1]."""
    with PILImage.open(path) as img:
        img.draft("L", (SIZE * 4, SIZE * 4))  # JPEG DCT-domain downscale: much faster
        grey = img.convert("L")
        small = np.asarray(grey.resize((SIZE, SIZE), PILImage.Resampling.BILINEAR), float) / 255
        pixels = np.asarray(grey, dtype=float) / 255
    hist = np.histogram(pixels, bins=HIST_BINS, range=(0.0, 1.0))[0] / pixels.size
    return np.concatenate([small.ravel(), hist, [pixels.mean(), pixels.std()]])


def load_features(
    paths: Sequence[str | Path],
    cache_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Feature matrix for ``paths``; cached by the paths' names, sizes and mtimes."""
    key = _cache_key(paths)
    cache = cache_dir / f"features-{key}.npy" if cache_dir else None
    if cache and cache.exists():
        return np.load(cache)
    rows = []
    for path in paths:
        rows.append(image_features(path))
        if progress:
            progress(1)
    features = np.vstack(rows) if rows else np.zeros((0, SIZE * SIZE + HIST_BINS + 2))
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, features)
    return features


def _cache_key(paths: Sequence[str | Path]) -> str:
    digest = hashlib.sha256(f"v{FEATURE_VERSION}".encode())
    for path in paths:
        stat = Path(path).stat()
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0) -> np.ndarray:
    """L2-penalised logistic regression (weights then bias), fitted with L-BFGS."""
    design = np.hstack([x, np.ones((x.shape[0], 1))])

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = design @ w
        # log(1 + e^z) - y*z, computed stably
        value = np.logaddexp(0.0, z).sum() - y @ z + 0.5 * l2 * (w[:-1] @ w[:-1])
        grad = design.T @ (expit(z) - y)
        grad[:-1] += l2 * w[:-1]
        return float(value), grad

    result = minimize(
        loss, np.zeros(design.shape[1]), jac=True, method="L-BFGS-B", options={"maxiter": 500}
    )
    return result.x


def cross_fitted_scores(
    features: np.ndarray,
    y: np.ndarray,
    groups: Sequence[str],
    k: int = 5,
    seed: int = 0,
    l2: float = 1.0,
) -> np.ndarray:
    """Out-of-fold p(y=1): each image is scored by a model that never saw its patient."""
    unique = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of_group = {unique[g]: i % k for i, g in enumerate(order)}
    folds = np.array([fold_of_group[g] for g in groups])
    scores = np.full(len(y), np.nan)
    for fold in range(k):
        test, train = folds == fold, folds != fold
        if not test.any() or len(set(y[train])) < 2:
            continue
        mean = features[train].mean(axis=0)
        std = features[train].std(axis=0) + 1e-6  # standardise on the training folds only
        w = fit_logistic((features[train] - mean) / std, y[train], l2=l2 * train.sum() / 100)
        scores[test] = expit(
            np.hstack([(features[test] - mean) / std, np.ones((test.sum(), 1))]) @ w
        )
    return scores


def difficulty_from_scores(score: np.ndarray, y: np.ndarray | None) -> np.ndarray:
    """Percentile difficulty: margin toward the reference class, or ambiguity without one."""
    p = np.clip(score, 1e-6, 1 - 1e-6)
    if y is None:
        hardness = 1.0 - np.abs(2 * p - 1)
    else:
        logit = np.log(p / (1 - p))
        hardness = -np.where(y == 1, logit, -logit)
    return (rankdata(hardness, method="average") - 0.5) / len(hardness)


def auc_score(y: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUC (ties count half)."""
    ranks = rankdata(score)
    positives = y == 1
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def compute_difficulty(
    paths: Sequence[str | Path],
    labels: Sequence[str | None],
    groups: Sequence[str | None],
    positive: str = PNEUMONIA,
    *,
    k: int = 5,
    seed: int = 0,
    cache_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
    min_labelled: int = 40,
) -> DifficultyResult:
    """Difficulty for images at ``paths``; ``labels`` are reference labels (or None)."""
    n = len(paths)
    if n == 0:
        return DifficultyResult(np.zeros(0), np.zeros(0), None, None, "cross-fitted")
    y = np.array([1.0 if label == positive else 0.0 for label in labels])
    labelled = np.array([label is not None for label in labels])
    if labelled.sum() < min_labelled or len(set(y[labelled])) < 2:
        # Too few labelled images to fit anything honest: spread difficulty evenly at random.
        rng = np.random.default_rng(seed)
        return DifficultyResult(
            np.full(n, 0.5), rng.permutation((np.arange(n) + 0.5) / n), None, None, "random"
        )
    features = load_features(paths, cache_dir, progress)
    names = [g if g else f"image-{i}" for i, g in enumerate(groups)]
    score = np.full(n, 0.5)
    score[labelled] = cross_fitted_scores(
        features[labelled], y[labelled], [names[i] for i in np.flatnonzero(labelled)], k, seed
    )
    if (~labelled).any():  # unlabelled images: a model trained on all labelled ones
        mean, std = features[labelled].mean(0), features[labelled].std(0) + 1e-6
        w = fit_logistic((features[labelled] - mean) / std, y[labelled], l2=labelled.sum() / 100)
        rest = (features[~labelled] - mean) / std
        score[~labelled] = expit(np.hstack([rest, np.ones((len(rest), 1))]) @ w)
    difficulty = np.empty(n)
    difficulty[labelled] = difficulty_from_scores(score[labelled], y[labelled])
    if (~labelled).any():
        difficulty[~labelled] = difficulty_from_scores(score[~labelled], None)
    ys, ss = y[labelled], score[labelled]
    return DifficultyResult(
        score=score,
        difficulty=difficulty,
        auc=auc_score(ys, ss),
        accuracy=float(((ss >= 0.5) == (ys == 1)).mean()),
        method="cross-fitted",
    )
