"""Temperature scaling and the two operating points, fitted on the validation split.

Why conservative: a validation split carved from the training folders is easier than new data
(on Kermany, AUC 0.999 there vs about 0.96 on the independent test images). So

- the temperature is never allowed below 1: sharpening a model because an easy split is easy
  would make it more overconfident on new images;
- each threshold is recomputed on patient-grouped bootstrap resamples of validation and the
  *lower* 5th percentile is kept: a lower flag threshold raises sensitivity, a lower clear
  threshold raises negative predictive value. The spread is stored with the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from cxrlabel.model.bands import BAND_TEXT, BANDS, band, sigmoid
from cxrlabel.model.metrics import group_bootstrap_indices

__all__ = [
    "BANDS",
    "BAND_TEXT",
    "band",
    "sigmoid",
    "fit_temperature",
    "flag_threshold",
    "clear_threshold",
    "choose_operating_points",
    "OperatingPoints",
    "Threshold",
]


def fit_temperature(
    logits: np.ndarray, targets: np.ndarray, min_temperature: float = 1.0
) -> tuple[float, float]:
    """(temperature, unclamped fit) minimising the NLL of ``sigmoid(logit / T)``.

    ``targets`` may be soft (crowd probabilities): the NLL is then a cross-entropy.
    """
    z, t = np.asarray(logits, dtype=np.float64), np.asarray(targets, dtype=np.float64)

    def nll(log_temp: float) -> float:
        scaled = z / np.exp(log_temp)
        # log(1 + e^x) computed stably; cross-entropy of soft targets.
        return float(np.mean(np.logaddexp(0.0, scaled) - t * scaled))

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    fitted = float(np.exp(result.x))
    return max(fitted, min_temperature), fitted


def flag_threshold(y: np.ndarray, p: np.ndarray, min_sensitivity: float) -> float:
    """The highest threshold whose rule ``p >= t`` keeps sensitivity >= ``min_sensitivity``."""
    positives = np.sort(np.asarray(p)[np.asarray(y) == 1])
    if positives.size == 0:
        return 0.5
    may_miss = int(np.floor((1.0 - min_sensitivity) * positives.size + 1e-9))
    return float(positives[may_miss])


def clear_threshold(y: np.ndarray, p: np.ndarray, min_npv: float) -> float:
    """The highest threshold whose rule ``p < t`` keeps NPV >= ``min_npv``; 0 = no clear band."""
    order = np.argsort(p, kind="stable")
    ps, normal = np.asarray(p)[order], (np.asarray(y)[order] == 0)
    npv = np.cumsum(normal) / np.arange(1, ps.size + 1)  # NPV of the k+1 lowest scores
    # A cut can only fall between distinct scores; ``p < ps[k+1]`` selects the first k+1.
    cut_ok = np.append(ps[1:] > ps[:-1], True)
    good = np.flatnonzero((npv >= min_npv) & cut_ok)
    if good.size == 0:
        return 0.0
    k = int(good.max())
    return float(ps[k + 1]) if k + 1 < ps.size else float(np.nextafter(1.0, 2.0))


@dataclass(frozen=True)
class Threshold:
    point: float  # on the whole validation split
    chosen: float  # conservative choice stored with the model
    q05: float
    q50: float
    q95: float


@dataclass(frozen=True)
class OperatingPoints:
    flag: Threshold
    clear: Threshold
    min_sensitivity: float
    min_npv: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> OperatingPoints:
        return cls(
            flag=Threshold(**data["flag"]),
            clear=Threshold(**data["clear"]),
            min_sensitivity=data["min_sensitivity"],
            min_npv=data["min_npv"],
        )


def _spread(point: float, draws: np.ndarray, quantile: float) -> Threshold:
    q05, q50, q95 = (float(v) for v in np.percentile(draws, [5, 50, 95]))
    chosen = min(point, float(np.percentile(draws, quantile * 100)))
    return Threshold(point=point, chosen=chosen, q05=q05, q50=q50, q95=q95)


def choose_operating_points(
    y: np.ndarray,
    p: np.ndarray,
    groups: np.ndarray,
    min_sensitivity: float = 0.95,
    min_npv: float = 0.97,
    n_boot: int = 500,
    quantile: float = 0.05,
    seed: int = 0,
) -> OperatingPoints:
    """Flag and clear thresholds with their patient-bootstrap spread; conservative choice."""
    y, p = np.asarray(y), np.asarray(p)
    flags, clears = [], []
    for idx in group_bootstrap_indices(groups, n_boot, seed):
        flags.append(flag_threshold(y[idx], p[idx], min_sensitivity))
        clears.append(clear_threshold(y[idx], p[idx], min_npv))
    return OperatingPoints(
        flag=_spread(flag_threshold(y, p, min_sensitivity), np.asarray(flags), quantile),
        clear=_spread(clear_threshold(y, p, min_npv), np.asarray(clears), quantile),
        min_sensitivity=min_sensitivity,
        min_npv=min_npv,
    )
