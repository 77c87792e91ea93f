"""The dashboard's QA snapshot (cxrlabel.results.snapshot) on SQLite and PostgreSQL: it follows
the job's version through real writes (page submissions, an admin removal, an expert label),
serves the previous snapshot for at most ``min_interval`` while the job changes, expires after
``max_age``, and what it serves equals a recomputation from scratch."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from cxrlabel.quality import commands
from cxrlabel.results.qa import collect_qa, qa_summary
from cxrlabel.results.snapshot import QASnapshot, QASnapshots, job_version
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import Job, Judgment
from quality_support import QEnv, make_env, pass_quiz


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _get(env: QEnv, snapshots: QASnapshots) -> QASnapshot:
    with env.db.read_session() as s:
        return snapshots.get(s, s.get_one(Job, env.job_id), env.spec)


def _version(env: QEnv) -> tuple[int, int, int, str]:
    with env.db.read_session() as s:
        return job_version(s, s.get_one(Job, env.job_id))


def _recount(env: QEnv) -> dict[str, Any]:
    """The summary computed from scratch, without its timestamp, and the stored judgments."""
    with env.db.read_session() as s:
        summary = qa_summary(collect_qa(s, s.get_one(Job, env.job_id), env.spec))
        stored = s.scalar(select(func.count(Judgment.id)).where(Judgment.job_id == env.job_id))
    summary.pop("generated_at")
    assert summary["judgments"] == stored
    return summary


def _summary(snapshot: QASnapshot) -> dict[str, Any]:
    return {k: v for k, v in snapshot.summary.items() if k != "generated_at"}


def _crowd(env: QEnv) -> None:
    for who in ("ann", "bob"):
        env.add_user(who)
        pass_quiz(env, who)


def test_snapshot_follows_the_job_version(db: Database) -> None:
    env = make_env(db, work=4)
    env.add_user("admin", role="admin")
    _crowd(env)
    clock = FakeClock()
    snapshots = QASnapshots(min_interval=60, max_age=600, clock=clock)

    first = _get(env, snapshots)
    assert _summary(first) == _recount(env)
    clock.now += 30
    assert _get(env, snapshots) is first  # nothing changed: no recomputation

    before = _version(env)
    env.submit("ann", {"w0": "PNEUMONIA", "w1": "NORMAL"})
    assert _version(env) != before  # a page submission moves the version
    clock.now += 10
    assert _get(env, snapshots) is first  # changed, but computed < 60 s ago: stale on purpose
    clock.now += 25  # 65 s after the first computation
    second = _get(env, snapshots)
    assert second is not first and second.version == _version(env)
    assert _summary(second) == _recount(env)
    assert second.summary["judgments"] == first.summary["judgments"] + 2

    before = _version(env)
    env.call(
        lambda s, job: commands.remove_annotator(
            s, job, env.spec, env.user(s, "admin"), env.users["bob"], "test", env.tick()
        )
    )
    assert _version(env) != before  # an admin action moves it too
    clock.now += 61
    third = _get(env, snapshots)
    assert _summary(third) == _recount(env)
    assert third.summary["annotators_by_state"].get("removed") == 1


def test_unchanged_snapshot_expires_after_max_age(db: Database) -> None:
    env = make_env(db, work=2)
    clock = FakeClock()
    snapshots = QASnapshots(min_interval=60, max_age=600, clock=clock)
    first = _get(env, snapshots)
    clock.now += 599
    assert _get(env, snapshots) is first
    clock.now += 2
    renewed = _get(env, snapshots)
    assert renewed is not first and _summary(renewed) == _summary(first)


def test_expert_label_moves_the_version(db: Database) -> None:
    env = make_env(db, work=2)
    env.add_user("exp", role="expert")
    before = _version(env)
    env.call(
        lambda s, job: commands.record_expert_label(
            s, job, env.spec, env.user(s, "exp"), env.images["w0"], "NORMAL", None, env.tick()
        )
    )
    assert _version(env) != before


def test_outdated_snapshot_is_served_while_the_next_is_computed(db: Database) -> None:
    env = make_env(db, work=4)
    _crowd(env)
    clock = FakeClock()
    snapshots = QASnapshots(min_interval=60, max_age=600, clock=clock)

    def get() -> QASnapshot:
        with db.read_session() as s:
            return snapshots.get(s, s.get_one(Job, env.job_id), env.spec, reopen=db.read_session)

    first = get()  # no snapshot yet: this request computes it
    env.submit("bob", {"w2": "NORMAL", "w3": "NORMAL"})
    clock.now += 61
    assert get() is first  # outdated: served at once, the successor computed meanwhile
    snapshots.wait(timeout=120)
    second = get()
    assert second is not first and second.version == _version(env)
    assert _summary(second) == _recount(env)


def test_serve_computes_every_jobs_snapshot_at_start_up(db: Database, tmp_path) -> None:
    """``serve``'s app (``warm_dashboards=True``) computes the snapshot before the first
    dashboard request, which is then served from it instead of computing its own."""
    from fastapi.testclient import TestClient

    from cxrlabel.annotate.accounts import issue_api_token
    from cxrlabel.config import Settings
    from cxrlabel.storage.models import User
    from cxrlabel.web.app import create_app

    env = make_env(db, work=4)
    _crowd(env)
    with db.session() as s:
        admin = User(username="warm-admin", password_hash="x", role="admin")
        s.add(admin)
        s.flush()
        token = issue_api_token(s, admin)
    app = create_app(Settings(data_dir=tmp_path), db=db, warm_dashboards=True)
    with TestClient(app) as client:
        snapshots: QASnapshots = app.state.qa_snapshots
        snapshots.wait(timeout=120)
        warmed = snapshots._latest[env.job_id]
        assert warmed.version == _version(env)
        job_name = _job_name(env)
        r = client.get(
            f"/admin/jobs/{job_name}/dashboard?partial=1",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200
        assert snapshots._latest[env.job_id] is warmed  # served, not recomputed
    assert _summary(warmed) == _recount(env)


def test_in_process_apps_do_not_warm(db: Database, tmp_path) -> None:
    from fastapi.testclient import TestClient

    from cxrlabel.config import Settings
    from cxrlabel.web.app import create_app

    make_env(db, work=4)
    app = create_app(Settings(data_dir=tmp_path), db=db)
    with TestClient(app):
        assert getattr(app.state, "qa_snapshots", None) is None


def _job_name(env: QEnv) -> str:
    with env.db.read_session() as s:
        return s.get_one(Job, env.job_id).name


def test_a_late_commit_of_an_earlier_audit_id_moves_the_version(pg_url: str) -> None:
    """PostgreSQL assigns ids at insert: transaction A takes id n, B takes n + 1 and commits
    first. A version read between B's commit and A's must differ from the one after A's, or
    the snapshot missing A's page would be served as current for ``max_age`` (10 minutes)."""
    from cxrlabel.storage.models import AuditEvent

    db = Database(pg_url)
    try:
        env = make_env(db, work=2)
        early = db.sessionmaker()
        early.begin()
        early.add(AuditEvent(job_id=env.job_id, action="test.early", payload={}))
        early.flush()  # takes its id now, commits later
        with db.session() as late:
            late.add(AuditEvent(job_id=env.job_id, action="test.late", payload={}))
        between = _version(env)
        early.commit()
        early.close()
        after = _version(env)
        assert after[0] == between[0]  # the largest id did not move ...
        assert after != between  # ... but the version did
    finally:
        db.dispose()
