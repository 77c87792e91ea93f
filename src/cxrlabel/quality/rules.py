"""Annotator rules: quiz, minimum accuracy, speed trap and answer distribution (pure functions).

Each function looks at one annotator's numbers and the job spec and says what should happen;
``engine.py`` applies the verdicts (status changes, taints) and records them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import skill
from .state import ACTIVE, QUIZ, AnnotatorRec, AnswerCounts
from .trust import beta_trust

if TYPE_CHECKING:  # the spec is only read here; no pydantic import at run time
    from cxrlabel.jobspec import JobSpec

# Removal kinds: the prefix of ``AnnotatorRec.status_reason``.
REMOVED_LOW_TRUST = "low_trust"
REMOVED_SPEED = "speed_trap"
REMOVED_DISTRIBUTION = "answer_distribution"
REMOVED_ADMIN = "admin"


@dataclass(frozen=True)
class RuleParams:
    quiz_length: int
    min_accuracy: float
    min_gold_before_removal: int
    prior_correct: float
    prior_missed: float
    min_seconds_per_page: float
    speed_trap_limit: int
    distribution_min_answers: int
    distribution_min_entropy_bits: float
    distribution_max_prevalence_gap: float
    distribution_remove: bool
    expected_prevalence: dict[str, float]
    remove_below_min_accuracy: bool = True
    quiz_retakes: int = 0
    harm: skill.HarmParams = skill.HarmParams()
    collusion_min_pairs: int = 0  # 0 = off

    @classmethod
    def from_spec(cls, spec: JobSpec) -> RuleParams:
        return cls(
            quiz_length=spec.gold.quiz_length,
            min_accuracy=spec.gold.min_accuracy,
            min_gold_before_removal=spec.gold.min_gold_before_removal,
            prior_correct=spec.gold.prior_correct,
            prior_missed=spec.gold.prior_missed,
            min_seconds_per_page=spec.pages.min_seconds_per_page,
            speed_trap_limit=spec.quality.speed_trap_limit,
            distribution_min_answers=spec.quality.distribution_min_answers,
            distribution_min_entropy_bits=spec.quality.distribution_min_entropy_bits,
            distribution_max_prevalence_gap=spec.quality.distribution_max_prevalence_gap,
            distribution_remove=spec.quality.distribution_remove,
            expected_prevalence=dict(spec.quality.expected_prevalence),
            remove_below_min_accuracy=spec.gold.remove_below_min_accuracy,
            quiz_retakes=spec.gold.quiz_retakes,
            harm=skill.HarmParams(
                peer_accuracy=spec.quality.peer_accuracy,
                harm_accuracy=spec.quality.harm_accuracy,
                min_gold=spec.gold.min_gold_before_removal,
                min_peer_pairs=spec.quality.min_peer_pairs,
            ),
            collusion_min_pairs=spec.quality.collusion_min_pairs,
        )

    def trust(self, correct: int, seen: int) -> float:
        return beta_trust(correct, seen, self.prior_correct, self.prior_missed)


# --- quiz ---------------------------------------------------------------------------------------


def quiz_complete(counts: AnswerCounts, params: RuleParams, active_gold: int) -> bool:
    """The quiz is done once ``quiz_length`` questions (or every active gold item, when the job
    has fewer) have been answered."""
    return counts.quiz_seen >= max(1, min(params.quiz_length, active_gold))


def quiz_trust(counts: AnswerCounts, params: RuleParams) -> float:
    return params.trust(counts.quiz_seen - counts.quiz_missed, counts.quiz_seen)


def quiz_retake_allowed(counts: AnswerCounts, params: RuleParams, active_gold: int) -> bool:
    """Another attempt, on test questions not seen yet, when the job allows one more and the
    gold bank still has a full quiz of unseen questions."""
    attempts_done = counts.quiz_failures + 1
    unseen = active_gold - attempts_done * params.quiz_length
    return counts.quiz_failures < params.quiz_retakes and unseen >= params.quiz_length


def quiz_passes(counts: AnswerCounts, params: RuleParams) -> bool:
    """Pass when the trust earned on the quiz reaches the job's minimum accuracy.

    The same smoothed number as the removal rule, so nobody passes the quiz only to be removed
    on the next page; with the defaults (8 questions, prior 2:1, minimum 0.75) that is 7 of 8.
    """
    return quiz_trust(counts, params) >= params.min_accuracy - 1e-12


# --- minimum accuracy ---------------------------------------------------------------------------


def below_minimum_accuracy(annotator: AnnotatorRec, params: RuleParams) -> bool:
    """Trust below the minimum after enough gold, with new evidence since an admin reinstated
    them (an admin's reinstatement is not undone by the numbers that existed when they chose).
    Only with ``gold.remove_below_min_accuracy`` (the strict rule; off by default)."""
    if not params.remove_below_min_accuracy:
        return False
    if annotator.status != ACTIVE or annotator.gold_seen < params.min_gold_before_removal:
        return False
    if annotator.trust >= params.min_accuracy - 1e-12:
        return False
    reinstated = annotator.flags.get("reinstated") or {}
    return annotator.gold_seen > int(reinstated.get("gold_seen", -1))


# --- removal for harm (quality/skill.py) --------------------------------------------------------

HARM_KINDS = (skill.REASON_ADVERSARIAL, skill.REASON_PEER_DISAGREEMENT, skill.REASON_LOW_ACCURACY)


def contested_pending(annotator: AnnotatorRec) -> list[int]:
    """Missed gold answers under an open contest: they count neither way until resolved."""
    return list(annotator.flags.get("contested") or [])


def counted_gold(annotator: AnnotatorRec) -> tuple[int, int]:
    """(correct, seen) over the gold answers that count (open contests left out)."""
    seen = annotator.gold_seen - len(contested_pending(annotator))
    return annotator.gold_seen - annotator.gold_missed, seen


# A peer agreed with on this share of at least ``quality.collusion_min_pairs`` pairs is a
# colluding partner: honest readers of these images agree on 0.7-0.85 of them, so the chance
# that two honest annotators agree on 95 % of 10 or more shared images is ~2 % at most, and
# then the only cost is that those pairs stop counting as evidence, for or against.
COLLUSION_AGREEMENT = 0.95


def colluding_partners(counts: AnswerCounts, min_pairs: int) -> dict[int, list[int]]:
    """The peers whose pairs with this annotator look like shared answers, not readings."""
    if min_pairs <= 0:
        return {}
    return {
        peer: tally
        for peer, tally in counts.peer_tally.items()
        if tally[0] >= min_pairs and tally[1] >= COLLUSION_AGREEMENT * tally[0] - 1e-9
    }


def skill_evidence(
    annotator: AnnotatorRec, counts: AnswerCounts, collusion_min_pairs: int = 0
) -> skill.SkillEvidence:
    """Gold and peer evidence; pairs with colluding partners are left out (an account
    agreeing with its own ring is no evidence that it reads the images)."""
    correct, seen = counted_gold(annotator)
    partners = colluding_partners(counts, collusion_min_pairs).values()
    return skill.SkillEvidence(
        gold_seen=seen,
        gold_correct=correct,
        peer_pairs=counts.peer_pairs - sum(t[0] for t in partners),
        peer_agree=counts.peer_agree - sum(t[1] for t in partners),
    )


def harm_verdict(
    annotator: AnnotatorRec, counts: AnswerCounts, params: RuleParams
) -> skill.Harm | None:
    """``skill.harm`` for an active annotator, with new evidence since an admin reinstated
    them (gold or peer pairs: the admin's decision is not undone by the same numbers)."""
    if annotator.status != ACTIVE:
        return None
    reinstated = annotator.flags.get("reinstated") or {}
    if reinstated and (
        annotator.gold_seen <= int(reinstated.get("gold_seen", -1))
        and counts.peer_pairs <= int(reinstated.get("peer_pairs", -1))
    ):
        return None
    return skill.harm(skill_evidence(annotator, counts, params.collusion_min_pairs), params.harm)


def low_trust_reason(annotator: AnnotatorRec, params: RuleParams) -> str:
    return (
        f"{REMOVED_LOW_TRUST}: trust {annotator.trust:.3f} < minimum {params.min_accuracy:.2f} "
        f"after {annotator.gold_seen} gold answers ({annotator.gold_missed} missed)"
    )


# --- speed trap ---------------------------------------------------------------------------------


def is_too_fast(seconds: float, params: RuleParams) -> bool:
    return params.min_seconds_per_page > 0 and seconds < params.min_seconds_per_page


def speed_trap_removes(annotator: AnnotatorRec, params: RuleParams) -> bool:
    if annotator.status not in (ACTIVE, QUIZ):
        return False
    reinstated = annotator.flags.get("reinstated") or {}
    since = int(reinstated.get("speed_trips", 0))
    return annotator.speed_trips - since >= params.speed_trap_limit


SPEED_WARNING_START = "That page was submitted in "


def is_speed_warning(message: str | None) -> bool:
    return bool(message) and str(message).startswith(SPEED_WARNING_START)


def speed_warning(seconds: float, annotator: AnnotatorRec, params: RuleParams) -> str:
    left = params.speed_trap_limit - annotator.speed_trips
    minimum = params.min_seconds_per_page
    warning = (
        f"{SPEED_WARNING_START}{seconds:.0f} s, faster than the {minimum:.0f} s a careful "
        "look at every image takes, so its answers were not counted."
    )
    if left > 0:
        warning += f" After {left} more such page(s) you will be removed from this job."
    return warning


# --- answer distribution ------------------------------------------------------------------------


def entropy_bits(counts: dict[str, int]) -> float:
    total = sum(counts.values())
    if total == 0:
        return 0.0
    return -sum((c / total) * math.log2(c / total) for c in counts.values() if c > 0)


def distribution_evidence(counts: AnswerCounts, params: RuleParams) -> dict[str, Any] | None:
    """The implausible-distribution rules that fire, with the numbers behind them, or None.

    An honest annotator looking at a mix of NORMAL and PNEUMONIA images cannot give the same
    label (or the same certainty) every time, and their label mix cannot be far from the
    prevalence the job designer expects. One-button annotators are caught by all three.
    """
    n = counts.n_answers
    if n < params.distribution_min_answers:
        return None
    labels = dict(sorted(counts.labels.items()))
    certainty = dict(sorted(counts.certainty.items()))
    shares = {label: c / n for label, c in labels.items()}
    fired: list[str] = []
    if len(labels) == 1:
        fired.append("single_label")
    if len(certainty) == 1:
        fired.append("single_certainty")
    entropy = entropy_bits(labels)
    if entropy < params.distribution_min_entropy_bits:
        fired.append("low_entropy")
    gaps = {
        label: round(abs(shares.get(label, 0.0) - expected), 4)
        for label, expected in sorted(params.expected_prevalence.items())
    }
    max_gap = max(gaps.values(), default=0.0)
    if max_gap > params.distribution_max_prevalence_gap:
        fired.append("prevalence_gap")
    if not fired:
        return None
    return {
        "rules": fired,
        "answers": n,
        "label_counts": labels,
        "certainty_counts": certainty,
        "entropy_bits": round(entropy, 4),
        "min_entropy_bits": params.distribution_min_entropy_bits,
        "prevalence_gaps": gaps,
        "max_prevalence_gap": params.distribution_max_prevalence_gap,
        "expected_prevalence": dict(sorted(params.expected_prevalence.items())),
    }


def distribution_reason(evidence: dict[str, Any]) -> str:
    return (
        f"{REMOVED_DISTRIBUTION}: {', '.join(evidence['rules'])} over {evidence['answers']} "
        f"answers (labels {evidence['label_counts']})"
    )
