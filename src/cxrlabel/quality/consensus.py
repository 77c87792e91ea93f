"""Dynamic judgments: when an image has enough trusted answers, and when an expert must look.

``evaluate`` is a pure function of an image's current judgments and its annotators' current
trust; it is re-run whenever that set changes (a new judgment, a taint or un-taint, a gold
correction that changes trust), so removing an annotator re-opens exactly the images whose
finalisation no longer holds.

Rules (all thresholds from the job spec):

1. Only *trusted* judgments count: untainted answers on work images.
2. ``spec.review.quality_flag_votes`` image-quality flags -> expert review, at any count.
3. Fewer than ``judgments.min`` trusted judgments -> needs judgments (target = min).
4. "Can't tell" answers make up >= ``review.cant_tell_fraction`` (and are at least two) ->
   expert review.
5. Confidence >= ``judgments.confidence_target`` -> finalised.
6. ``judgments.max`` reached without the target -> expert review (no consensus).
   With the online posterior and ``judgments.review_when_hopeless``, also before ``max``: when
   even ``max - trusted`` further answers that all agreed with the leading label, each as
   accurate as the crowd's typical work answer (``quality.peer_accuracy``), would leave the
   posterior below the target (``hopeless``). The expert labels such an image anyway, so the
   judgments it would have taken first buy nothing.
7. Otherwise ask for one more judgment (target = trusted + 1, at most max).

With ``review.model_disagreement = t`` (off by default), an image that rule 5 would finalise
goes to expert review instead (``model_disagreement``) when a model score is known and the
model confidently says the other thing: p(positive) >= t while the crowd says the other label,
or p(positive) <= 1 - t while the crowd says the positive label (``PNEUMONIA``).

With ``judgments.min_if_model_agrees = m`` (0 = off, the default), rule 3 has one exception:
an image with at least ``m`` (but fewer than ``judgments.min``) trusted judgments is finalised
when rules 2 and 4 do not apply, the crowd's confidence reaches the target, and the model
confidently says the same thing (p(positive) >= ``judgments.model_confidence`` for the
positive label, <= 1 - that for the other). The model is then a tie-breaker that saves the
last judgments on easy images; it never finalises an image on its own, nor against the crowd.

"Can't tell" answers count as judgments for the target (the annotator did look, and several of
them are a signal in themselves: rule 4) but carry no weight in the confidence: an honest "I
cannot decide" must not dilute, or vote for, either label. So three "can't tell" plus two
agreeing answers give confidence 1.0 on those two, but go to an expert by rule 4 first.

Confidence is Appen's trust-weighted confidence (the sum of the trust of the annotators who gave
the answer over the sum of the trust of all annotators on the item) from
``cxrlabel.aggregate``. ``spec.aggregation.method`` picks the method when it is defined for a
single image ("trust" or "mv"); the population models ("ds", "glad", "certainty") need the
whole job and run in the results stage, so the online decision uses "trust" for them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cxrlabel.aggregate import fit
from cxrlabel.vocab import PNEUMONIA

from .state import FINALISED, NEEDS_JUDGMENTS, NEEDS_REVIEW, JudgmentRec

if TYPE_CHECKING:  # the spec is only read here; no pydantic import at run time
    from cxrlabel.jobspec import JobSpec

ONLINE_METHODS = ("trust", "mv")
POSTERIOR = "posterior"
# Trust is clipped to this range before it becomes a log-likelihood ratio: nobody's single
# answer may be certain, and trust below a coin's carries no information.
POSTERIOR_TRUST_RANGE = (0.5, 0.98)
# On an exact tie the label shown is the one that is harmful to miss; a tie never finalises.
TIE_BREAK_LABEL = PNEUMONIA
TIE_ATOL = 1e-12  # the tolerance of ``cxrlabel.aggregate.base.argmax_tie_break``

# One "can't tell" is one person's doubt, two are a signal: with ``judgments.min = 2`` a single
# "can't tell" among two answers asks for a third judgment instead of an expert. Only with the
# online posterior, where one remaining answer settles the image only if the posterior (prior
# and that annotator's trust) reaches the target; a trust share of one answer is always 1.0.
# With min >= 3 a fraction >= 1/2 already means at least two.
CANT_TELL_MIN = 2
REVIEW_QUALITY = "image_quality"
REVIEW_CANT_TELL = "cant_tell"
REVIEW_NO_CONSENSUS = "no_consensus"
REVIEW_MODEL = "model_disagreement"
# The label a model score is the probability of (``Image.model_score`` = p(PNEUMONIA)).
MODEL_POSITIVE_LABEL = PNEUMONIA


@dataclass(frozen=True)
class ConsensusParams:
    labels: tuple[str, ...]
    cant_tell: str
    min_judgments: int
    max_judgments: int
    confidence_target: float
    cant_tell_fraction: float
    quality_flag_votes: int
    method: str = "trust"
    # Review rule: a finalised crowd label against a model this confident goes to an expert.
    model_disagreement: float | None = None
    # Rule 3 exception: this many trusted judgments suffice when a confident model agrees.
    min_if_model_agrees: int = 0
    model_confidence: float = 0.9
    # The online posterior (``aggregation.online = "posterior"``).
    online: str = "auto"
    prior: tuple[float, ...] | None = None  # per label, from quality.expected_prevalence
    certainty_weights: tuple[tuple[str, float], ...] = ()
    # Rule 6 before max (``judgments.review_when_hopeless``, posterior only); the accuracy
    # assumed for each judgment still to come is the crowd's typical one on work images.
    review_when_hopeless: bool = False
    next_answer_accuracy: float = 0.75

    @classmethod
    def from_spec(cls, spec: JobSpec) -> ConsensusParams:
        return cls(
            labels=tuple(spec.label_values),
            cant_tell=spec.certainty.cant_tell,
            min_judgments=spec.judgments.min,
            max_judgments=spec.judgments.max,
            confidence_target=spec.judgments.confidence_target,
            cant_tell_fraction=spec.review.cant_tell_fraction,
            quality_flag_votes=spec.review.quality_flag_votes,
            method=spec.aggregation.method,
            model_disagreement=spec.review.model_disagreement_threshold,
            min_if_model_agrees=spec.judgments.min_if_model_agrees,
            model_confidence=spec.judgments.model_confidence,
            online=spec.aggregation.online,
            prior=_prior(spec),
            certainty_weights=tuple(sorted(spec.certainty_weights.items())),
            review_when_hopeless=spec.judgments.review_when_hopeless,
            next_answer_accuracy=spec.quality.peer_accuracy,
        )

    @property
    def online_method(self) -> str:
        if self.online == POSTERIOR:
            return POSTERIOR
        return self.method if self.method in ONLINE_METHODS else "trust"


def _prior(spec: JobSpec) -> tuple[float, ...] | None:
    prevalence = spec.quality.expected_prevalence
    labels = spec.label_values
    if not prevalence or any(prevalence.get(label, 0.0) <= 0 for label in labels):
        return None
    total = sum(prevalence[label] for label in labels)
    return tuple(prevalence[label] / total for label in labels)


@dataclass(frozen=True)
class Evaluation:
    status: str
    judgment_target: int
    trusted_judgments: int
    label: str | None
    confidence: float | None
    proba: dict[str, float] | None
    method: str | None
    review_reason: str | None = None


def trusted(judgments: Sequence[JudgmentRec]) -> list[JudgmentRec]:
    return [j for j in judgments if not j.tainted and not j.is_gold]


def aggregate_one(
    answers: Sequence[str],
    weights: Sequence[float],
    params: ConsensusParams,
    certainties: Sequence[str] | None = None,
) -> tuple[str | None, float | None, dict[str, float] | None]:
    """Label, confidence and per-label probability for one image's weighted answers.

    Runs on every re-evaluated image (nine per submitted page, hundreds per removal), so the two
    online methods are computed here directly: the same sums, in the same order, and the same
    tie rule as ``cxrlabel.aggregate``'s ``TrustWeighted`` / ``MajorityVote`` (bit-identical,
    tested), at a hundredth of the cost of building their arrays for one item.
    """
    if not answers:
        return None, None, None
    if params.online_method == POSTERIOR:
        return posterior_one(answers, weights, certainties or ["" for _ in answers], params)
    labels = params.labels
    index = {label: k for k, label in enumerate(labels)}
    votes = [0.0] * len(labels)
    plain = params.online_method == "mv"
    for answer, weight in zip(answers, weights, strict=True):
        votes[index[answer]] += 1.0 if plain else float(weight)
    total = 0.0
    for v in votes:
        total += v
    # Every answer from an annotator with trust 0 carries no information: a uniform row.
    proba = [v / total for v in votes] if total > 0 else [1.0 / len(labels)] * len(labels)
    best = max(range(len(labels)), key=lambda k: (proba[k], -k))  # first maximum
    tie = index.get(TIE_BREAK_LABEL)
    if tie is not None and proba[tie] >= proba[best] - TIE_ATOL:
        best = tie
    return labels[best], proba[best], dict(zip(labels, proba, strict=True))


def posterior_one(
    answers: Sequence[str],
    weights: Sequence[float],
    certainties: Sequence[str],
    params: ConsensusParams,
) -> tuple[str, float, dict[str, float]]:
    """One-coin Bayesian posterior of the image's label (Dawid-Skene with one accuracy per
    annotator, Raykar's certainty-aware variant in spirit).

    Each answer adds log(acc (K - 1) / (1 - acc)) to its label's score, where acc is the
    annotator's trust moved towards a coin by the certainty weight (``probably`` = 0.6 of the
    way): acc = 1/2 + (trust - 1/2) w. The prior is the expected prevalence (uniform when the
    job gives none). The label is the posterior's mode (ties: ``TIE_BREAK_LABEL``) and the
    confidence its probability, so ``confidence_target`` reads as "the chance the label is
    right" and the crowd stops as soon as that is high enough.
    """
    labels = params.labels
    k = len(labels)
    index = {label: i for i, label in enumerate(labels)}
    cw = dict(params.certainty_weights)
    low, high = POSTERIOR_TRUST_RANGE
    score = [math.log(p) for p in params.prior] if params.prior else [0.0] * k
    for answer, weight, certainty in zip(answers, weights, certainties, strict=True):
        trust = min(max(float(weight), low), high)
        accuracy = 0.5 + (trust - 0.5) * cw.get(certainty, 1.0)
        score[index[answer]] += math.log(accuracy * (k - 1) / (1.0 - accuracy))
    top = max(score)
    exp = [math.exp(v - top) for v in score]
    total = sum(exp)
    proba = [v / total for v in exp]
    best = max(range(k), key=lambda i: (proba[i], -i))
    tie = index.get(TIE_BREAK_LABEL)
    if tie is not None and proba[tie] >= proba[best] - TIE_ATOL:
        best = tie
    return labels[best], proba[best], dict(zip(labels, proba, strict=True))


def aggregate_one_with_fit(
    answers: Sequence[str], weights: Sequence[float], params: ConsensusParams
) -> tuple[str | None, float | None, dict[str, float] | None]:
    """``aggregate_one`` through ``cxrlabel.aggregate.fit``: the reference it must equal."""
    if not answers:
        return None, None, None
    index = {label: k for k, label in enumerate(params.labels)}
    codes = np.array([index[a] for a in answers], dtype=np.int64)
    tie = index.get(TIE_BREAK_LABEL)
    result = fit(
        np.zeros(len(codes), dtype=np.int64),
        np.arange(len(codes), dtype=np.int64),  # one worker per answer: weights are per answer
        codes,
        len(params.labels),
        method=params.online_method,
        n_items=1,
        trust=np.asarray(weights, dtype=float),
        tie_break=tie,
    )
    proba = {label: float(result.proba[0, k]) for k, label in enumerate(params.labels)}
    label = params.labels[int(result.labels[0])]
    return label, float(result.confidence[0]), proba


def model_disagrees(label: str | None, model_score: float | None, params: ConsensusParams) -> bool:
    """The crowd's label against a confident model opinion (rule in the module docstring)."""
    threshold = params.model_disagreement
    if threshold is None or model_score is None or label is None:
        return False
    if label == MODEL_POSITIVE_LABEL:
        return model_score <= 1.0 - threshold + 1e-12
    return model_score >= threshold - 1e-12


def model_agrees(label: str | None, model_score: float | None, params: ConsensusParams) -> bool:
    """A confident model opinion equal to the crowd's label (the rule 3 exception)."""
    if params.min_if_model_agrees <= 0 or model_score is None or label is None:
        return False
    if label == MODEL_POSITIVE_LABEL:
        return model_score >= params.model_confidence - 1e-12
    return model_score <= 1.0 - params.model_confidence + 1e-12


def _settled_early(
    n: int,
    n_voting: int,
    label: str | None,
    confidence: float | None,
    model_score: float | None,
    params: ConsensusParams,
) -> bool:
    """Fewer than ``min`` judgments, but enough because the model agrees (rule 3 exception)."""
    return (
        0 < params.min_if_model_agrees <= n
        and (n - n_voting) / n < params.cant_tell_fraction
        and confidence is not None
        and confidence >= params.confidence_target - 1e-12
        and model_agrees(label, model_score, params)
    )


def hopeless(n: int, confidence: float | None, params: ConsensusParams) -> bool:
    """Rule 6 before ``max``: the judgments left cannot lift the posterior to the target.

    Each further answer agreeing with the leading label adds at most
    log(a (K - 1) / (1 - a)) to its log-odds, a = ``next_answer_accuracy``; if ``max - n`` of
    them still fall short of logit(``confidence_target``), asking them is paying for answers
    the expert will overrule or repeat."""
    if not params.review_when_hopeless or params.online_method != POSTERIOR:
        return False
    if confidence is None or confidence >= 1.0:
        return False
    k, a = len(params.labels), params.next_answer_accuracy
    if a >= 1.0:
        return False
    gain_per_answer = math.log(a * (k - 1) / (1.0 - a))
    reachable = (
        math.log(confidence / (1.0 - confidence)) + (params.max_judgments - n) * gain_per_answer
    )
    target = params.confidence_target
    return target < 1.0 and reachable < math.log(target / (1.0 - target)) - 1e-12


def evaluate(
    judgments: Sequence[JudgmentRec],
    trust_of: dict[int, float],
    params: ConsensusParams,
    model_score: float | None = None,
) -> Evaluation:
    counted = trusted(judgments)
    n = len(counted)
    voting = [j for j in counted if j.certainty != params.cant_tell]
    label, confidence, proba = aggregate_one(
        [j.answer for j in voting],
        [trust_of[j.user_id] for j in voting],
        params,
        [j.certainty for j in voting],
    )
    method = params.online_method if voting else None

    def result(status: str, target: int, reason: str | None = None) -> Evaluation:
        return Evaluation(status, target, n, label, confidence, proba, method, reason)

    settled_target = max(params.min_judgments, n)
    flags = sum(1 for j in counted if j.quality_flag)
    if flags >= params.quality_flag_votes:
        return result(NEEDS_REVIEW, settled_target, REVIEW_QUALITY)
    if n < params.min_judgments:
        if _settled_early(n, len(voting), label, confidence, model_score, params):
            return result(FINALISED, n)
        return result(NEEDS_JUDGMENTS, params.min_judgments)
    n_cant_tell = n - len(voting)
    least = CANT_TELL_MIN if params.online_method == POSTERIOR else 1
    if n_cant_tell >= least and n_cant_tell / n >= params.cant_tell_fraction:
        return result(NEEDS_REVIEW, settled_target, REVIEW_CANT_TELL)
    if confidence is not None and confidence >= params.confidence_target - 1e-12:
        if model_disagrees(label, model_score, params):
            return result(NEEDS_REVIEW, settled_target, REVIEW_MODEL)
        return result(FINALISED, settled_target)
    if n >= params.max_judgments or hopeless(n, confidence, params):
        return result(NEEDS_REVIEW, settled_target, REVIEW_NO_CONSENSUS)
    return result(NEEDS_JUDGMENTS, min(n + 1, params.max_judgments))
