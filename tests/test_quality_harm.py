"""Removal for harm, not weakness, and the quiz retake, on a stored job (SQLite and PostgreSQL);
every scenario ends with a replay of the audit log that must reproduce the stored state."""

from __future__ import annotations

from sqlalchemy import select

from cxrlabel.quality import skill
from cxrlabel.storage.models import AuditEvent
from quality_support import make_env, pass_quiz

RIGHT = {
    f"g{k}": a
    for k, a in enumerate(
        ("PNEUMONIA", "NORMAL", "PNEUMONIA", "NORMAL", "PNEUMONIA", "NORMAL", "PNEUMONIA", "NORMAL")
    )
}
OPPOSITE = {"NORMAL": "PNEUMONIA", "PNEUMONIA": "NORMAL"}


def _assert_replays(env):
    report = env.verify()
    assert report.matched, report.differences


def _actions(env, action):
    with env.db.session() as s:
        return list(
            s.scalars(
                select(AuditEvent).where(
                    AuditEvent.job_id == env.job_id, AuditEvent.action == action
                )
            )
        )


def test_perfect_on_gold_opposite_on_work_is_removed_and_its_work_tainted(db):
    """The gold harvester of issue 18: every test question right, every work image wrong."""
    env = make_env(db, work=12, strict=False, min_peer_pairs=12, min_gold=3, jmax=5)
    truth = {f"w{k}": ("PNEUMONIA" if k % 3 else "NORMAL") for k in range(12)}
    for name in ("ann", "bob", "cat", "eve"):
        env.add_user(name)
        pass_quiz(env, name)
    for name in ("ann", "bob", "cat"):
        env.submit(name, {**{w: truth[w] for w in list(truth)[:6]}, "g3": RIGHT["g3"]})
        env.submit(name, {**{w: truth[w] for w in list(truth)[6:]}, "g4": RIGHT["g4"]})
    out = env.submit("eve", {**{w: OPPOSITE[truth[w]] for w in list(truth)[:6]}, "g3": RIGHT["g3"]})
    # 6 images x 3 earlier peers = 18 pairs (>= 12), none agreeing: removed on this page.
    assert out.annotator_status == "removed"
    assert skill.REMOVAL_REASONS["peer_disagreement"] in out.warnings
    state = env.annotator("eve")
    assert state.status == "removed"
    assert state.answer_counts["peer_pairs"] == 18 and "peer_agree" not in state.answer_counts
    assert state.status_reason.startswith(skill.REASON_PEER_DISAGREEMENT)
    assert skill.reason_text(state.status_reason) == skill.REMOVAL_REASONS["peer_disagreement"]
    assert state.trust > 0.8  # gold alone would have kept this account
    assert all(j.tainted for j in env.judgments_of("eve"))
    for w in truth:
        assert env.image(w).label in (None, truth[w])
    removed = _actions(env, "quality.annotator_removed")
    assert [r.payload["reason"].split(":")[0] for r in removed] == ["peer_disagreement"]
    _assert_replays(env)


def test_an_honest_weaker_annotator_stays_and_is_down_weighted(db):
    """Below the job's min_accuracy on gold, but agreeing with peers: kept (not strict)."""
    env = make_env(db, work=10, strict=False, min_peer_pairs=10, min_gold=3, min_accuracy=0.7)
    for name in ("ann", "bob", "dan"):
        env.add_user(name)
        pass_quiz(env, name)
    works = [f"w{k}" for k in range(10)]
    for name in ("ann", "bob"):
        env.submit(name, {**{w: "PNEUMONIA" for w in works}, "g3": RIGHT["g3"]})
    # dan agrees on 8 of 10 work images and misses two of three test questions.
    answers = {w: ("NORMAL" if k < 2 else "PNEUMONIA") for k, w in enumerate(works)}
    env.submit("dan", {**answers, "g3": "PNEUMONIA", "g4": "NORMAL", "g5": RIGHT["g5"]})
    dan = env.annotator("dan")
    assert dan.status == "active", dan.status_reason
    assert dan.trust < 0.7  # the strict rule would have removed dan
    assert dan.trust < env.annotator("ann").trust  # a smaller weight in the aggregation
    _assert_replays(env)


def test_a_failed_quiz_is_retaken_on_other_questions_then_final(db):
    env = make_env(db, quiz_length=3, quiz_retakes=1, min_accuracy=0.6)
    env.add_user("ann")
    env.add_user("bob")
    out = env.submit("ann", {"g0": "NORMAL", "g1": "PNEUMONIA", "g2": "PNEUMONIA"})
    assert out.annotator_status == "quiz"  # not final: a retake
    assert env.annotator("ann").answer_counts["quiz_failures"] == 1
    assert "instructions" in (env.annotator("ann").message or "")
    out = env.submit("ann", {"g3": "NORMAL", "g4": "PNEUMONIA", "g5": "NORMAL"})
    assert out.quiz_passed is True and out.annotator_status == "active"

    env.submit("bob", {"g0": "NORMAL", "g1": "PNEUMONIA", "g2": "PNEUMONIA"})
    out = env.submit("bob", {"g3": "PNEUMONIA", "g4": "NORMAL", "g5": "PNEUMONIA"})
    assert out.annotator_status == "disqualified"
    assert len(_actions(env, "quality.quiz_retake")) == 2
    with env.db.session() as s:
        assert s.scalar(
            select(AuditEvent.id).where(
                AuditEvent.action == "quality.quiz_failed", AuditEvent.job_id == env.job_id
            )
        )
    _assert_replays(env)


def test_a_contested_miss_does_not_count_until_the_contest_is_resolved(db):
    from cxrlabel.quality import commands

    env = make_env(db)  # prior 1:1, trust = (correct + 1) / (seen + 2)
    env.add_user("ann")
    env.add_user("admin", role="admin")
    pass_quiz(env, "ann")
    env.submit("ann", {"w0": "PNEUMONIA", "g3": "PNEUMONIA"})  # g3 is NORMAL: a miss
    assert env.annotator("ann").trust == 4 / 6
    missed = next(j for j in env.judgments_of("ann") if j.image_id == env.images["g3"])
    contest = env.call(
        lambda s, job: commands.contest_gold(
            s, job, env.spec, env.user(s, "ann"), missed.id, "I see a patch", env.tick()
        )
    )
    ann = env.annotator("ann")
    assert ann.flags["contested"] == [missed.id] and ann.trust == 4 / 5  # as if unseen
    env.call(
        lambda s, job: commands.resolve_contest(
            s,
            job,
            env.spec,
            env.user(s, "admin"),
            contest.id,
            "uphold",
            "it is clear",
            None,
            env.tick(),
        )
    )
    ann = env.annotator("ann")
    assert "contested" not in ann.flags and ann.trust == 4 / 6  # the miss counts again
    _assert_replays(env)
