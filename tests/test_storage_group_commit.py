"""Group commit on SQLite (storage/group_commit.py): real database file, real threads.

A batch is made deterministic by holding the process's write lock while the units queue (the
leader waits for the lock, the others wait for the leader), then letting go: the leader takes
everything queued. No assertion depends on timing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from cxrlabel.annotate.assignment import next_page
from cxrlabel.annotate.schemas import AnswerIn
from cxrlabel.annotate.submission import submit_page
from cxrlabel.quality import audit
from cxrlabel.storage.db import GROUP_COMMIT_ENV, Database, group_commit_batch
from cxrlabel.storage.group_commit import BatchAborted
from cxrlabel.storage.models import Judgment, Page, PageItem, Submission, User, utcnow
from cxrlabel.web.deps import job_and_spec
from web_support import add_user, gold_answers, seed_job

pytestmark = pytest.mark.timeout(120)
JOB = "test-job"


@pytest.fixture
def sqlite_db(tmp_path: Path):
    database = Database(f"sqlite:///{tmp_path / 'gc.sqlite3'}", group_commit=32)
    yield database
    database.dispose()


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60  # a hang guard, not a timing assertion
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.002)


def in_one_batch(db: Database, works: list[Callable[[Session], object]]) -> list[object]:
    """Queue every unit (in list order) while the write lock is held, then release it: the
    leader takes them all into one batch. Results, or the exception each unit's caller got."""
    committer = db.group_commit
    assert committer is not None
    outcomes: list[object] = [None] * len(works)

    def call(i: int) -> None:
        try:
            outcomes[i] = db.write(works[i])
        except Exception as exc:  # the outcome under test
            outcomes[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(works))]
    with db._writer():  # the leader will wait here, with the whole queue behind it
        for i, thread in enumerate(threads):
            thread.start()
            _wait_until(lambda n=i + 1: committer.queued() == n, f"{i + 1} units queued")
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()
    return outcomes


def _new_user(name: str) -> Callable[[Session], int]:
    def work(s: Session) -> int:
        user = User(username=name, password_hash="x", role="annotator")
        s.add(user)
        s.flush()
        return user.id

    return work


def _usernames(db: Database) -> list[str]:
    with db.read_session() as s:
        return sorted(s.scalars(select(User.username)).all())


def test_a_lone_unit_commits_in_its_own_batch(sqlite_db: Database) -> None:
    user_id = sqlite_db.write(_new_user("alone"))
    assert _usernames(sqlite_db) == ["alone"]
    with sqlite_db.read_session() as s:
        assert s.get_one(User, user_id).username == "alone"
    stats = sqlite_db.group_commit.stats
    assert (stats.batches, stats.units, stats.largest_batch) == (1, 1, 1)


def test_units_queued_together_commit_in_one_batch_in_queue_order(sqlite_db: Database) -> None:
    def counting(i: int) -> Callable[[Session], tuple[int, int]]:
        def work(s: Session) -> tuple[int, int]:
            seen = s.scalar(select(func.count(User.id)))  # the units before it, uncommitted
            _new_user(f"u{i}")(s)
            return i, seen

        return work

    outcomes = in_one_batch(sqlite_db, [counting(i) for i in range(12)])
    assert outcomes == [(i, i) for i in range(12)]  # each saw exactly the ones queued before it
    assert _usernames(sqlite_db) == sorted(f"u{i}" for i in range(12))
    stats = sqlite_db.group_commit.stats
    assert (stats.batches, stats.largest_batch) == (1, 12)


def test_a_failing_unit_rolls_back_only_itself(sqlite_db: Database) -> None:
    def fails_after_writing(s: Session) -> None:
        _new_user("half-done")(s)
        raise ValueError("validation failed after a write")

    works = [
        _new_user("a"),
        fails_after_writing,
        _new_user("b"),
        _new_user("a"),  # duplicate username: IntegrityError at flush, in this unit only
        _new_user("c"),
    ]
    outcomes = in_one_batch(sqlite_db, works)
    assert isinstance(outcomes[1], ValueError)
    assert "UNIQUE" in str(outcomes[3]) or "unique" in str(outcomes[3])
    assert all(isinstance(outcomes[i], int) for i in (0, 2, 4))
    assert _usernames(sqlite_db) == ["a", "b", "c"]
    assert sqlite_db.group_commit.stats.batches == 1


def test_units_do_not_share_an_identity_map(sqlite_db: Database) -> None:
    user_id = sqlite_db.write(_new_user("renamed"))

    def rename(s: Session) -> int:
        s.get_one(User, user_id).role = "expert"
        raise RuntimeError("changed my mind")

    def read_role(s: Session) -> str:
        return s.get_one(User, user_id).role

    outcomes = in_one_batch(sqlite_db, [rename, read_role])
    assert isinstance(outcomes[0], RuntimeError)
    assert outcomes[1] == "annotator"  # the rolled-back change is not seen, not even cached


def test_a_failed_commit_acknowledges_no_unit_of_the_batch(sqlite_db: Database) -> None:
    def dangling_reference(s: Session) -> None:
        # A deferred foreign key is checked at COMMIT: the statement passes, the commit fails.
        s.execute(text("PRAGMA defer_foreign_keys = ON"))
        s.execute(
            text(
                "INSERT INTO user_sessions (token_sha256, user_id, created_at, last_seen_at) "
                "VALUES ('t', 999999, '2026-01-01', '2026-01-01')"
            )
        )

    outcomes = in_one_batch(sqlite_db, [_new_user("x"), dangling_reference, _new_user("y")])
    assert all(isinstance(o, BatchAborted) for o in outcomes), outcomes
    assert _usernames(sqlite_db) == []
    assert sqlite_db.write(_new_user("after")) > 0  # the next batch is fine
    assert _usernames(sqlite_db) == ["after"]


def test_a_unit_that_ends_the_transaction_aborts_the_batch(sqlite_db: Database) -> None:
    def ends_transaction(s: Session) -> None:
        # What SQLite does on an I/O error or a full disk: the whole transaction is gone.
        s.connection().exec_driver_sql("ROLLBACK")
        raise OSError("disk I/O error")

    outcomes = in_one_batch(sqlite_db, [_new_user("p"), ends_transaction, _new_user("q")])
    assert isinstance(outcomes[0], BatchAborted)  # was run, but never committed: not acked
    assert isinstance(outcomes[1], OSError)
    assert isinstance(outcomes[2], BatchAborted)
    assert _usernames(sqlite_db) == []
    assert sqlite_db.write(_new_user("r")) > 0
    assert _usernames(sqlite_db) == ["r"]


def test_max_batch_splits_a_long_queue(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'small.sqlite3'}", group_commit=3)
    try:
        outcomes = in_one_batch(db, [_new_user(f"m{i}") for i in range(7)])
        assert all(isinstance(o, int) for o in outcomes)
        assert len(_usernames(db)) == 7
        stats = db.group_commit.stats
        assert (stats.batches, stats.units, stats.largest_batch) == (3, 7, 3)
    finally:
        db.dispose()


def test_write_inside_an_open_write_session_is_refused(sqlite_db: Database) -> None:
    refused = pytest.raises(RuntimeError, match="inside an open write session")
    with sqlite_db.session(), refused:
        sqlite_db.write(_new_user("nested"))
    with pytest.raises(RuntimeError, match="inside an open write session"):  # in a unit
        sqlite_db.write(lambda s: sqlite_db.write(_new_user("nested")))
    assert _usernames(sqlite_db) == []


def test_the_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for raw, expected in [("", 32), ("on", 32), ("1", 32), ("0", 0), ("off", 0), ("8", 8)]:
        monkeypatch.setenv(GROUP_COMMIT_ENV, raw)
        assert group_commit_batch() == expected
    monkeypatch.setenv(GROUP_COMMIT_ENV, "lots")
    with pytest.raises(ValueError, match=GROUP_COMMIT_ENV):
        group_commit_batch()
    monkeypatch.setenv(GROUP_COMMIT_ENV, "0")
    db = Database(f"sqlite:///{tmp_path / 'off.sqlite3'}")
    try:
        assert db.group_commit is None
        assert db.write(_new_user("plain")) > 0  # one transaction per unit, as before
        assert _usernames(db) == ["plain"]
    finally:
        db.dispose()


# -- the engine's units: page claims and submissions in one batch ------------------------


def _claim(user_id: int) -> Callable[[Session], str | None]:
    def work(s: Session) -> str | None:
        job, spec = job_and_spec(s, JOB)
        page = next_page(s, job, spec, s.get_one(User, user_id), utcnow())
        return page.public_id if page else None

    return work


def _submit(user_id: int, page_id: str, client_id: str, answers: list[AnswerIn]):
    def work(s: Session):
        job, spec = job_and_spec(s, JOB)
        return submit_page(
            s, job, spec, s.get_one(User, user_id), page_id, client_id, answers, utcnow()
        )

    return work


def _answers(db: Database, page_id: str, gold: dict[str, list[str]], flip: int) -> list[AnswerIn]:
    with db.read_session() as s:
        page = s.scalar(select(Page).where(Page.public_id == page_id))
        pids = [item.image.public_id for item in page.items]
    return [
        AnswerIn(
            image_public_id=p,
            answer=gold[p][0] if p in gold else ["NORMAL", "PNEUMONIA"][(flip + j) % 2],
            certainty="definitely",
        )
        for j, p in enumerate(pids)
    ]


def test_claims_in_one_batch_never_over_assign(sqlite_db: Database, tmp_path: Path) -> None:
    seeded = seed_job(
        sqlite_db,
        tmp_path,
        n_work=3,
        n_gold=6,
        quiz_length=0,
        items_per_page=2,
        gold_per_page=1,
        jmin=1,
        jmax=1,
    )
    users = [add_user(sqlite_db, f"racer{i}") for i in range(12)]
    pages = in_one_batch(sqlite_db, [_claim(u) for u in users])
    assert not [p for p in pages if isinstance(p, Exception)], pages
    assert len([p for p in pages if p]) == 3  # one page per open image, the rest "no work"
    with sqlite_db.read_session() as s:
        per_image = Counter(
            s.scalars(select(PageItem.image_id).where(PageItem.is_gold.is_(False))).all()
        )
    assert sorted(per_image) == sorted(seeded.work_ids)
    assert max(per_image.values()) == 1


def test_submissions_in_one_batch_are_stored_graded_and_replay(
    sqlite_db: Database, tmp_path: Path
) -> None:
    seed_job(
        sqlite_db,
        tmp_path,
        n_work=4,
        n_gold=12,
        quiz_length=0,
        items_per_page=4,
        gold_per_page=1,
        jmin=16,
        jmax=16,
    )
    gold = gold_answers(sqlite_db, 1)
    users = [add_user(sqlite_db, f"s{i}") for i in range(10)]
    pages = in_one_batch(sqlite_db, [_claim(u) for u in users])
    answers = [_answers(sqlite_db, p, gold, i) for i, p in enumerate(pages)]
    works = [
        _submit(u, p, f"c{i}", a)
        for i, (u, p, a) in enumerate(zip(users, pages, answers, strict=True))
    ]
    works.append(_submit(users[0], pages[0], "c0", answers[0]))  # a retry: replayed
    works.append(_submit(users[1], pages[1], "other-tab", answers[1]))  # refused
    works.append(_submit(users[2], pages[2], "c2-bad", answers[2][:1]))  # incomplete: refused
    results = in_one_batch(sqlite_db, works)
    assert all(not isinstance(r, Exception) for r in results[:10]), results
    assert [r.replayed for r in results[:10]] == [False] * 10
    assert results[10].replayed is True
    assert results[10].model_dump(exclude={"replayed"}) == results[0].model_dump(
        exclude={"replayed"}
    )
    assert getattr(results[11], "code", None) == "already_submitted"
    assert isinstance(results[12], Exception)
    with sqlite_db.read_session() as s:
        assert s.scalar(select(func.count(Submission.id))) == 10
        per_page = Counter(s.scalars(select(Judgment.page_id)).all())
        assert sorted(per_page.values()) == [4] * 10
        job, spec = job_and_spec(s, JOB)
        report = audit.verify_replay(s, job, spec)
    assert report.matched, report.differences


# -- a crash: acknowledged => committed ---------------------------------------------------

_WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    from cxrlabel.storage.db import Database
    from cxrlabel.storage.models import User

    db = Database(sys.argv[1], group_commit=32)
    out = threading.Lock()

    def writer(t):
        for i in range(100000):
            name = f"w{t}-{i}"
            def work(s, name=name):
                s.add(User(username=name, password_hash="x", role="annotator"))
            db.write(work)
            with out:  # printed only once write() returned: acknowledged
                print(name, flush=True)

    for t in range(8):
        threading.Thread(target=writer, args=(t,), daemon=True).start()
    threading.Event().wait()
    """
)


def test_killed_mid_batch_every_acknowledged_unit_is_stored(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crash.sqlite3'}"
    Database(url).dispose()  # migrated before the writers start
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER_SCRIPT, url], stdout=subprocess.PIPE, text=True, env=env
    )
    acked: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            acked.append(line.strip())
            if len(acked) == 300:
                os.kill(proc.pid, signal.SIGKILL)  # mid-batch, most likely: nothing cleaned up
                break
        acked.extend(line.strip() for line in proc.stdout)  # what it printed before dying
    finally:
        proc.kill()
        proc.wait(30)
    db = Database(url)
    try:
        stored = set(_usernames(db))
    finally:
        db.dispose()
    assert len(acked) >= 300
    assert set(acked) <= stored  # stored may hold a few more: committed, not yet acknowledged
