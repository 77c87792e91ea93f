"""The three triage bands: the only rule prediction needs (NumPy only, no SciPy or PyTorch)."""

from __future__ import annotations

import numpy as np

BANDS = ("flag", "review", "clear")
BAND_TEXT = {
    "flag": "likely pneumonia: flag for a doctor's prompt read",
    "review": "uncertain: needs a doctor's read",
    "clear": "likely healthy (still not a diagnosis)",
}


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def band(p: float, flag_at: float, clear_below: float) -> str:
    """``flag`` wins over ``clear`` where the two overlap: missing pneumonia costs more."""
    if p >= flag_at:
        return "flag"
    if p < min(clear_below, flag_at):
        return "clear"
    return "review"
