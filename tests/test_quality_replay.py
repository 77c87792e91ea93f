"""Property test on a real database: random sequences of submissions, admin actions, gold
corrections and expert labels through the service; afterwards no image is finalised with too
few trusted judgments, no tainted judgment counts, and replaying the audit log reproduces the
stored state exactly (incremental path == full replay)."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from cxrlabel.quality import commands
from cxrlabel.quality.store import QualityError
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import AnnotatorState, Contest, GoldItem, Image, Judgment
from quality_support import make_env

_jobs = itertools.count()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def shared_db(request, tmp_path_factory):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('qreplay') / 'q.sqlite3'}"
    else:
        url = request.getfixturevalue("pg_cluster").create_database()
    db = Database(url)
    yield db
    db.dispose()


STEP = st.tuples(
    st.sampled_from(["page"] * 8 + ["remove", "reinstate", "contest", "expert"]),
    st.integers(0, 3),  # which annotator
    st.integers(0, 10_000),  # a seed for the choices inside the step
    st.sampled_from([2.0, 30.0, 60.0]),  # page seconds (2 s trips the speed trap)
)


def _run_step(env, step, names):
    kind, who, seed, seconds = step
    rng = random.Random(seed)
    name = names[who]
    state = env.annotator(name)
    if kind == "page" and state.status in ("quiz", "active"):
        answered = {j.image_id for j in env.judgments_of(name)}
        pool = [
            n
            for n, i in env.images.items()
            if i not in answered and (n.startswith("g") or state.status == "active")
        ]
        with env.db.session() as s:
            experts = set(
                s.scalars(
                    select(Image.id).where(
                        Image.status.in_(("expert", "gold")), Image.id.in_(env.images.values())
                    )
                )
            )
        pool = [n for n in pool if n.startswith("g") or env.images[n] not in experts]
        rng.shuffle(pool)
        items = pool[:3]
        if items:
            env.submit(
                name,
                {
                    n: (
                        rng.choice(["NORMAL", "PNEUMONIA"]),
                        rng.choice(["definitely", "probably", "cant_tell"]),
                        rng.choice([None, None, None, "unreadable"]),
                    )
                    for n in items
                },
                seconds=seconds,
            )
        return
    try:
        if kind == "remove":
            env.call(
                lambda s, job: commands.remove_annotator(
                    s, job, env.spec, env.user(s, "admin"), env.users[name], "random", env.tick()
                )
            )
        elif kind == "reinstate":
            env.call(
                lambda s, job: commands.reinstate_annotator(
                    s, job, env.spec, env.user(s, "admin"), env.users[name], "random", env.tick()
                )
            )
        elif kind == "contest":
            gold = [j for j in env.judgments_of(name) if j.is_gold]
            if gold:
                judgment = rng.choice(gold)
                contest = env.call(
                    lambda s, job: commands.contest_gold(
                        s, job, env.spec, env.user(s, name), judgment.id, "I disagree", env.tick()
                    )
                )
                answers = rng.choice([["NORMAL"], ["PNEUMONIA"], ["NORMAL", "PNEUMONIA"]])
                try:
                    env.call(
                        lambda s, job: commands.resolve_contest(
                            s,
                            job,
                            env.spec,
                            env.user(s, "admin"),
                            contest.id,
                            "change",
                            "ok",
                            answers,
                            env.tick(),
                        )
                    )
                except QualityError:  # the answers were already exactly these
                    env.call(
                        lambda s, job: commands.resolve_contest(
                            s,
                            job,
                            env.spec,
                            env.user(s, "admin"),
                            contest.id,
                            "uphold",
                            "stands",
                            None,
                            env.tick(),
                        )
                    )
        elif kind == "expert":
            work = rng.choice([n for n in env.images if n.startswith("w")])
            env.call(
                lambda s, job: commands.record_expert_label(
                    s,
                    job,
                    env.spec,
                    env.user(s, "admin"),
                    env.images[work],
                    "PNEUMONIA",
                    "x",
                    env.tick(),
                    promote_to_gold=rng.random() < 0.3,
                    gold_reason="clear",
                )
            )
    except QualityError:
        pass  # refused actions (already removed, unchanged gold, ...) change nothing


# No shrinking: on PostgreSQL every example costs a second; the failing example is printed.
@settings(
    max_examples=6,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(STEP, min_size=5, max_size=25))
def test_random_sequences_replay_exactly(shared_db, steps):
    n = next(_jobs)
    # Half the jobs remove for harm only (peers judging after 3 pairs) and allow a quiz retake.
    harm_only = n % 2 == 0
    env = make_env(
        shared_db,
        work=5,
        name=f"prop-{n}",
        quiz_length=2,
        min_gold=2,
        jmin=2,
        jmax=3,
        min_seconds=10,
        speed_limit=2,
        dist_min=5,
        strict=not harm_only,
        min_peer_pairs=3 if harm_only else 30,
        quiz_retakes=int(harm_only),
        online="posterior" if harm_only else "auto",
    )
    names = [f"p{n}a{k}" for k in range(4)]
    for name in names:
        env.add_user(name)
    env.users["admin"] = env.add_user(f"p{n}admin", role="admin")
    for step in steps:
        _run_step(env, step, names)

    with shared_db.session() as s:
        images = s.scalars(select(Image).where(Image.job_id == env.job_id)).all()
        for image in images:
            counted = s.scalars(
                select(Judgment).where(
                    Judgment.image_id == image.id,
                    Judgment.tainted.is_(False),
                    Judgment.is_gold.is_(False),
                )
            ).all()
            if image.status != "gold":
                assert image.trusted_judgments == len(counted)
            if image.status == "finalised":
                assert image.trusted_judgments >= env.spec.judgments.min
        for st_ in s.scalars(select(AnnotatorState).where(AnnotatorState.job_id == env.job_id)):
            if st_.status in ("removed", "disqualified"):
                assert all(
                    j.tainted
                    for j in s.scalars(select(Judgment).where(Judgment.user_id == st_.user_id))
                )
        assert (
            s.scalar(
                select(Contest.id)
                .join(GoldItem)
                .where(GoldItem.job_id == env.job_id, Contest.status == "open")
            )
            is None
        )
    report = env.verify()
    assert report.matched, report.differences
    assert report.judgments == sum(len(env.judgments_of(n)) for n in names)


# The model-disagreement review rule: scores are inputs read from the images on both paths.
@settings(
    max_examples=4,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(STEP, min_size=5, max_size=20),
    scores=st.lists(st.one_of(st.none(), st.floats(0.0, 1.0)), min_size=5, max_size=5),
)
def test_random_sequences_with_model_disagreement_replay_exactly(shared_db, steps, scores):
    from sqlalchemy import update

    from cxrlabel.jobspec import parse_job
    from quality_support import quality_toml, seed

    n = next(_jobs)
    toml = quality_toml(
        name=f"prop-m{n}",
        quiz_length=2,
        min_gold=2,
        jmin=2,
        jmax=3,
        min_seconds=10,
        speed_limit=2,
        dist_min=5,
    )
    toml = toml.replace("[review]", "[review]\nmodel_disagreement = 0.7")
    env = seed(shared_db, parse_job(toml, "quality-test"), toml, work=5)
    with shared_db.session() as s:
        for k, score in enumerate(scores):
            s.execute(
                update(Image).where(Image.id == env.images[f"w{k}"]).values(model_score=score)
            )
    names = [f"p{n}m{k}" for k in range(4)]
    for name in names:
        env.add_user(name)
    env.users["admin"] = env.add_user(f"p{n}madmin", role="admin")
    for step in steps:
        _run_step(env, step, names)
    report = env.verify()
    assert report.matched, report.differences
