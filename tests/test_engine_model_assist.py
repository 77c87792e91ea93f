"""Model-assisted labeling in the engine (issue 9, item 5): model-uncertainty ordering of the
work queue and the model-disagreement review rule; both off by default."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text, update

from cxrlabel.annotate.assignment import next_page_or_reason
from cxrlabel.annotate.claim import claim_open_images
from cxrlabel.jobspec import Assignment, JobSpecError, parse_job
from cxrlabel.quality import commands, views
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import AuditEvent, Image, Job, User
from quality_support import pass_quiz, quality_toml, seed
from web_support import add_user, seed_job

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


# --- job spec ------------------------------------------------------------------------------------


def test_options_default_off_and_parse():
    spec = parse_job(quality_toml(), "job.toml")
    assert spec.assignment.order == "default"
    assert spec.review.model_disagreement == "off"
    assert spec.review.model_disagreement_threshold is None
    on = parse_job(
        quality_toml().replace("[review]", "[review]\nmodel_disagreement = 0.9")
        + '[assignment]\norder = "model_uncertainty"\n',
        "job.toml",
    )
    assert on.review.model_disagreement_threshold == 0.9
    assert on.assignment.order == "model_uncertainty"


@pytest.mark.parametrize(
    "value, message",
    [
        ("0.4", 'must be "off" or a number in (0.5, 1.0]'),
        ("1.5", 'must be "off" or a number in (0.5, 1.0]'),
        ('"sometimes"', 'must be "off" or a number in (0.5, 1.0]'),
        ("true", 'must be "off" or a number in (0.5, 1.0]'),
    ],
)
def test_bad_disagreement_threshold_is_one_clear_line(value, message):
    with pytest.raises(JobSpecError) as err:
        parse_job(
            quality_toml().replace("[review]", f"[review]\nmodel_disagreement = {value}"),
            "job.toml",
        )
    assert "field 'review.model_disagreement'" in str(err.value)
    assert message in str(err.value)
    assert str(err.value).startswith("job.toml:")


def test_disagreement_rule_needs_a_pneumonia_label_and_order_is_checked():
    toml = quality_toml().replace("[review]", "[review]\nmodel_disagreement = 0.9")
    with pytest.raises(JobSpecError, match="PNEUMONIA"):
        parse_job(
            toml.replace('value = "PNEUMONIA"', 'value = "ABNORMAL"').replace(
                "PNEUMONIA = 0.7", "ABNORMAL = 0.7"
            ),
            "job.toml",
        )
    with pytest.raises(JobSpecError, match="assignment.order"):
        parse_job(quality_toml() + '[assignment]\norder = "random"\n', "job.toml")


# --- ordering ------------------------------------------------------------------------------------


def _model_order(spec):
    return spec.model_copy(update={"assignment": Assignment(order="model_uncertainty")})


def _set_scores(db, scores: dict[int, float | None]) -> None:
    with db.session() as s:
        for image_id, score in scores.items():
            s.execute(update(Image).where(Image.id == image_id).values(model_score=score))


def test_model_uncertainty_serves_least_sure_untouched_images_first(db, tmp_path):
    seeded = seed_job(db, tmp_path, n_work=12, n_gold=6, items_per_page=4, quiz_length=0)
    work = seeded.work_ids
    # Scores: the most informative are work[7] (0.5), work[2] (0.45), work[9] (0.6);
    # work[0] and work[1] have no score and must come after every scored image.
    scores = {i: 0.99 for i in work}
    scores.update(
        {work[7]: 0.5, work[2]: 0.45, work[9]: 0.6, work[4]: 0.2, work[0]: None, work[1]: None}
    )
    _set_scores(db, scores)
    uid = add_user(db, "ann-1")
    with db.session() as s:
        job, user = s.get(Job, seeded.job_id), s.get(User, uid)
        chosen = claim_open_images(s, job, _model_order(seeded.spec), user, T0, 3)
        assert chosen == [work[7], work[2], work[9]]
        rest = claim_open_images(s, job, _model_order(seeded.spec), user, T0, 12)
        assert rest[:4] == [work[7], work[2], work[9], work[4]]
        assert rest[-2:] == [work[0], work[1]]  # unscored last, oldest first among them
        # Default order ignores the scores: the job's shuffled serving order (serve_rank).
        ranks = dict(s.execute(select(Image.id, Image.serve_rank).where(Image.id.in_(work))).all())
        assert (
            claim_open_images(s, job, seeded.spec, user, T0, 3)
            == sorted(work, key=lambda i: (ranks[i], i))[:3]
        )


def test_model_uncertainty_still_finishes_started_images_first(db, tmp_path):
    seeded = seed_job(db, tmp_path, n_work=10, n_gold=6, items_per_page=4, quiz_length=0)
    work = seeded.work_ids
    spec = _model_order(seeded.spec)
    _set_scores(db, {i: 0.95 for i in work} | {work[5]: 0.5, work[6]: 0.52})
    with db.session() as s:  # work[0] has one of its two judgments: it is closest to done
        s.execute(update(Image).where(Image.id == work[0]).values(trusted_judgments=1))
    uid = add_user(db, "ann-2")
    with db.session() as s:
        job, user = s.get(Job, seeded.job_id), s.get(User, uid)
        page, _ = next_page_or_reason(s, job, spec, user, T0, rng=random.Random(0))
        served = [i.image_id for i in page.items if not i.is_gold]
    assert sorted(served) == sorted([work[0], work[5], work[6]])


def test_model_order_claim_scans_its_index_on_sqlite(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'plan.sqlite3'}")
    seeded = seed_job(database, tmp_path, n_work=6, n_gold=3, quiz_length=0)
    uid = add_user(database, "ann-3")
    statements: list[str] = []
    with database.session() as s:
        job, user = s.get(Job, seeded.job_id), s.get(User, uid)
        original = s.scalars

        def capture(stmt, params=None, *a, **kw):
            statements.append(stmt.params(params or {}))
            return original(stmt, params, *a, **kw)

        s.scalars = capture  # type: ignore[method-assign]
        claim_open_images(s, job, _model_order(seeded.spec), user, T0, 2)
        s.scalars = original  # type: ignore[method-assign]
        sql = str(
            statements[-1].compile(
                dialect=s.get_bind().dialect, compile_kwargs={"literal_binds": True}
            )
        )
        plan = " | ".join(row[3] for row in s.execute(text("EXPLAIN QUERY PLAN " + sql)))
    database.dispose()
    assert "ix_images_model_order" in plan, plan


# --- review rule ---------------------------------------------------------------------------------


def _env(db, threshold: str = "0.9"):
    name = "mdis-" + threshold.strip('"').replace(".", "")
    toml = quality_toml(name=name, quiz_length=3, jmin=3, jmax=5, target=0.8)
    toml = toml.replace("[review]", f"[review]\nmodel_disagreement = {threshold}")
    env = seed(db, parse_job(toml, "quality-test"), toml, work=5)
    for k in range(3):
        env.add_user(f"a{k}-{name}")
        env.users[f"a{k}-{threshold}"] = env.users[f"a{k}-{name}"]
        pass_quiz(env, f"a{k}-{name}")
    return env


def _label_all(env, threshold: str, answers: dict[str, str]) -> None:
    for k in range(3):
        env.submit(f"a{k}-{threshold}", dict(answers))


def test_confident_model_disagreement_goes_to_review_and_is_audited(db):
    env = _env(db)
    scores = {"w0": 0.95, "w1": 0.5, "w2": 0.05, "w3": None, "w4": 0.92}
    _set_scores(db, {env.images[k]: v for k, v in scores.items()})
    _label_all(
        env,
        "0.9",
        {"w0": "NORMAL", "w1": "NORMAL", "w2": "PNEUMONIA", "w3": "NORMAL", "w4": "PNEUMONIA"},
    )
    status = {k: env.image(k).status for k in scores}
    assert status == {
        "w0": "needs_review",
        "w1": "finalised",
        "w2": "needs_review",
        "w3": "finalised",
        "w4": "finalised",
    }
    with db.session() as s:
        events = {
            e.subject: e.payload
            for e in s.scalars(
                select(AuditEvent).where(
                    AuditEvent.job_id == env.job_id,
                    AuditEvent.action == "quality.image_needs_review",
                )
            )
        }
    w0 = events[f"image:{env.images['w0']}"]
    assert w0["review_reason"] == "model_disagreement"
    assert w0["model_score"] == 0.95 and w0["model_disagreement"] == 0.9
    assert w0["label"] == "NORMAL"
    assert events[f"image:{env.images['w2']}"]["model_score"] == 0.05
    queue = env.call(views.review_queue, env.spec)
    assert {q.public_id: q.reason for q in queue} == {
        env.image("w0").public_id: "model_disagreement",
        env.image("w2").public_id: "model_disagreement",
    }
    report = env.verify()  # replay reads the same scores and reaches the same decisions
    assert report.matched, report.differences
    # An expert settles it like any other review.
    env.users["expert"] = env.add_user("expert-09", role="expert")
    env.call(
        lambda s, job: commands.record_expert_label(
            s,
            job,
            env.spec,
            env.user(s, "expert"),
            env.images["w0"],
            "PNEUMONIA",
            "model right",
            env.tick(),
        )
    )
    assert env.image("w0").status == "expert"
    assert env.verify().matched


def test_rule_off_by_default_finalises_against_the_model(db):
    env = _env(db, threshold='"off"')
    _set_scores(db, {env.images["w0"]: 0.99})
    _label_all(env, '"off"', {"w0": "NORMAL"})
    assert env.image("w0").status == "finalised"
    assert env.verify().matched


def test_replay_flags_a_rescored_image(db):
    env = _env(db, threshold="0.8")
    _set_scores(db, {env.images["w0"]: 0.9})
    _label_all(env, "0.8", {"w0": "NORMAL"})
    assert env.image("w0").status == "needs_review"
    _set_scores(db, {env.images["w0"]: 0.3})  # re-scored after the decision
    report = env.verify()
    assert not report.matched
    assert any(f"image {env.images['w0']}" in d for d in report.differences)


def test_evaluate_rule_thresholds():
    from cxrlabel.quality.consensus import ConsensusParams, model_disagrees

    params = ConsensusParams(
        labels=("NORMAL", "PNEUMONIA"),
        cant_tell="cant_tell",
        min_judgments=3,
        max_judgments=5,
        confidence_target=0.8,
        cant_tell_fraction=0.5,
        quality_flag_votes=2,
        model_disagreement=0.9,
    )
    assert model_disagrees("NORMAL", 0.9, params)
    assert not model_disagrees("NORMAL", 0.89, params)
    assert model_disagrees("PNEUMONIA", 0.1, params)
    assert not model_disagrees("PNEUMONIA", 0.11, params)
    assert not model_disagrees("PNEUMONIA", None, params)
    off = ConsensusParams(**{**params.__dict__, "model_disagreement": None})
    assert not model_disagrees("NORMAL", 1.0, off)
