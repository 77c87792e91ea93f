"""The pure quality core (no database): trust, rules, consensus, and a property test over random
event sequences: invariants hold after every event, and the incremental path (a state that
loads copies of stored records on demand, as the database adapter does) agrees with a replay
from scratch."""

from __future__ import annotations

import copy
import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cxrlabel.quality import rules
from cxrlabel.quality.consensus import ConsensusParams, evaluate
from cxrlabel.quality.engine import Engine, new_state, replay
from cxrlabel.quality.events import (
    AnnotatorReinstated,
    AnnotatorRemoved,
    ContestOpened,
    ContestUpheld,
    ExpertLabeled,
    GoldChanged,
    JudgmentIn,
    PageSubmitted,
)
from cxrlabel.quality.state import (
    DISQUALIFIED,
    EXPERT,
    FINALISED,
    GOLD,
    REMOVED,
    AnswerCounts,
    GoldRec,
    JudgmentRec,
    QualityState,
)
from cxrlabel.quality.trust import beta_trust
from quality_support import make_spec

LABELS = ("NORMAL", "PNEUMONIA")


def test_beta_trust_smooths_towards_the_prior():
    assert beta_trust(0, 0, 2.0, 1.0) == pytest.approx(2 / 3)  # prior mean before any gold
    assert beta_trust(1, 1, 2.0, 1.0) == pytest.approx(3 / 4)  # one hit is not perfection
    assert beta_trust(0, 1, 2.0, 1.0) == pytest.approx(2 / 4)  # one miss is not worthlessness
    assert beta_trust(18, 20, 2.0, 1.0) == pytest.approx(20 / 23)
    assert beta_trust(0, 0, 0.0, 0.0) == 1.0  # no prior, no evidence: a plain vote
    with pytest.raises(ValueError):
        beta_trust(3, 2, 1.0, 1.0)


def test_quiz_pass_uses_the_same_trust_as_removal():
    params = rules.RuleParams.from_spec(
        make_spec(quiz_length=8, min_accuracy=0.75, prior_correct=2.0, prior_missed=1.0)
    )
    seven = AnswerCounts(quiz_seen=8, quiz_missed=1)
    six = AnswerCounts(quiz_seen=8, quiz_missed=2)
    assert rules.quiz_passes(seven, params) and not rules.quiz_passes(six, params)


def test_distribution_rules_fire_with_evidence():
    params = rules.RuleParams.from_spec(make_spec(dist_min=10))
    honest = AnswerCounts(
        labels=Counter(NORMAL=4, PNEUMONIA=8), certainty=Counter(definitely=9, probably=3)
    )
    assert rules.distribution_evidence(honest, params) is None
    few = AnswerCounts(labels=Counter(PNEUMONIA=9), certainty=Counter(definitely=9))
    assert rules.distribution_evidence(few, params) is None  # below the minimum answers
    skewed = AnswerCounts(
        labels=Counter(NORMAL=11, PNEUMONIA=1), certainty=Counter(definitely=6, probably=6)
    )
    evidence = rules.distribution_evidence(skewed, params)
    assert evidence["rules"] == ["prevalence_gap"]
    assert evidence["prevalence_gaps"]["NORMAL"] == pytest.approx(11 / 12 - 0.3, abs=1e-4)


def _j(jid, user, answer, certainty="definitely", flag=None, taints=()):
    return JudgmentRec(jid, 1, user, 1, answer, certainty, flag, taints=set(taints))


def test_cant_tell_counts_for_the_target_but_not_the_confidence():
    params = ConsensusParams.from_spec(make_spec(jmin=3, jmax=5, cant_tell_fraction=0.5))
    js = [_j(1, 1, "PNEUMONIA"), _j(2, 2, "PNEUMONIA"), _j(3, 3, "NORMAL", "cant_tell")]
    ev = evaluate(js, {1: 0.8, 2: 0.8, 3: 0.8}, params)
    assert (ev.status, ev.trusted_judgments, ev.confidence) == ("finalised", 3, 1.0)


def test_one_cant_tell_among_two_asks_for_a_third_judgment_two_go_to_review():
    """With the online posterior (a trust share would finalise on the one remaining vote)."""
    params = ConsensusParams.from_spec(
        make_spec(jmin=2, jmax=5, cant_tell_fraction=0.5, target=0.95, online="posterior")
    )
    one = [_j(1, 1, "PNEUMONIA"), _j(2, 2, "NORMAL", "cant_tell")]
    ev = evaluate(one, {1: 0.7, 2: 0.8}, params)
    assert (ev.status, ev.judgment_target) == ("needs_judgments", 3)
    two = [*one, _j(3, 3, "PNEUMONIA", "cant_tell")]
    assert evaluate(two, {1: 0.7, 2: 0.8, 3: 0.8}, params).review_reason == "cant_tell"


def test_trust_weighted_confidence_and_taints():
    params = ConsensusParams.from_spec(make_spec(jmin=3, jmax=5, target=0.8))
    js = [_j(1, 1, "PNEUMONIA"), _j(2, 2, "NORMAL"), _j(3, 3, "NORMAL", taints=["speed_trap"])]
    ev = evaluate(js, {1: 0.9, 2: 0.3}, params)
    assert ev.trusted_judgments == 2 and ev.status == "needs_judgments"
    assert ev.proba["PNEUMONIA"] == pytest.approx(0.9 / 1.2)
    mv = evaluate(js, {1: 0.9, 2: 0.3}, ConsensusParams.from_spec(make_spec(method="mv")))
    assert mv.proba["PNEUMONIA"] == pytest.approx(0.5) and mv.label == "PNEUMONIA"  # tie rule
    ds = ConsensusParams.from_spec(make_spec(method="ds"))
    assert ds.online_method == "trust"


def test_cant_tell_on_hard_gold_is_no_miss_but_on_clear_gold_it_is():
    from cxrlabel.quality.outcomes import gold_missed
    from cxrlabel.quality.state import GoldRec

    hard, clear = GoldRec(1, ("PNEUMONIA",), difficulty="hard"), GoldRec(1, ("PNEUMONIA",))
    unsure = _j(1, 1, "NORMAL", "cant_tell")
    assert gold_missed(unsure, hard, "cant_tell") is False
    assert gold_missed(unsure, clear, "cant_tell") is True
    assert gold_missed(_j(2, 1, "NORMAL"), hard, "cant_tell") is True  # a wrong label still is


def test_online_posterior_weighs_trust_certainty_and_prevalence():
    from dataclasses import replace

    params = replace(
        ConsensusParams.from_spec(make_spec(jmin=2, jmax=5, target=0.9)), online="posterior"
    )
    assert params.online_method == "posterior"
    assert params.prior == pytest.approx((0.3, 0.7))
    sure = [_j(1, 1, "NORMAL"), _j(2, 2, "NORMAL")]
    ev = evaluate(sure, {1: 0.85, 2: 0.85}, params)
    # log-odds: log(0.3/0.7) + 2 log(0.85/0.15) = 2.62 -> p(NORMAL) = 0.932
    assert ev.label == "NORMAL" and ev.confidence == pytest.approx(0.9323, abs=1e-3)
    assert ev.status == "finalised"
    unsure = [_j(1, 1, "NORMAL", "probably"), _j(2, 2, "NORMAL", "probably")]
    ev = evaluate(unsure, {1: 0.85, 2: 0.85}, params)
    assert ev.confidence < 0.9 and ev.status == "needs_judgments"  # asks for a third
    weak = evaluate(sure, {1: 0.5, 2: 0.45}, params)  # no better than a coin: the prior wins
    assert weak.label == "PNEUMONIA" and weak.confidence == pytest.approx(0.7)
    split = [_j(1, 1, "NORMAL"), _j(2, 2, "PNEUMONIA")]
    tie = evaluate(split, {1: 0.8, 2: 0.8}, replace(params, prior=None))
    assert tie.label == "PNEUMONIA" and tie.proba["NORMAL"] == pytest.approx(0.5)


def test_hopeless_image_goes_to_review_before_max_only_when_switched_on():
    from dataclasses import replace

    base = replace(
        ConsensusParams.from_spec(make_spec(jmin=2, jmax=6, target=0.97)), online="posterior"
    )
    on = replace(base, review_when_hopeless=True, next_answer_accuracy=0.75)
    trust = {u: 0.85 for u in range(1, 7)}
    # 2 against 2 after four: two more agreeing answers at 0.75 (log-odds +1.10 each) cannot
    # lift the leader from ~0.70 to 0.97, so the expert gets it now; without the switch, a fifth.
    split = [_j(1, 1, "NORMAL"), _j(2, 2, "PNEUMONIA"), _j(3, 3, "NORMAL"), _j(4, 4, "PNEUMONIA")]
    ev = evaluate(split, trust, on)
    assert (ev.status, ev.review_reason, ev.judgment_target) == ("needs_review", "no_consensus", 4)
    assert evaluate(split, trust, base).status == "needs_judgments"
    # 3 to 1 after four: two more agreeing answers could settle it, so one more is asked for.
    lead = [*split[:3], _j(4, 4, "NORMAL", "probably")]
    assert evaluate(lead, trust, on).status == "needs_judgments"
    # The same split with more answers still to come is not hopeless yet.
    assert evaluate(split, trust, replace(on, max_judgments=10)).status == "needs_judgments"
    # Only the posterior's confidence is a probability: the trust share never triggers it.
    assert evaluate(split, trust, replace(on, online="auto")).status == "needs_judgments"


# --- property test ------------------------------------------------------------------------------

USERS = (1, 2, 3, 4, 5)
WORK = tuple(range(1, 9))
GOLD_ANSWERS = {101: ("PNEUMONIA",), 102: ("NORMAL",), 103: ("PNEUMONIA",), 104: ("NORMAL",)}


class StoredState(QualityState):
    """Stands in for the database: loads deep copies of another state's records on demand."""

    def __init__(self, store: QualityState, spec) -> None:
        super().__init__(default_status=store.default_status, default_target=store.default_target)
        self.store = store

    def _load_annotator(self, user_id):
        rec = self.store.annotators.get(user_id)
        return copy.deepcopy(rec) if rec else None

    def _load_image(self, image_id):
        return copy.deepcopy(self.store.image(image_id))

    def _load_gold(self, image_id):
        return copy.deepcopy(self.store.gold.get(image_id))

    def _load_counts(self, user_id):
        return copy.deepcopy(self.store._counts.get(user_id))

    def _load_judgments_on(self, image_id):
        return [copy.deepcopy(j) for j in self.store.judgments_on(image_id)]

    def _load_judgments_by(self, user_id):
        return [copy.deepcopy(j) for j in self.store.judgments_by(user_id)]

    def write_back(self):
        """Store every record this unit of work loaded or created (like the adapter does)."""
        self.store.annotators.update(self.annotators)
        self.store.images.update(self.images)
        self.store.gold.update(self.gold)
        self.store._counts.update(self._counts)
        for jid, rec in self.judgments.items():
            old = self.store.judgments.get(jid)
            if old is None:
                self.store.add_judgment(rec)
            else:
                for name in ("gold_missed", "trust_at_time", "taints"):
                    setattr(old, name, getattr(rec, name))


def _seed(state: QualityState) -> None:
    for image_id, accepted in GOLD_ANSWERS.items():
        state.add_gold(GoldRec(image_id, accepted))


def _build_events(ops, spec):
    """Turn random choices into a plausible event log, consulting a reference state the way
    the service consults the database (e.g. only removed annotators can be reinstated)."""
    ref = new_state(spec)
    _seed(ref)
    engine = Engine(ref, spec)
    events, seen, next_id = [], {u: set() for u in USERS}, [1]
    for op in ops:
        kind, user, pick, answer_bits, seconds = op
        status = ref.annotators[user].status if user in ref.annotators else ref.default_status
        event = None
        if kind == "page" and status in ("quiz", "active"):
            quiz = status == "quiz"
            pool = list(GOLD_ANSWERS) if quiz else list(WORK) + list(GOLD_ANSWERS)
            pool = [i for i in pool if i not in seen[user]]
            random.Random(pick).shuffle(pool)
            items = pool[: 3 if quiz else 4]
            if items:
                judgments = []
                for k, image_id in enumerate(items):
                    bits = (answer_bits >> (3 * k)) & 7
                    judgments.append(
                        JudgmentIn(
                            next_id[0],
                            image_id,
                            LABELS[bits & 1],
                            ("definitely", "probably", "cant_tell", "definitely")[bits >> 1 & 3]
                            if bits != 7
                            else "definitely",
                            "unreadable" if bits == 6 else None,
                            image_id in GOLD_ANSWERS,
                            quiz,
                        )
                    )
                    next_id[0] += 1
                    seen[user].add(image_id)
                event = PageSubmitted(
                    user,
                    len(events) + 1,
                    "quiz" if quiz else "work",
                    float(seconds),
                    tuple(judgments),
                    active_gold=4,
                )
        elif kind == "remove" and status in ("quiz", "active"):
            event = AnnotatorRemoved(user, "random removal", by=99)
        elif kind == "reinstate" and status == REMOVED:
            event = AnnotatorReinstated(user, "random reinstatement", by=99)
        elif kind == "gold":
            image_id = 101 + pick % 4
            event = GoldChanged(
                image_id,
                (LABELS[0], LABELS[1])[: 1 + answer_bits % 2] if answer_bits % 3 else (LABELS[1],),
                by=99,
            )
        elif kind == "contest":
            mine = [j for j in ref.judgments_by(user) if j.is_gold]
            known = ref.annotators.get(user)  # (a lookup would create the record)
            pending = (known.flags.get("contested") or []) if known else []
            if pending and answer_bits % 2:  # an admin upholds an open contest
                event = ContestUpheld(len(events) + 1, pending[pick % len(pending)], user)
            elif mine:
                event = ContestOpened(len(events) + 1, mine[pick % len(mine)].id, user)
        elif kind == "expert":
            image_id = WORK[pick % len(WORK)]
            current = ref.images[image_id].status if image_id in ref.images else None
            if current not in (EXPERT, GOLD):
                event = ExpertLabeled(
                    image_id, LABELS[answer_bits % 2], 99, promote_to_gold=answer_bits % 5 == 0
                )
        if event is not None:
            engine.apply(event)
            events.append(event)
            _check_invariants(ref, spec)
    return events, ref


def _check_invariants(state: QualityState, spec) -> None:
    params = ConsensusParams.from_spec(spec)
    for image_id, image in state.images.items():
        judgments = state.judgments_on(image_id)
        counted = [j for j in judgments if not j.tainted and not j.is_gold]
        if image.status == GOLD:
            continue
        assert image.trusted_judgments == len(counted)
        if image.status == FINALISED:
            assert image.trusted_judgments >= spec.judgments.min
        if image.status == EXPERT:
            continue
        # Tainted judgments never count: only labels given by trusted, voting judgments carry
        # probability. (The aggregate used the trust of its time, so values are not rechecked.)
        voted = {j.answer for j in counted if j.certainty != params.cant_tell}
        if not voted:
            assert image.proba is None and image.label is None
        elif params.online_method == "posterior":  # the prior gives every label some mass
            assert sum(image.proba.values()) == pytest.approx(1.0)
        else:
            assert {k for k, p in image.proba.items() if p > 0} <= voted
            assert image.label in voted or image.confidence == pytest.approx(0.5)
    for annotator in state.annotators.values():
        if annotator.status in (REMOVED, DISQUALIFIED):
            assert all(j.tainted for j in state.judgments_by(annotator.user_id))


OPS = st.lists(
    st.tuples(
        st.sampled_from(["page"] * 12 + ["remove", "reinstate", "gold", "contest", "expert"]),
        st.sampled_from(USERS),
        st.integers(0, 10_000),
        st.integers(0, 2**12 - 1),
        st.sampled_from([1, 30, 60]),
    ),
    min_size=1,
    max_size=50,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, strict=st.booleans())
def test_random_event_sequences_keep_invariants_and_replay(ops, strict):
    spec = make_spec(
        quiz_length=2,
        min_gold=2,
        jmin=2,
        jmax=4,
        min_seconds=10,
        speed_limit=2,
        dist_min=6,
        dist_remove=strict,
        min_accuracy=0.7 if strict else 0.5,
        # Not strict: removal for harm only, with peers judging early, and retakes.
        strict=strict,
        min_peer_pairs=30 if strict else 3,
        quiz_retakes=0 if strict else 1,
        online="auto" if strict else "posterior",
        collusion_min_pairs=0 if strict else 2,  # per-peer tallies replay too
    )
    events, reference = _build_events(ops, spec)

    # Incremental: each event on a fresh state that loads stored copies, then writes back.
    store = new_state(spec)
    _seed(store)
    for event in events:
        unit = StoredState(store, spec)
        Engine(unit, spec).apply(event)
        unit.write_back()
    # Replay: every event from scratch.
    fresh = new_state(spec)
    _seed(fresh)
    replayed = replay(events, spec, fresh).state
    assert store.snapshot() == replayed.snapshot() == reference.snapshot()
    _check_invariants(replayed, spec)
