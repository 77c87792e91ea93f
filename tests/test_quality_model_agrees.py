"""Fewer judgments when a confident model agrees (issue 9, item 5): the rule-3 exception
``judgments.min_if_model_agrees``; off by default."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from cxrlabel.jobspec import JobSpecError, parse_job
from cxrlabel.quality.consensus import ConsensusParams, evaluate, model_agrees
from cxrlabel.quality.state import FINALISED, NEEDS_JUDGMENTS, JudgmentRec
from cxrlabel.storage.models import Image
from quality_support import pass_quiz, quality_toml, seed

PARAMS = ConsensusParams(
    labels=("NORMAL", "PNEUMONIA"),
    cant_tell="cant_tell",
    min_judgments=3,
    max_judgments=5,
    confidence_target=0.8,
    cant_tell_fraction=0.5,
    quality_flag_votes=2,
    min_if_model_agrees=2,
    model_confidence=0.9,
)
TRUST = {1: 0.9, 2: 0.9, 3: 0.9}


def _j(jid: int, user: int, answer: str, certainty: str = "definitely") -> JudgmentRec:
    return JudgmentRec(jid, 1, user, 1, answer, certainty)


def test_model_agrees_needs_the_same_label_at_the_threshold():
    assert model_agrees("PNEUMONIA", 0.9, PARAMS)
    assert not model_agrees("PNEUMONIA", 0.89, PARAMS)
    assert model_agrees("NORMAL", 0.1, PARAMS)
    assert not model_agrees("NORMAL", 0.11, PARAMS)
    assert not model_agrees("NORMAL", 0.95, PARAMS)  # confident, but the other way
    assert not model_agrees("NORMAL", None, PARAMS)
    off = ConsensusParams(**{**PARAMS.__dict__, "min_if_model_agrees": 0})
    assert not model_agrees("NORMAL", 0.0, off)


def test_two_agreeing_answers_and_an_agreeing_model_finalise_early():
    two = [_j(1, 1, "PNEUMONIA"), _j(2, 2, "PNEUMONIA")]
    ev = evaluate(two, TRUST, PARAMS, model_score=0.97)
    assert (ev.status, ev.judgment_target, ev.label) == (FINALISED, 2, "PNEUMONIA")


@pytest.mark.parametrize(
    "judgments, score, why",
    [
        ([_j(1, 1, "PNEUMONIA"), _j(2, 2, "PNEUMONIA")], 0.5, "model unsure"),
        ([_j(1, 1, "PNEUMONIA"), _j(2, 2, "PNEUMONIA")], None, "no model score"),
        ([_j(1, 1, "NORMAL"), _j(2, 2, "NORMAL")], 0.97, "model says the other label"),
        ([_j(1, 1, "NORMAL"), _j(2, 2, "PNEUMONIA")], 0.97, "crowd split"),
        ([_j(1, 1, "PNEUMONIA")], 0.99, "below min_if_model_agrees"),
        ([_j(1, 1, "PNEUMONIA"), _j(2, 2, "NORMAL", "cant_tell")], 0.99, "half can't tell"),
    ],
)
def test_no_early_finalisation_without_every_condition(judgments, score, why):
    ev = evaluate(judgments, TRUST, PARAMS, model_score=score)
    assert (ev.status, ev.judgment_target) == (NEEDS_JUDGMENTS, 3), why


def test_off_by_default_and_bad_values_are_one_clear_line():
    spec = parse_job(quality_toml(), "job.toml")
    assert spec.judgments.min_if_model_agrees == 0
    assert ConsensusParams.from_spec(spec).min_if_model_agrees == 0
    with pytest.raises(JobSpecError, match="min_if_model_agrees .* must be <= min"):
        parse_job(
            quality_toml(jmin=3).replace("[judgments]", "[judgments]\nmin_if_model_agrees = 4"),
            "job.toml",
        )
    with pytest.raises(JobSpecError, match="judgments.model_confidence"):
        parse_job(
            quality_toml().replace("[judgments]", "[judgments]\nmodel_confidence = 0.4"), "job.toml"
        )


def test_engine_finalises_early_and_replay_agrees(db):
    toml = quality_toml(name="magree", quiz_length=3, jmin=3, jmax=5, target=0.8).replace(
        "[judgments]", "[judgments]\nmin_if_model_agrees = 2\nmodel_confidence = 0.9"
    )
    env = seed(db, parse_job(toml, "quality-test"), toml, work=3)
    with db.session() as s:  # w0: model agrees with the crowd; w1: unsure; w2: disagrees
        for key, score in {"w0": 0.97, "w1": 0.6, "w2": 0.02}.items():
            s.execute(update(Image).where(Image.id == env.images[key]).values(model_score=score))
    for k in range(2):
        env.add_user(f"a{k}")
        pass_quiz(env, f"a{k}")
        env.submit(f"a{k}", {"w0": "PNEUMONIA", "w1": "PNEUMONIA", "w2": "PNEUMONIA"})
    assert env.image("w0").status == "finalised"
    assert env.image("w0").trusted_judgments == 2
    assert env.image("w1").status == "needs_judgments"
    assert env.image("w2").status == "needs_judgments"
    assert env.verify().matched  # replay loads the scores too
