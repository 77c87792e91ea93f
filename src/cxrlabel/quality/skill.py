"""Per-annotator skill from the engine's own judgments, and the rule that removes for harm.

Pure functions (NumPy-free arithmetic, no web or database imports). The engine keeps four
counters per annotator (``AnswerCounts``): gold answers graded and correct, and *peer pairs*:
every time two annotators both give a label (not "can't tell") to the same work image, each
gets one pair, and an agreement when the labels are equal. From these:

* **gold accuracy**: Beta(1, 1) posterior of the share of gold answered correctly;
* **peer agreement**: Beta(1, 1) posterior of the share of peer pairs that agree;
* **peer-implied accuracy**: in the one-coin Dawid-Skene model an annotator of accuracy p
  agreeing with peers of accuracy q does so with probability a = p q + (1 - p)(1 - q), so
  p = 1/2 + (a - 1/2) / (2q - 1). q is the crowd's typical accuracy on work images
  (``quality.peer_accuracy`` in the job). Whatever q is (above 1/2), a < 1/2 exactly when
  p < 1/2: agreeing with peers less often than a coin would is adversarial without any
  assumption about how good the peers are;
* **combined**: gold evidence plus the peer evidence as pseudo-counts, n_eff = pairs (2q - 1)^2
  (agreement with a noisy referee says less than a gold answer does).

Each is an ``Estimate`` (posterior mean and a one-sided credible bound on both sides; the
bound uses the normal approximation of the Beta, z = 1.645, i.e. 95 % one-sided).

Why both: gold alone can be gamed (an account that learned the gold bank is perfect on it and
may answer work items at will) and is thin (one gold per page); peer agreement alone cannot
tell a good annotator in a bad crowd from a bad one. Gold good and peers bad is exactly the
gold harvester / colluding pair of issue 18.

``harm`` is the removal rule (see ``REMOVAL_REASONS`` for the reason codes and the text the
annotator sees). An honest annotator who is merely weaker than average is *not* removed: they
are down-weighted by their trust in the aggregation, which is what Dawid-Skene and GLAD show
to be better than discarding their information.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# One-sided 95 % normal quantile: "credibly below" means the upper bound is below.
Z_ONE_SIDED_95 = 1.645

# Removal reason codes (the part of ``AnnotatorRec.status_reason`` before the colon).
REASON_ADVERSARIAL = "adversarial"
REASON_PEER_DISAGREEMENT = "peer_disagreement"
REASON_LOW_ACCURACY = "low_accuracy"
REASON_SPEED_TRAP = "speed_trap"
REASON_ONE_BUTTON = "answer_distribution"
REASON_ADMIN = "admin"
REASON_LOW_TRUST = "low_trust"  # the rule before this module (kept for old audit logs)

#: Reason code -> what the annotator (and the admin) is told. One place for the web pages.
REMOVAL_REASONS: dict[str, str] = {
    REASON_ADVERSARIAL: (
        "Your answers disagreed with the other annotators and the test questions more often "
        "than random answers would. Your answers on this job are no longer counted."
    ),
    REASON_PEER_DISAGREEMENT: (
        "Your answers to test questions were good, but your answers to the other images "
        "mostly disagreed with everyone else's. Your answers on this job are no longer counted; "
        "an administrator can review this."
    ),
    REASON_LOW_ACCURACY: (
        "Your answers were right too rarely to help, even with the extra weight we give to "
        "careful annotators. Please re-read the instructions and the examples; an "
        "administrator can review this."
    ),
    REASON_SPEED_TRAP: (
        "You answered several pages faster than a careful look at every image takes."
    ),
    REASON_ONE_BUTTON: (
        "Your answers did not look like careful answers to these images (for example always "
        "the same button)."
    ),
    REASON_ADMIN: "An administrator removed you from this job.",
    REASON_LOW_TRUST: "Your accuracy on the test questions fell below this job's minimum.",
}

#: Messages for honest annotators who stay (shown on their next page): how to improve.
# The codes of removal for harm (``harm``): the annotator's pages show their text above.
HARM_REASONS = (REASON_ADVERSARIAL, REASON_PEER_DISAGREEMENT, REASON_LOW_ACCURACY)

IMPROVE_MESSAGES: dict[str, str] = {
    "weaker_than_peers": (
        "Your answers agree with the other annotators a little less often than most. They "
        "still count, with less weight. Compare your answers with the examples in the "
        'instructions, and use "Probably" or "Can\'t tell" when you are unsure.'
    ),
}


def reason_text(status_reason: str | None) -> str | None:
    """The human text for a stored ``status_reason`` ("code: details"), or None."""
    if not status_reason:
        return None
    code = status_reason.split(":", 1)[0].strip()
    return REMOVAL_REASONS.get(code)


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float
    n: float  # effective number of observations behind it

    def as_dict(self) -> dict[str, float]:
        return {
            "mean": round(self.mean, 4),
            "low": round(self.low, 4),
            "high": round(self.high, 4),
            "n": round(self.n, 2),
        }


def beta_estimate(successes: float, trials: float, z: float = Z_ONE_SIDED_95) -> Estimate:
    """Beta(1 + successes, 1 + failures) posterior mean and mean -/+ z standard deviations."""
    if trials < 0 or not 0 <= successes <= trials + 1e-9:
        raise ValueError(f"need 0 <= successes <= trials, got {successes}, {trials}")
    a, b = 1.0 + successes, 1.0 + trials - successes
    mean = a / (a + b)
    sd = math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1.0)))
    return Estimate(mean, max(0.0, mean - z * sd), min(1.0, mean + z * sd), float(trials))


def implied_accuracy(agreement: float, peer_accuracy: float) -> float:
    """One-coin model: the accuracy p with p q + (1 - p)(1 - q) = agreement, clipped to [0, 1]."""
    if not 0.5 < peer_accuracy <= 1.0:
        raise ValueError(f"peer_accuracy must be in (0.5, 1], got {peer_accuracy}")
    p = 0.5 + (agreement - 0.5) / (2.0 * peer_accuracy - 1.0)
    return min(1.0, max(0.0, p))


@dataclass(frozen=True)
class SkillEvidence:
    gold_seen: int = 0
    gold_correct: int = 0
    peer_pairs: int = 0
    peer_agree: int = 0


@dataclass(frozen=True)
class Skill:
    gold: Estimate
    peer_agreement: Estimate
    peer_accuracy: Estimate
    combined: Estimate

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {
            "gold": self.gold.as_dict(),
            "peer_agreement": self.peer_agreement.as_dict(),
            "peer_accuracy": self.peer_accuracy.as_dict(),
            "combined": self.combined.as_dict(),
        }


def estimate_skill(
    evidence: SkillEvidence, peer_accuracy: float, z: float = Z_ONE_SIDED_95
) -> Skill:
    gold = beta_estimate(evidence.gold_correct, evidence.gold_seen, z)
    agreement = beta_estimate(evidence.peer_agree, evidence.peer_pairs, z)
    implied = Estimate(
        implied_accuracy(agreement.mean, peer_accuracy),
        implied_accuracy(agreement.low, peer_accuracy),
        implied_accuracy(agreement.high, peer_accuracy),
        agreement.n,
    )
    n_eff = evidence.peer_pairs * (2.0 * peer_accuracy - 1.0) ** 2
    raw_peer = evidence.peer_agree / evidence.peer_pairs if evidence.peer_pairs else 0.5
    combined = beta_estimate(
        evidence.gold_correct + implied_accuracy(raw_peer, peer_accuracy) * n_eff,
        evidence.gold_seen + n_eff,
        z,
    )
    return Skill(gold, agreement, implied, combined)


@dataclass(frozen=True)
class HarmParams:
    """The thresholds of the harm rule (job file: ``[quality]``, see docs/quality.md)."""

    peer_accuracy: float = 0.75  # the crowd's typical accuracy on work images
    harm_accuracy: float = 0.6  # below this (credibly) an annotator's answers do harm
    min_gold: int = 5  # gold answers before the gold-based rules may fire
    min_peer_pairs: int = 30  # peer pairs before the peer-based rules may fire
    z: float = Z_ONE_SIDED_95


@dataclass(frozen=True)
class Harm:
    code: str  # one of REMOVAL_REASONS
    detail: str  # the numbers, for the audit log and the admin

    @property
    def status_reason(self) -> str:
        return f"{self.code}: {self.detail}"


def harm(evidence: SkillEvidence, params: HarmParams) -> Harm | None:
    """The reason this annotator's answers make the labels worse, or None.

    In order:

    1. enough peer pairs and peer-implied accuracy credibly below ``harm_accuracy``:
       ``peer_disagreement`` when gold accuracy is credibly *above* it (good on gold, bad on
       work: harvested gold, collusion), else ``adversarial`` when agreement is credibly below
       a coin's, else ``low_accuracy``;
    2. enough gold and gold accuracy credibly below 1/2: ``adversarial``;
    3. enough gold and the combined estimate credibly below ``harm_accuracy``:
       ``low_accuracy``.

    "Credibly" = the one-sided bound (``z``) is on the wrong side, so an honest annotator with
    an unlucky run is not removed; the rule is monotone in the evidence.
    """
    skill = estimate_skill(evidence, params.peer_accuracy, params.z)
    numbers = _detail(evidence, skill)
    enough_gold = evidence.gold_seen >= params.min_gold
    enough_peers = evidence.peer_pairs >= params.min_peer_pairs
    if enough_peers and skill.peer_accuracy.high < params.harm_accuracy:
        if enough_gold and skill.gold.low >= params.harm_accuracy:
            return Harm(REASON_PEER_DISAGREEMENT, numbers)
        if skill.peer_agreement.high < 0.5:
            return Harm(REASON_ADVERSARIAL, numbers)
        return Harm(REASON_LOW_ACCURACY, numbers)
    if enough_gold and skill.gold.high < 0.5:
        return Harm(REASON_ADVERSARIAL, numbers)
    if enough_gold and skill.combined.high < params.harm_accuracy:
        return Harm(REASON_LOW_ACCURACY, numbers)
    return None


def _detail(evidence: SkillEvidence, skill: Skill) -> str:
    return (
        f"gold {evidence.gold_correct}/{evidence.gold_seen} correct "
        f"(accuracy {skill.gold.mean:.2f}, {skill.gold.low:.2f}-{skill.gold.high:.2f}); "
        f"peers agreed {evidence.peer_agree}/{evidence.peer_pairs} "
        f"(implied accuracy {skill.peer_accuracy.mean:.2f}, "
        f"{skill.peer_accuracy.low:.2f}-{skill.peer_accuracy.high:.2f})"
    )
