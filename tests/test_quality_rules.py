"""Each quality rule on a stored job, on SQLite and PostgreSQL; every scenario ends with a replay
of the audit log that must reproduce the stored state exactly."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from cxrlabel.quality import audit, commands, views
from cxrlabel.quality.store import QualityError, ReviewConflict
from cxrlabel.storage.models import AuditEvent, Contest, GoldItem, Image, Judgment
from quality_support import make_env, pass_quiz


def _admin(env, name="admin", role="admin"):
    if name not in env.users:
        env.add_user(name, role=role)
    return env.users[name]


def _actions(env, action):
    with env.db.session() as s:
        return list(
            s.scalars(
                select(AuditEvent)
                .where(AuditEvent.job_id == env.job_id, AuditEvent.action == action)
                .order_by(AuditEvent.id)
            )
        )


def _assert_replays(env):
    report = env.verify()
    assert report.matched, report.differences


def test_quiz_pass_makes_active_and_quiz_fail_is_final(db):
    env = make_env(db)
    env.add_user("ann")
    env.add_user("bob")
    out = env.submit("ann", {"g0": "PNEUMONIA", "g1": "NORMAL", "g2": "NORMAL"})  # 2 of 3
    assert out.quiz_passed is True and out.annotator_status == "active"
    assert out.trust == pytest.approx((2 + 1) / (3 + 2))
    assert [m.image_public_id for m in out.missed_gold] == [env.image("g2").public_id]
    assert out.missed_gold[0].accepted_answers == ["PNEUMONIA"]
    assert out.missed_gold[0].reason == "reason g2"
    assert env.annotator("ann").quiz_passed_at is not None

    out = env.submit("bob", {"g0": "NORMAL", "g1": "NORMAL", "g2": "NORMAL"})  # 1 of 3
    assert out.quiz_passed is False and out.annotator_status == "disqualified"
    assert env.annotator("bob").status_reason.startswith("quiz: 1 of 3")
    _admin(env)
    with pytest.raises(QualityError, match="final"):
        env.call(
            lambda s, job: commands.reinstate_annotator(
                s, job, env.spec, env.user(s, "admin"), env.users["bob"], "", env.tick()
            )
        )
    assert len(_actions(env, "quality.quiz_failed")) == 1
    assert len(_actions(env, "quality.quiz_passed")) == 1
    _assert_replays(env)


def _three_active(env):
    for name in ("ann", "bob", "cat"):
        env.add_user(name)
        pass_quiz(env, name)


def test_removal_taints_past_judgments_and_reopens_images(db):
    env = make_env(db)
    _three_active(env)
    for name in ("ann", "bob", "cat"):
        env.submit(name, {"w0": "PNEUMONIA", "w1": "NORMAL", "g3": "NORMAL"})
    assert env.image("w0").status == "finalised" and env.image("w0").label == "PNEUMONIA"
    assert env.image("w1").status == "finalised" and env.image("w1").trusted_judgments == 3

    # cat misses three test questions: trust (4 + 1) / (7 + 2) = 0.556 < 0.6 after >= 3 gold.
    out = env.submit("cat", {"g4": "NORMAL", "g5": "PNEUMONIA", "g6": "NORMAL"})
    assert out.annotator_status == "removed"
    assert out.trust == pytest.approx(5 / 9)
    assert env.annotator("cat").status_reason.startswith("low_trust")
    cat = env.judgments_of("cat")
    assert cat and all(j.tainted and "annotator_removed" in j.taint_reason for j in cat)
    for name in ("w0", "w1"):
        image = env.image(name)
        assert image.status == "needs_judgments"
        assert image.trusted_judgments == 2 and image.judgment_target == 3
    removed = _actions(env, "quality.annotator_removed")
    assert len(removed) == 1
    assert removed[0].payload["tainted"] == len(cat)
    assert sorted(removed[0].payload["images"]) == sorted([env.images["w0"], env.images["w1"]])
    assert len(_actions(env, "quality.image_needs_judgments")) == 2
    _assert_replays(env)


def test_reinstating_reverses_the_removal(db):
    env = make_env(db)
    _three_active(env)
    for name in ("ann", "bob", "cat"):
        env.submit(name, {"w0": "PNEUMONIA", "g3": "NORMAL"})
    env.submit("cat", {"g4": "NORMAL", "g5": "PNEUMONIA", "g6": "NORMAL"})
    assert env.image("w0").status == "needs_judgments"
    admin = _admin(env)
    env.call(
        lambda s, job: commands.reinstate_annotator(
            s, job, env.spec, env.user(s, "admin"), env.users["cat"], "checked by hand", env.tick()
        )
    )
    state = env.annotator("cat")
    assert state.status == "active" and state.status_reason is None
    assert state.flags["reinstated"]["by_admin"] is True
    assert not any(j.tainted for j in env.judgments_of("cat"))
    assert env.image("w0").status == "finalised" and env.image("w0").trusted_judgments == 3
    assert admin in {a.actor_id for a in _actions(env, "admin.annotator_reinstated")}
    # An admin removal works the same way and is refused twice.
    env.call(
        lambda s, job: commands.remove_annotator(
            s, job, env.spec, env.user(s, "admin"), env.users["cat"], "copied answers", env.tick()
        )
    )
    assert env.annotator("cat").status_reason == "admin: copied answers"
    assert env.image("w0").status == "needs_judgments"
    with pytest.raises(QualityError, match="already removed"):
        env.call(
            lambda s, job: commands.remove_annotator(
                s, job, env.spec, env.user(s, "admin"), env.users["cat"], "again", env.tick()
            )
        )
    with pytest.raises(QualityError, match="admin"):
        env.call(
            lambda s, job: commands.remove_annotator(
                s, job, env.spec, env.user(s, "ann"), env.users["bob"], "not an admin", env.tick()
            )
        )
    _assert_replays(env)


def test_forgiving_after_a_gold_change_restores_trust_and_refinalises(db):
    env = make_env(db)
    _three_active(env)
    for name in ("ann", "bob", "cat"):
        env.submit(name, {"w0": "PNEUMONIA", "w1": "NORMAL", "g3": "NORMAL"})
    env.submit("ann", {"w2": "NORMAL", "g4": "PNEUMONIA"})  # ann was right under the old gold
    env.submit("cat", {"g4": "NORMAL", "g5": "PNEUMONIA", "g6": "NORMAL"})
    assert env.annotator("cat").status == "removed"
    assert env.image("w0").status == "needs_judgments"

    g4_judgment = next(j for j in env.judgments_of("cat") if j.image_id == env.images["g4"])
    contest = env.call(
        lambda s, job: commands.contest_gold(
            s,
            job,
            env.spec,
            env.user(s, "cat"),
            g4_judgment.id,
            "the left lower lobe is clear",
            env.tick(),
        )
    )
    assert env.annotator("cat").gold_contested == 1
    with pytest.raises(QualityError, match="already contested"):
        env.call(
            lambda s, job: commands.contest_gold(
                s, job, env.spec, env.user(s, "cat"), g4_judgment.id, "again", env.tick()
            )
        )
    _admin(env)
    env.call(
        lambda s, job: commands.resolve_contest(
            s, job, env.spec, env.user(s, "admin"), contest.id, "change", "", ["NORMAL"], env.tick()
        )
    )

    cat = env.annotator("cat")
    assert cat.status == "active", cat.status_reason
    assert cat.gold_forgiven == 1 and cat.gold_missed == 2
    assert cat.trust == pytest.approx((5 + 1) / (7 + 2))
    assert not any(j.tainted for j in env.judgments_of("cat"))
    assert env.image("w0").status == "finalised" and env.image("w1").status == "finalised"
    ann = env.annotator("ann")  # ann's answer to g4 is now a miss
    assert ann.gold_missed == 1 and ann.trust == pytest.approx((4 + 1) / (5 + 2))
    with env.db.session() as s:
        assert s.get(Contest, contest.id).status == "changed"
        assert s.scalar(
            select(GoldItem).where(GoldItem.image_id == env.images["g4"])
        ).accepted_answers == ["NORMAL"]
        g4 = s.get(Judgment, g4_judgment.id)
        assert g4.gold_missed is False
    stats = {g.image_id: g for g in env.call(lambda s, job: views.gold_stats(s, job))}
    assert stats[env.images["g4"]].contested == 1
    assert stats[env.images["g4"]].missed == 1  # ann
    assert stats[env.images["g5"]].pct_missed == pytest.approx(100.0)
    _assert_replays(env)


def test_uphold_keeps_the_gold_and_stores_the_reply(db):
    env = make_env(db)
    env.add_user("ann")
    env.submit("ann", {"g0": "NORMAL", "g1": "NORMAL", "g2": "PNEUMONIA"})
    missed = next(j for j in env.judgments_of("ann") if j.gold_missed)
    contest = env.call(
        lambda s, job: commands.contest_gold(
            s, job, env.spec, env.user(s, "ann"), missed.id, "looks clear to me", env.tick()
        )
    )
    _admin(env)
    with pytest.raises(QualityError, match="explain"):
        env.call(
            lambda s, job: commands.resolve_contest(
                s, job, env.spec, env.user(s, "admin"), contest.id, "uphold", "", None, env.tick()
            )
        )
    env.call(
        lambda s, job: commands.resolve_contest(
            s,
            job,
            env.spec,
            env.user(s, "admin"),
            contest.id,
            "uphold",
            "See the opacity behind the heart.",
            None,
            env.tick(),
        )
    )
    mine = env.call(lambda s, job: views.list_contests(s, job, None, env.users["ann"]))
    assert mine[0].status == "upheld" and mine[0].reply == "See the opacity behind the heart."
    assert env.annotator("ann").gold_missed == 1
    # Later the admin edits the gold item directly: same regrading as a contest change.
    with env.db.session() as s:
        gold_id = s.scalar(select(GoldItem.id).where(GoldItem.image_id == missed.image_id))
    env.call(
        lambda s, job: commands.update_gold(
            s,
            job,
            env.spec,
            env.user(s, "admin"),
            gold_id,
            now=env.tick(),
            accepted_answers=["NORMAL", "PNEUMONIA"],
            difficulty="hard",
            active=False,
        )
    )
    ann = env.annotator("ann")
    assert (ann.gold_missed, ann.gold_forgiven) == (0, 1)
    with pytest.raises(QualityError, match="difficulty"):
        env.call(
            lambda s, job: commands.update_gold(
                s, job, env.spec, env.user(s, "admin"), gold_id, now=env.tick(), difficulty="x"
            )
        )
    _assert_replays(env)


def test_speed_trap_taints_the_page_warns_and_removes(db):
    env = make_env(db, min_seconds=10.0, speed_limit=2)
    _three_active(env)
    out = env.submit("ann", {"w0": "PNEUMONIA", "w1": "NORMAL", "g3": "NORMAL"}, seconds=3)
    assert out.annotator_status == "active"
    assert out.warnings and "3 s" in out.warnings[0]
    assert env.annotator("ann").message == out.warnings[0]
    assert env.annotator("ann").speed_trips == 1
    page = [j for j in env.judgments_of("ann") if not j.is_quiz]
    assert all(j.tainted and j.taint_reason == "speed_trap" for j in page)
    assert env.image("w0").trusted_judgments == 0
    out = env.submit("ann", {"w2": "PNEUMONIA", "g4": "PNEUMONIA"}, seconds=12)  # slow enough
    assert not out.warnings and env.image("w2").trusted_judgments == 1
    assert env.annotator("ann").message is None  # the old page's warning is not kept on show
    assert env.annotator("ann").speed_trips == 1  # but the trip still counts
    out = env.submit("ann", {"w3": "PNEUMONIA", "g5": "NORMAL"}, seconds=2)
    assert out.annotator_status == "removed"
    assert env.annotator("ann").status_reason.startswith("speed_trap")
    assert len(_actions(env, "quality.speed_trap")) == 2
    _assert_replays(env)


@pytest.mark.parametrize("remove", [False, True])
def test_answer_distribution_flags_a_one_button_annotator(db, remove):
    env = make_env(db, work=8, dist_min=6, dist_remove=remove)
    env.add_user("ann")
    env.add_user("honest")
    pass_quiz(env, "ann")
    pass_quiz(env, "honest")
    env.submit(
        "honest",
        {
            "w0": "NORMAL",
            "w1": ("PNEUMONIA", "probably"),
            "w2": "PNEUMONIA",
            "w3": "NORMAL",
            "w4": "PNEUMONIA",
            "g3": "NORMAL",
        },
    )
    out = env.submit("ann", {f"w{k}": "PNEUMONIA" for k in range(5)} | {"g4": "PNEUMONIA"})
    state = env.annotator("ann")
    evidence = state.flags["distribution"]
    assert evidence["rules"] == ["single_label", "single_certainty", "low_entropy"]
    assert evidence["label_counts"] == {"PNEUMONIA": 6}
    assert evidence["entropy_bits"] == 0.0
    assert "distribution" not in env.annotator("honest").flags
    assert len(_actions(env, "quality.flagged")) == 1
    if remove:
        assert out.annotator_status == "removed"
        assert state.status_reason.startswith("answer_distribution")
        assert all(j.tainted for j in env.judgments_of("ann"))
    else:
        assert out.annotator_status == "active"
    rows = env.call(lambda s, job: views.contributors(s, job))
    assert next(r for r in rows if r.username == "ann").flags["distribution"] == evidence
    _assert_replays(env)


def test_dynamic_judgments_target_finalise_and_review_routes(db):
    env = make_env(db, work=6, jmin=3, jmax=5, target=0.8, flag_votes=2)
    names = ["a1", "a2", "a3", "a4", "a5"]
    for name in names:
        env.add_user(name)
        pass_quiz(env, name)
    w0 = ["PNEUMONIA", "NORMAL", "PNEUMONIA", "PNEUMONIA", "NORMAL"]
    expected = [
        ("needs_judgments", 3),
        ("needs_judgments", 3),
        ("needs_judgments", 4),
        ("needs_judgments", 5),
        ("needs_review", 5),
    ]
    for name, answer, (status, target) in zip(names, w0, expected, strict=True):
        env.submit(name, {"w0": answer})
        image = env.image("w0")
        assert (image.status, image.judgment_target) == (status, target), name
    assert env.image("w0").confidence == pytest.approx(3 / 5)
    for name in names[:3]:
        env.submit(name, {"w1": "PNEUMONIA"})
    assert env.image("w1").status == "finalised" and env.image("w1").confidence == 1.0
    # Two "can't tell" of three: counted as judgments, no weight, routed to an expert.
    env.submit("a1", {"w2": ("NORMAL", "cant_tell")})
    env.submit("a2", {"w2": ("PNEUMONIA", "cant_tell")})
    env.submit("a3", {"w2": "PNEUMONIA"})
    w2 = env.image("w2")
    assert (w2.status, w2.trusted_judgments, w2.confidence) == ("needs_review", 3, 1.0)
    # Two image-quality flags send it to review at once.
    env.submit("a1", {"w3": ("NORMAL", "probably", "unreadable")})
    assert env.image("w3").status == "needs_judgments"
    env.submit("a2", {"w3": ("NORMAL", "probably", "unreadable")})
    assert env.image("w3").status == "needs_review"
    queue = env.call(lambda s, job: views.review_queue(s, job, env.spec))
    reasons = {item.public_id: item.reason for item in queue}
    assert reasons == {
        env.image("w0").public_id: "no_consensus",
        env.image("w2").public_id: "cant_tell",
        env.image("w3").public_id: "image_quality",
    }
    assert [item.public_id for item in queue][0] == env.image("w0").public_id  # most uncertain
    assert queue[0].answers == {"PNEUMONIA": {"definitely": 3}, "NORMAL": {"definitely": 2}}
    assert "user" not in repr(queue[0].__dict__.keys())
    _assert_replays(env)


def test_expert_label_finalises_promotes_to_gold_and_conflicts(db):
    env = make_env(db, jmin=2, jmax=2)
    for name in ("a1", "a2"):
        env.add_user(name)
        pass_quiz(env, name)
    env.submit("a1", {"w0": "PNEUMONIA", "w1": "NORMAL"})
    env.submit("a2", {"w0": "NORMAL", "w1": "PNEUMONIA"})
    assert env.image("w0").status == "needs_review"
    _admin(env, "doc", role="expert")
    _admin(env, "doc2", role="expert")

    def label(who, image, **kw):
        return env.call(
            lambda s, job: commands.record_expert_label(
                s,
                job,
                env.spec,
                env.user(s, who),
                env.images[image],
                "PNEUMONIA",
                "consolidation",
                env.tick(),
                **kw,
            )
        )

    with pytest.raises(QualityError, match="expert or admin"):
        label("a1", "w0")
    label("doc", "w0")
    image = env.image("w0")
    assert (image.status, image.label, image.confidence) == ("expert", "PNEUMONIA", 1.0)
    with pytest.raises(ReviewConflict, match="already recorded"):
        label("doc2", "w0")
    with pytest.raises(QualityError, match="reason"):
        label("doc", "w1", promote_to_gold=True)
    label("doc", "w1", promote_to_gold=True, gold_reason="patchy right lower lobe opacity")
    assert env.image("w1").status == "gold"
    with env.db.session() as s:
        gold = s.scalar(select(GoldItem).where(GoldItem.image_id == env.images["w1"]))
        assert gold.accepted_answers == ["PNEUMONIA"] and gold.source == "expert"
    assert env.call(lambda s, job: views.review_queue(s, job, env.spec)) == []
    _assert_replays(env)


def test_replay_detects_tampering_and_fix_repairs(db):
    env = make_env(db)
    _three_active(env)
    for name in ("ann", "bob", "cat"):
        env.submit(name, {"w0": "PNEUMONIA", "g3": "NORMAL"})
    with env.db.session() as s:
        s.get(Image, env.images["w0"]).status = "needs_judgments"
        first = s.scalars(select(Judgment).where(Judgment.user_id == env.users["ann"])).first()
        first.tainted = True
    report = env.verify()
    assert not report.matched and len(report.differences) == 2
    assert any("image" in d and "needs_judgments" in d for d in report.differences)
    fixed = env.call(lambda s, job: audit.verify_replay(s, job, env.spec, fix=True))
    assert fixed.fixed
    assert env.image("w0").status == "finalised"
    _assert_replays(env)
