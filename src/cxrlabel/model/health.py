"""Checks that a training run produced a usable model, in plain words (issue 19).

On 80 images `train` used to write a model whose temperature sat at the fit's upper bound (20),
whose every probability was 0.5014 and whose review band was empty, without a word. These
checks turn such runs into a refusal (too few images to train at all) or into warnings that
`train` prints, stores in ``model.json`` and repeats at the top of the model card.
"""

from __future__ import annotations

import numpy as np

# Below this many training images a run is refused: there is nothing to learn or calibrate.
MIN_TRAIN_IMAGES = 20
MIN_VALIDATION_IMAGES = 8
# Below this many, training runs but the card warns: on Kermany a from-scratch CNN needs
# thousands of images to transfer to new patients (docs/model.md).
WARN_TRAIN_IMAGES = 1000
WARN_VALIDATION_IMAGES = 100
TEMPERATURE_CEILING = 20.0  # upper bound of calibrate.fit_temperature
MIN_PROBABILITY_SPREAD = 0.05  # p95 - p5 of validation probabilities


def size_refusal(n_train: int, n_validation: int) -> str | None:
    """Why a dataset is too small to train on at all, or None."""
    if n_train < MIN_TRAIN_IMAGES or n_validation < MIN_VALIDATION_IMAGES:
        return (
            f"too few images to train: {n_train} train and {n_validation} validation; "
            f"at least {MIN_TRAIN_IMAGES} and {MIN_VALIDATION_IMAGES} are needed "
            f"(thousands for a model that holds on new patients)"
        )
    return None


def size_warnings(n_train: int, n_validation: int) -> list[str]:
    out = []
    if n_train < WARN_TRAIN_IMAGES:
        out.append(
            f"only {n_train} training images (fewer than {WARN_TRAIN_IMAGES}): expect "
            f"the model to do much worse on new patients than on validation"
        )
    if n_validation < WARN_VALIDATION_IMAGES:
        out.append(
            f"only {n_validation} validation images (fewer than "
            f"{WARN_VALIDATION_IMAGES}): temperature and thresholds are very uncertain"
        )
    return out


def calibration_warnings(
    temperature_fit: float, val_p: np.ndarray, flag_at: float, clear_below: float
) -> list[str]:
    """Signs that calibration degenerated: a pinned temperature, flat scores, no review band."""
    out = []
    if temperature_fit >= TEMPERATURE_CEILING * 0.99:
        out.append(
            f"calibration degenerate: the temperature fit hit its ceiling "
            f"({temperature_fit:.1f}); the network's scores carry no usable signal"
        )
    p = np.asarray(val_p, dtype=float)
    spread = float(np.percentile(p, 95) - np.percentile(p, 5)) if p.size else 0.0
    if spread < MIN_PROBABILITY_SPREAD:
        out.append(
            f"calibration degenerate: validation probabilities barely vary "
            f"(5-95 % range {spread:.4f}); every image gets about the same score"
        )
    if clear_below >= flag_at:
        out.append(
            f"no review band: clear threshold {clear_below:.4f} is not below flag "
            f"threshold {flag_at:.4f}, so every image is either flagged or cleared"
        )
    return out
