"""Do a model's stored bands hold at this site? Checked on a small expert-read local sample.

The new-patient estimate (issue 21) showed that no threshold chosen in advance holds at every
hospital: one constructed shift needs the flag threshold at 0.36, another at 0.91. So before a
model triages a new site's images, its flag sensitivity and clear NPV are measured on that
site's own expert-read images, with patient-bootstrap intervals, next to the thresholds this
sample would choose. Pure NumPy: the CLI scores the images, this judges the scores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from cxrlabel.model import calibrate, metrics

#: Below this many images of a class, the sample cannot show a 0.95 sensitivity or a 0.97
#: NPV with any confidence (one miss in 20 pneumonias already moves sensitivity by 0.05).
MIN_PER_CLASS = 30


@dataclass(frozen=True)
class SiteCheck:
    n: int
    n_pneumonia: int
    auc: float
    auc_ci: list[float]
    flag_at: float
    clear_below: float
    flag_sensitivity: float
    flag_sensitivity_ci: list[float]
    flag_specificity: float
    clear_npv: float
    clear_npv_ci: list[float]
    share_clear: float
    min_sensitivity: float
    min_npv: float
    site_flag_at: float  # what this sample would choose (lower 5 % of the bootstrap)
    site_clear_below: float
    problems: list[str] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        """The stored bands met both targets here and the sample was large enough to say so."""
        return not self.problems

    def to_dict(self) -> dict:
        return asdict(self) | {"holds": self.holds}


def check_site(
    y: np.ndarray,
    p: np.ndarray,
    groups: np.ndarray,
    flag_at: float,
    clear_below: float,
    min_sensitivity: float,
    min_npv: float,
    n_boot: int = 1000,
    seed: int = 0,
) -> SiteCheck:
    """The stored bands' figures on the site's sample, with 95 % patient-bootstrap intervals,
    and what the sample itself would choose; ``problems`` lists every reason not to rely on
    the stored bands here."""
    y, p, groups = np.asarray(y).astype(int), np.asarray(p, dtype=float), np.asarray(groups)
    clear_cut = min(clear_below, flag_at)
    auc = metrics.bootstrap_ci(metrics.roc_auc, y, p, groups, n_boot, seed)
    sens = metrics.bootstrap_ci(
        lambda yy, pp: metrics.sensitivity_specificity(yy, pp, flag_at)[0],
        y,
        p,
        groups,
        n_boot,
        seed,
    )
    npv = metrics.bootstrap_ci(
        lambda yy, pp: metrics.negative_predictive_value(yy, pp, clear_cut),
        y,
        p,
        groups,
        n_boot,
        seed,
    )
    site = calibrate.choose_operating_points(
        y, p, groups, min_sensitivity, min_npv, n_boot=min(n_boot, 500), seed=seed
    )
    check = SiteCheck(
        n=int(y.size),
        n_pneumonia=int(y.sum()),
        auc=auc[0],
        auc_ci=[auc[1], auc[2]],
        flag_at=flag_at,
        clear_below=clear_below,
        flag_sensitivity=sens[0],
        flag_sensitivity_ci=[sens[1], sens[2]],
        flag_specificity=metrics.sensitivity_specificity(y, p, flag_at)[1],
        clear_npv=npv[0],
        clear_npv_ci=[npv[1], npv[2]],
        share_clear=float((p < clear_cut).mean()),
        min_sensitivity=min_sensitivity,
        min_npv=min_npv,
        site_flag_at=site.flag.chosen,
        site_clear_below=site.clear.chosen,
    )
    check.problems.extend(_problems(check))
    return check


def _problems(c: SiteCheck) -> list[str]:
    found = []
    n_normal = c.n - c.n_pneumonia
    if min(c.n_pneumonia, n_normal) < MIN_PER_CLASS:
        found.append(
            f"too few images to judge: {c.n_pneumonia} pneumonia and {n_normal} normal; "
            f"read at least {MIN_PER_CLASS} of each"
        )
    if c.flag_sensitivity < c.min_sensitivity:
        found.append(
            f"flag sensitivity {c.flag_sensitivity:.3f} is below the target "
            f"{c.min_sensitivity:.2f} here: this sample would flag at p >= {c.site_flag_at:.3f} "
            f"instead of {c.flag_at:.3f}"
        )
    # An empty clear band has no NPV to miss (NaN): nothing is cleared, nothing is wrong.
    if np.isfinite(c.clear_npv) and c.clear_npv < c.min_npv:
        found.append(
            f"clear NPV {c.clear_npv:.3f} is below the target {c.min_npv:.2f} here: this "
            f"sample would clear below p = {c.site_clear_below:.3f} instead of "
            f"{c.clear_below:.3f}"
        )
    return found


def adopted_meta(meta: dict, check: SiteCheck, truth: str, date: str) -> dict:
    """``model.json`` with this site's thresholds (what its sample chose: the lower 5 % of
    the patient bootstrap, so the flag errs towards sensitivity), the previous ones kept under
    ``site_calibration``. Refused (ValueError) on a sample too small to choose from."""
    n_normal = check.n - check.n_pneumonia
    if min(check.n_pneumonia, n_normal) < MIN_PER_CLASS:
        raise ValueError(
            f"cannot choose thresholds from {check.n_pneumonia} pneumonia and {n_normal} "
            f"normal images: read at least {MIN_PER_CLASS} of each"
        )
    flag = float(check.site_flag_at)
    clear = float(min(check.site_clear_below, flag))
    record = {
        "truth": truth,
        "date": date,
        "n": check.n,
        "n_pneumonia": check.n_pneumonia,
        "previous": {"flag": check.flag_at, "clear": check.clear_below},
        "chosen": {"flag": flag, "clear": clear},
        "rule": "lower 5 % of the patient bootstrap of this sample, per band",
        "caution": "chosen on this sample: re-check on a fresh expert-read sample",
    }
    history = list(meta.get("site_calibration_history", []))
    if "site_calibration" in meta:
        history.append(meta["site_calibration"])
    return meta | {
        "thresholds": {"flag": flag, "clear": clear},
        "site_calibration": record,
        "site_calibration_history": history,
    }


def card_section(record: dict) -> str:
    """The model card's note of a site calibration (appended, never rewritten)."""
    previous, chosen = record["previous"], record["chosen"]
    return (
        f"\n## Site calibration ({record['date']})\n\n"
        f"The flag and clear thresholds were chosen again on {record['n']} expert-read images "
        f"of this site ({record['n_pneumonia']} pneumonia; `{record['truth']}`) by "
        f"`cxrlabel site-check --adopt-into`: flag p >= {chosen['flag']:.3f} (was "
        f"{previous['flag']:.3f}), clear p < {chosen['clear']:.3f} (was "
        f"{previous['clear']:.3f}). They were chosen on that sample, so its figures flatter "
        "them: check them on a fresh sample of this site before triage relies on them.\n"
    )
