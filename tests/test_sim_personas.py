"""Personas, crowds, difficulty and sweep logic of the simulator (no database)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from cxrlabel.jobspec import load_job, resolve_job_path
from cxrlabel.sim.crowd import CrowdSpecError, load_crowd, mixed_crowd, parse_crowd, preset_names
from cxrlabel.sim.difficulty import cross_fitted_scores, difficulty_from_scores
from cxrlabel.sim.personas import PERSONAS, Persona
from cxrlabel.sim.sweep import Setting, apply_setting, pareto, recommend

LABELS = ["NORMAL", "PNEUMONIA"]
CERTAINTIES = ["definitely", "probably", "cant_tell"]
FLAGS = ["unreadable", "rotated_or_cropped", "not_chest_xray"]
N = 4000


def _answers(persona: Persona, seed: int = 0, prevalence: float = 0.74, **kw):
    rng = np.random.default_rng(seed)
    truth = np.where(rng.random(N) < prevalence, "PNEUMONIA", "NORMAL")
    difficulty = (np.arange(N) + 0.5) / N
    rng.shuffle(difficulty)
    out = [
        persona.answer(rng, t, d, LABELS, CERTAINTIES, FLAGS, **kw)
        for t, d in zip(truth, difficulty, strict=True)
    ]
    return truth, difficulty, out


def _accuracy(answers) -> float:
    return float(np.mean([a.correct for a in answers]))


@pytest.mark.parametrize("name", ["expert_like", "careful_novice", "average_novice", "fast_sloppy"])
def test_skilled_personas_hit_their_stated_accuracy(name: str) -> None:
    persona = PERSONAS[name]
    _truth, _difficulty, answers = _answers(persona)
    assert abs(_accuracy(answers) - persona.accuracy) < 0.025


def test_harder_images_are_answered_worse() -> None:
    _truth, difficulty, answers = _answers(PERSONAS["average_novice"])
    correct = np.array([a.correct for a in answers])
    easy, hard = correct[difficulty < 0.3].mean(), correct[difficulty > 0.9].mean()
    assert easy > 0.9 and hard < 0.6


def test_expected_accuracy_matches_sampled_accuracy_for_every_persona() -> None:
    prevalence = {"NORMAL": 0.26, "PNEUMONIA": 0.74}
    for name, persona in PERSONAS.items():
        _truth, _difficulty, answers = _answers(persona, pages_done=100, feedback_pages=100)
        expected = persona.expected_accuracy(prevalence, LABELS)
        assert abs(_accuracy(answers) - expected) < 0.03, name


def test_slow_learner_improves_with_feedback_and_harvester_is_perfect_on_gold_only() -> None:
    learner = PERSONAS["slow_learner"]
    before = _accuracy(_answers(learner)[2])
    after = _accuracy(_answers(learner, feedback_pages=50)[2])
    assert abs(before - learner.start_accuracy) < 0.03 and abs(after - learner.accuracy) < 0.03
    harvester = PERSONAS["gold_harvester"]
    assert _accuracy(_answers(harvester, is_gold=True)[2]) == 1.0
    assert _accuracy(_answers(harvester, pages_done=5)[2]) < 0.35
    assert harvester.is_bad({"NORMAL": 0.26, "PNEUMONIA": 0.74}, LABELS, 0.75)
    assert not learner.is_bad({"NORMAL": 0.26, "PNEUMONIA": 0.74}, LABELS, 0.75)


def test_biased_persona_leans_to_its_label() -> None:
    truth, _difficulty, answers = _answers(PERSONAS["biased_normal"])
    said = np.array([a.answer for a in answers])
    assert (said == "NORMAL").mean() > (truth == "NORMAL").mean() + 0.2
    on_normal = np.mean([a.correct for a, t in zip(answers, truth, strict=True) if t == "NORMAL"])
    on_pneumonia = np.mean(
        [a.correct for a, t in zip(answers, truth, strict=True) if t == "PNEUMONIA"]
    )
    assert on_normal > on_pneumonia + 0.3


def test_spammers() -> None:
    _truth, _d, random_answers = _answers(PERSONAS["spammer_random"])
    share = Counter(a.answer for a in random_answers)["NORMAL"] / N
    assert abs(share - 0.5) < 0.03
    assert "cant_tell" not in {a.certainty for a in random_answers}
    _truth, _d, constant = _answers(PERSONAS["spammer_constant"])
    assert {a.answer for a in constant} == {"PNEUMONIA"}
    assert {a.certainty for a in constant} == {"definitely"}


def test_adversary_is_honest_in_the_quiz_then_lies() -> None:
    persona = PERSONAS["adversarial"]
    _t, _d, quiz = _answers(persona, is_quiz=True, pages_done=0)
    _t, _d, later = _answers(persona, pages_done=persona.honest_pages)
    assert abs(_accuracy(quiz) - persona.accuracy) < 0.03
    assert _accuracy(later) < 0.35
    assert {a.certainty for a in later} == {"definitely"}


def test_calibrated_certainty_tracks_accuracy() -> None:
    _t, _d, answers = _answers(PERSONAS["careful_novice"])
    by = {c: [a.correct for a in answers if a.certainty == c] for c in CERTAINTIES}
    assert all(len(v) > 100 for v in by.values())
    acc = {c: np.mean(v) for c, v in by.items()}
    assert acc["definitely"] > acc["probably"] > acc["cant_tell"]
    assert acc["definitely"] > 0.88  # "definitely" means it


def test_overconfident_and_always_definitely() -> None:
    calibrated = PERSONAS["average_novice"]
    overconfident = calibrated.with_overrides(name="over", certainty_style="overconfident")
    always = calibrated.with_overrides(name="always", certainty_style="always_definitely")
    share = {}
    for persona in (calibrated, overconfident, always):
        _t, _d, answers = _answers(persona)
        sure = [a for a in answers if a.certainty == "definitely"]
        share[persona.name] = len(sure) / N
        if persona is overconfident:  # says "definitely" but is wrong far more than it implies
            assert _accuracy(sure) < 0.85
    assert share["always"] == 1.0
    assert share["over"] > share["average_novice"] + 0.15


def test_page_times_trip_the_speed_trap_only_for_fast_personas() -> None:
    rng = np.random.default_rng(0)
    min_seconds = 20.0  # the bundled job's pages.min_seconds_per_page for 10 items
    fast = [PERSONAS["fast_sloppy"].page_seconds(rng, 10) for _ in range(2000)]
    careful = [PERSONAS["careful_novice"].page_seconds(rng, 10) for _ in range(2000)]
    assert np.mean(np.array(fast) < min_seconds) > 0.6
    assert np.mean(np.array(careful) < min_seconds) < 0.01


def test_persona_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="accuracy"):
        Persona("x", accuracy=1.5)
    with pytest.raises(ValueError, match="strategy"):
        Persona("x", strategy="lazy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown setting"):
        PERSONAS["average_novice"].with_overrides(speed=3)


# --- crowds ---------------------------------------------------------------------------------


def test_presets_load_and_realistic_mix_is_as_documented() -> None:
    assert {"realistic", "good", "hostile"} <= set(preset_names())
    crowd = load_crowd("realistic")
    assert abs(sum(p.share for p in crowd.personas) - 1.0) < 1e-9
    assert crowd.expert.accuracy == crowd.expert_accuracy


def test_roster_keeps_the_mix_even_for_small_crowds() -> None:
    crowd = mixed_crowd(
        "t", {"careful_novice": 0.5, "spammer_random": 0.25, "spammer_constant": 0.25}
    )
    roster = crowd.roster(np.random.default_rng(1), 8)
    assert Counter(p.name for p in roster) == {
        "careful_novice": 4,
        "spammer_random": 2,
        "spammer_constant": 2,
    }
    again = crowd.roster(np.random.default_rng(1), 8)
    assert [p.name for p in roster] == [p.name for p in again]


@pytest.mark.parametrize(
    "data, message",
    [
        ({"persona": [{"kind": "wizard", "share": 1}]}, "'kind' must be one of"),
        ({"persona": [{"kind": "average_novice", "share": -1}]}, "'share' must be"),
        ({"persona": [{"kind": "average_novice", "share": 1, "speed": 2}]}, "unknown setting"),
        ({"persona": [{"kind": "average_novice", "share": 1, "accuracy": 2}]}, "accuracy"),
        (
            {"crowd": {"annotators": 0}, "persona": [{"kind": "average_novice", "share": 1}]},
            "positive number",
        ),
        (
            {"crowd": {"colour": 1}, "persona": [{"kind": "average_novice", "share": 1}]},
            "unknown key",
        ),
        ({}, "at least one"),
    ],
)
def test_bad_crowd_files_give_one_clear_line(data: dict, message: str) -> None:
    with pytest.raises(CrowdSpecError, match=message):
        parse_crowd(data, "crowd.toml")


def test_crowd_file_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        'name = "mine"\n[crowd]\nannotators = 12\n[[persona]]\n'
        'kind = "average_novice"\nshare = 1\naccuracy = 0.7\n',
        encoding="utf-8",
    )
    crowd = load_crowd(path)
    assert crowd.annotators == 12 and crowd.personas[0].persona.accuracy == 0.7
    (tmp_path / "broken.toml").write_text("name = [", encoding="utf-8")
    with pytest.raises(CrowdSpecError, match="not valid TOML"):
        load_crowd(tmp_path / "broken.toml")
    with pytest.raises(CrowdSpecError, match="no such crowd file"):
        load_crowd(tmp_path / "missing.toml")


# --- difficulty -----------------------------------------------------------------------------


def _synthetic_features(n: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.6).astype(float)
    x = rng.normal(size=(n, 5))
    x[:, 0] += 1.5 * (2 * y - 1)
    return x, y


def test_cross_fitted_score_never_sees_its_own_label() -> None:
    x, y = _synthetic_features()
    groups = [f"p{i}" for i in range(len(y))]
    base = cross_fitted_scores(x, y, groups, k=5, seed=0)
    flipped = y.copy()
    flipped[7] = 1 - flipped[7]
    again = cross_fitted_scores(x, flipped, groups, k=5, seed=0)
    assert again[7] == pytest.approx(base[7], abs=1e-9)  # image 7's model never saw image 7
    assert np.abs(again - base).max() > 1e-6  # ... but the others' models did


def test_difficulty_comes_from_pixels_not_from_the_label_alone() -> None:
    x, y = _synthetic_features()
    score = cross_fitted_scores(x, y, [f"p{i}" for i in range(len(y))])
    difficulty = difficulty_from_scores(score, y)
    assert difficulty.min() > 0 and difficulty.max() < 1
    for label in (0, 1):  # images of one label still span easy to hard
        spread = difficulty[y == label]
        assert spread.max() - spread.min() > 0.8
    # Images the model gets wrong are the hardest ones.
    wrong = (score >= 0.5) != (y == 1)
    assert difficulty[wrong].mean() > 0.9
    unlabelled = difficulty_from_scores(score, None)
    assert spearmanr(unlabelled, np.abs(score - 0.5)).statistic < -0.99


# --- sweep logic ----------------------------------------------------------------------------


def test_apply_setting_round_trips_through_the_job_parser() -> None:
    spec = load_job(resolve_job_path("pneumonia-pediatric"))
    same = apply_setting(
        spec,
        Setting(
            spec.judgments.min,
            spec.judgments.max,
            spec.judgments.confidence_target,
            spec.gold.per_page,
            spec.gold.min_accuracy,
            spec.aggregation.method,
        ),
    )
    assert same.model_dump() == spec.model_dump()
    changed = apply_setting(spec, Setting(2, 4, 0.9, 2, 0.65, "mv"))
    assert (
        changed.judgments.min,
        changed.judgments.max,
        changed.gold.per_page,
        changed.aggregation.method,
    ) == (2, 4, 2, "mv")


def test_pareto_and_recommendation() -> None:
    rows = [
        {"setting": "cheap", "label_accuracy": 0.90, "worst_accuracy": 0.88, "cost_per_image": 0.1},
        {"setting": "good", "label_accuracy": 0.97, "worst_accuracy": 0.96, "cost_per_image": 0.3},
        {"setting": "bad", "label_accuracy": 0.95, "worst_accuracy": 0.94, "cost_per_image": 0.4},
        {"setting": "best", "label_accuracy": 0.98, "worst_accuracy": 0.97, "cost_per_image": 0.6},
    ]
    assert [r["setting"] for r in pareto(rows)] == ["cheap", "good", "best"]
    best, why = recommend(rows, 0.95)
    assert best["setting"] == "good" and "cheapest" in why
    best, why = recommend(rows, 0.99)
    assert best["setting"] == "best" and "no setting reaches" in why


def test_colluding_ring_is_perfect_on_gold_and_shares_one_unread_answer_per_work_image() -> None:
    ring = PERSONAS["colluding_pair"]
    assert _accuracy(_answers(ring, is_gold=True)[2]) == 1.0
    assert ring.is_bad({"NORMAL": 0.26, "PNEUMONIA": 0.74}, LABELS, 0.75)

    def work(persona: Persona, seed: int) -> list[str]:
        rng = np.random.default_rng(seed)
        return [
            persona.answer(rng, "PNEUMONIA", 0.2, LABELS, CERTAINTIES, [], image_key=k).answer
            for k in range(2000)
        ]

    first, second = work(ring, 1), work(ring, 2)  # two accounts, different private draws
    assert first == second  # the ring agrees with itself on every shared image
    assert 0.45 < np.mean([a == "PNEUMONIA" for a in first]) < 0.55  # unread: a coin
    other_ring = work(ring.with_overrides(ring=2), 1)
    assert 0.45 < np.mean([a == b for a, b in zip(first, other_ring, strict=True)]) < 0.55
