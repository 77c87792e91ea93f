"""The skill estimate and the harm rule (pure functions, ``quality/skill.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from cxrlabel.quality import skill
from cxrlabel.quality.skill import HarmParams, SkillEvidence, estimate_skill, harm


def simulate_evidence(
    rng: np.random.Generator,
    accuracy: float,
    *,
    gold_accuracy: float | None = None,
    gold: int = 20,
    pairs: int = 200,
    peer_accuracy: float = 0.75,
) -> SkillEvidence:
    """Counts an annotator of this accuracy would earn (one-coin model, independent peers)."""
    gold_acc = accuracy if gold_accuracy is None else gold_accuracy
    correct = int(rng.binomial(gold, gold_acc))
    own = rng.random(pairs) < accuracy
    peer = rng.random(pairs) < peer_accuracy
    agree = int(np.sum(own == peer))
    return SkillEvidence(gold_seen=gold, gold_correct=correct, peer_pairs=pairs, peer_agree=agree)


def test_implied_accuracy_inverts_the_one_coin_agreement():
    for p in (0.1, 0.5, 0.76, 0.95):
        for q in (0.6, 0.75, 0.9):
            agreement = p * q + (1 - p) * (1 - q)
            assert skill.implied_accuracy(agreement, q) == pytest.approx(p)
    with pytest.raises(ValueError):
        skill.implied_accuracy(0.6, 0.5)


def test_beta_estimate_narrows_with_evidence_and_rejects_nonsense():
    few, many = skill.beta_estimate(7, 10), skill.beta_estimate(70, 100)
    assert few.low < many.low < many.mean < many.high < few.high
    assert skill.beta_estimate(0, 0).mean == 0.5
    with pytest.raises(ValueError):
        skill.beta_estimate(5, 3)


def test_honest_weak_annotators_are_kept_and_harmful_ones_removed():
    """Over many simulated annotators: weak-but-honest (0.65-0.76) almost never removed;
    adversaries, coin-flippers and gold harvesters almost always removed."""
    rng = np.random.default_rng(3)
    params = HarmParams()
    kept = [
        harm(simulate_evidence(rng, acc), params) is None for acc in rng.uniform(0.68, 0.9, 300)
    ]
    assert np.mean(kept) >= 0.98
    # A coin-flipper needs more work than a liar before the evidence is credible.
    coin = [harm(simulate_evidence(rng, 0.5, pairs=1000), params) is not None for _ in range(200)]
    assert np.mean(coin) >= 0.9
    liars = [harm(simulate_evidence(rng, 0.2), params) for _ in range(100)]
    assert all(h is not None and h.code == skill.REASON_ADVERSARIAL for h in liars)
    harvesters = [harm(simulate_evidence(rng, 0.2, gold_accuracy=1.0), params) for _ in range(100)]
    assert all(h is not None and h.code == skill.REASON_PEER_DISAGREEMENT for h in harvesters)


def test_no_verdict_before_enough_evidence():
    params = HarmParams(min_gold=5, min_peer_pairs=30)
    assert harm(SkillEvidence(gold_seen=4, gold_correct=0), params) is None
    assert harm(SkillEvidence(peer_pairs=29, peer_agree=0), params) is None
    assert harm(SkillEvidence(peer_pairs=30, peer_agree=0), params) is not None


def test_the_rule_is_monotone_in_agreement():
    """More agreement with peers never turns a kept annotator into a removed one."""
    params = HarmParams()
    verdicts = [harm(SkillEvidence(10, 8, 100, agree), params) is None for agree in range(101)]
    first_kept = verdicts.index(True)
    assert all(verdicts[first_kept:])


def test_every_reason_code_has_text_and_status_reasons_parse():
    evidence = SkillEvidence(gold_seen=20, gold_correct=20, peer_pairs=100, peer_agree=20)
    verdict = harm(evidence, HarmParams())
    assert verdict is not None and verdict.code == skill.REASON_PEER_DISAGREEMENT
    assert skill.reason_text(verdict.status_reason) == skill.REMOVAL_REASONS[verdict.code]
    assert skill.reason_text("speed_trap: 3 pages") == skill.REMOVAL_REASONS["speed_trap"]
    assert skill.reason_text(None) is None
    assert estimate_skill(evidence, 0.75).as_dict()["gold"]["n"] == 20


def test_pairs_with_a_colluding_partner_are_no_evidence():
    """quality.collusion_min_pairs: a ring account agrees with its partner on every shared image
    and with the crowd by chance; without the partner's pairs its agreement is a coin's."""
    from cxrlabel.quality.rules import colluding_partners, skill_evidence
    from cxrlabel.quality.state import AnnotatorRec, AnswerCounts

    ring = AnswerCounts(peer_pairs=360, peer_agree=200, peer_tally={7: [60, 60], 8: [300, 140]})
    honest = AnswerCounts(
        peer_pairs=300, peer_agree=225, peer_tally={1: [12, 12], 2: [9, 9], 3: [279, 204]}
    )
    perfect_gold = AnnotatorRec(1, status="active", gold_seen=30, gold_missed=0)
    params = HarmParams(peer_accuracy=0.75, harm_accuracy=0.6, min_gold=5, min_peer_pairs=30)
    # Off (0), the ring's agreement with itself lifts it above a coin: kept.
    assert harm(skill_evidence(perfect_gold, ring), params) is None
    assert colluding_partners(ring, 0) == {}
    # On, the partner is found and its pairs leave: 140 of 300, and good gold -> removed.
    assert colluding_partners(ring, 10) == {7: [60, 60]}
    evidence = skill_evidence(perfect_gold, ring, 10)
    assert (evidence.peer_pairs, evidence.peer_agree) == (300, 140)
    assert harm(evidence, params).code == skill.REASON_PEER_DISAGREEMENT
    # An honest annotator who agreed with one peer on 12 easy images loses those 12 pairs
    # (9 pairs are too few to judge), and still agrees on 213 of 288: kept.
    assert colluding_partners(honest, 10) == {1: [12, 12]}
    assert harm(skill_evidence(perfect_gold, honest, 10), params) is None
    # The per-peer tally survives the stored form.
    assert AnswerCounts.from_dict(ring.to_dict()) == ring
