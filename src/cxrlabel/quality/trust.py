"""Annotator trust: a Beta-smoothed accuracy on the gold (test) questions answered.

trust = (correct + a) / (seen + a + b),  a = ``spec.gold.prior_correct``, b = ``prior_missed``

Why a Beta prior rather than the alternatives:

* Appen/Figure Eight use the raw accuracy ``correct / seen``. After one or two test questions
  that is 0 or 1: one unlucky miss would make a new annotator worthless in the trust-weighted
  vote, one lucky hit would make them count as much as a proven one.
* Toloka smooths with a fixed pseudo-count K = 0.5 on each side (a Beta(0.5, 0.5) prior, mean
  0.5). That only shrinks towards 0.5, the accuracy of a coin, whatever the job.
* The job designer knows roughly how good a typical annotator is after the quiz; with the
  defaults a = 2, b = 1 the prior mean is 2/3 and it weighs like three test questions, so the
  first misses or hits move trust gently and 20 gold answers dominate it.

Trust is the posterior mean of accuracy, so it is also what the aggregation weights by. With no
prior and no evidence (a = b = 0, seen = 0) trust is 1.0: an untested annotator is counted as a
plain vote, which is what a job without gold does anyway.
"""

from __future__ import annotations


def beta_trust(correct: int, seen: int, prior_correct: float, prior_missed: float) -> float:
    if correct < 0 or seen < correct:
        raise ValueError(f"need 0 <= correct <= seen, got correct={correct}, seen={seen}")
    denominator = seen + prior_correct + prior_missed
    if denominator <= 0:
        return 1.0
    return (correct + prior_correct) / denominator
