"""Pages of one job graded side by side (issue 23): no job-wide lock on PostgreSQL.

- many annotators submit pages of one job at once, some of them removed on the way (a removal
  re-evaluates images outside the page: locks taken out of order), an admin removal and a gold
  correction among them: every acknowledged page is
  stored once, nothing else is, no image gets more than its judgments, ``quality replay``
  equals the live state, and no client sees a database error (both databases);
- PostgreSQL: a page on other images by another annotator is graded while the first page's
  transaction is still open (the job lock that serialised them is gone);
- PostgreSQL: an admin command waits for the pages being graded (it takes the job's quality
  lock exclusively), then runs; replay still equal;
- PostgreSQL: ``retry_transient`` runs a transaction that lost a real deadlock again.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select, text

from cxrlabel.annotate.assignment import next_page
from cxrlabel.annotate.schemas import AnswerIn, SubmissionError, SubmitResult
from cxrlabel.annotate.submission import submit_page
from cxrlabel.quality import audit, commands
from cxrlabel.storage.db import Database
from cxrlabel.storage.locks import (
    JOB_QUALITY,
    LockEscalation,
    can_escalate,
    job_lock_alone,
    retry_transient,
)
from cxrlabel.storage.models import (
    GoldItem,
    Image,
    ImageStatus,
    Judgment,
    Page,
    Submission,
    User,
    utcnow,
)
from cxrlabel.web.deps import job_and_spec
from web_support import add_user, gold_answers, seed_job, together

pytestmark = pytest.mark.timeout(300)
JOB = "test-job"
BAD = ("NORMAL", "PNEUMONIA")


def _serve(db: Database, user_id: int) -> str | None:
    with db.session() as s:
        job, spec = job_and_spec(s, JOB)
        page = next_page(s, job, spec, s.get_one(User, user_id), utcnow())
        return page.public_id if page else None


def _answers(db: Database, page_id: str, gold: dict[str, list[str]], bad: bool) -> list[AnswerIn]:
    """Right gold answers and 'NORMAL' work answers; a bad annotator gets both wrong."""
    with db.session() as s:
        page = s.scalar(select(Page).where(Page.public_id == page_id))
        pids = [i.image.public_id for i in page.items]
    out = []
    for pid in pids:
        answer = gold[pid][0] if pid in gold else "NORMAL"
        if bad:
            answer = BAD[1 - BAD.index(answer)]
        out.append(AnswerIn(image_public_id=pid, answer=answer, certainty="definitely"))
    return out


def _submit(
    db: Database,
    user_id: int,
    page_id: str,
    answers: list[AnswerIn],
    committed: list[tuple[str, bool]] | None = None,
) -> SubmitResult:
    """What the web app's submit route does: one transaction, run again after a deadlock.
    ``committed`` gets (annotator status, whether it ran holding the job lock alone)."""

    def attempt() -> SubmitResult:
        with db.session() as s:
            job, spec = job_and_spec(s, JOB)
            result = submit_page(
                s, job, spec, s.get_one(User, user_id), page_id, f"c-{page_id}", answers, utcnow()
            )
        if committed is not None:
            committed.append((result.annotator_status, job_lock_alone()))
        return result

    return retry_transient(attempt)


def _crowd_job(db: Database, tmp_path, n_work: int) -> int:
    """Pages of 4 work images and 2 test questions, 3 judgments an image, no quiz: its id."""
    return seed_job(
        db,
        tmp_path,
        n_work=n_work,
        n_gold=10,
        quiz_length=0,
        items_per_page=6,
        gold_per_page=2,
        jmin=3,
        jmax=3,
    ).job_id


def _admin(db: Database, admin: int, command: Callable) -> object:
    with db.session() as s:
        job, spec = job_and_spec(s, JOB)
        return command(s, job, spec, s.get_one(User, admin))


def _replay_report(db: Database) -> audit.ReplayReport:
    with db.session() as s:
        job, spec = job_and_spec(s, JOB)
        return audit.verify_replay(s, job, spec)


def test_many_pages_of_one_job_graded_at_once(db, tmp_path):
    gold = gold_answers(db, _crowd_job(db, tmp_path, n_work=90))
    users = [add_user(db, f"p{i}") for i in range(16)]
    bad = set(users[:4])  # wrong on every test question: removed after 5 (low trust)
    admin = add_user(db, "admin", role="admin")
    with db.session() as s:
        gold_id = s.scalar(select(GoldItem.id).order_by(GoldItem.id).limit(1))

    def remove_one(s, job, spec, admin_user):  # a good annotator, while pages are graded
        return commands.remove_annotator(s, job, spec, admin_user, users[-1], "check", utcnow())

    def widen_gold(s, job, spec, admin_user):  # regrades everyone who answered it
        both = ["NORMAL", "PNEUMONIA"]
        return commands.update_gold(
            s, job, spec, admin_user, gold_id, now=utcnow(), accepted_answers=both
        )

    # Admin commands among the crowd's pages (they take the job lock exclusively).
    admin_actions = {1: remove_one, 2: widen_gold}
    acknowledged: list[tuple[str, SubmitResult]] = []
    refused: Counter[str] = Counter()
    for round_ in range(4):
        served = [(u, p) for u in users if (p := _serve(db, u)) is not None]
        answers = [_answers(db, p, gold, u in bad) for u, p in served]
        extra = admin_actions.get(round_)

        def work(i: int, s=served, a=answers, extra=extra) -> object:
            if i == len(s):
                return _admin(db, admin, extra)
            return _submit(db, s[i][0], s[i][1], a[i])

        results = together(len(served) + (extra is not None), work)
        if extra is not None:
            assert not isinstance(results.pop(), Exception)
        for (_user, page_id), result in zip(served, results, strict=True):
            if isinstance(result, SubmissionError):  # removed by a peer's page meanwhile
                refused[result.code] += 1
                continue
            assert isinstance(result, SubmitResult), result  # no database error reached anyone
            acknowledged.append((page_id, result))
    assert set(refused) <= {"not_active"}, refused
    assert len(acknowledged) >= 30
    with db.session() as s:
        stored_pages = set(s.scalars(select(Page.public_id).where(Page.submitted_at.is_not(None))))
        n_judgments = s.scalar(select(func.count()).select_from(Judgment))
        n_submissions = s.scalar(select(func.count()).select_from(Submission))
        per_image = dict(
            s.execute(
                select(Judgment.image_id, func.count())
                .join(Image, Image.id == Judgment.image_id)
                .where(Judgment.tainted.is_(False), Image.status != ImageStatus.GOLD)
                .group_by(Judgment.image_id)
            ).all()
        )
        removed = s.scalar(
            select(func.count())
            .select_from(Judgment)
            .where(Judgment.user_id.in_(bad), Judgment.tainted.is_(True))
        )
    # Stored = acknowledged: every acknowledged page once, nothing else.
    assert stored_pages == {page_id for page_id, _ in acknowledged}
    assert n_submissions == len(acknowledged)
    assert n_judgments == sum(result.saved for _, result in acknowledged)
    assert max(per_image.values()) <= 3  # no image over its judgments (untainted)
    assert removed > 0  # the removals, with their out-of-order locks, did happen
    report = _replay_report(db)
    assert report.matched, report.differences
    assert report.unprocessed_judgments == 0


# --- PostgreSQL only ------------------------------------------------------------------------


@pytest.fixture
def pg_db(pg_url: str):
    database = Database(pg_url)
    yield database
    database.dispose()


class _OpenSubmit:
    """A page submitted in a transaction kept open until ``release``: its locks stay held."""

    def __init__(self, db: Database, user_id: int, page_id: str, answers: list[AnswerIn]):
        self.graded, self.done = threading.Event(), threading.Event()
        self._go = threading.Event()
        self.error: BaseException | None = None

        def run() -> None:
            try:
                with db.session() as s:
                    job, spec = job_and_spec(s, JOB)
                    user = s.get_one(User, user_id)
                    submit_page(s, job, spec, user, page_id, "open", answers, utcnow())
                    self.graded.set()
                    self._go.wait(120)
            except BaseException as exc:  # reported by the test
                self.error = exc
            finally:
                self.graded.set()
                self.done.set()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert self.graded.wait(120)
        assert self.error is None, self.error

    def release(self) -> None:
        self._go.set()
        self._thread.join(120)
        assert self.error is None, self.error


def _waiting_on_a_lock(db: Database, fragment: str) -> bool:
    with db.engine.connect() as conn:
        n = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE :q"
            ),
            {"q": f"%{fragment}%"},
        ).scalar_one()
    return bool(n)


def _one_page_each(db: Database, tmp_path, n_users: int, jmin: int) -> tuple[list[int], list]:
    seeded = seed_job(
        db,
        tmp_path,
        n_work=40,
        n_gold=4,
        quiz_length=0,
        items_per_page=4,
        gold_per_page=1,
        jmin=jmin,
        jmax=jmin,
    )
    gold = gold_answers(db, seeded.job_id)
    users = [add_user(db, f"o{i}") for i in range(n_users)]
    pages = [_serve(db, u) for u in users]
    return users, [(p, _answers(db, p, gold, False)) for p in pages]


@pytest.mark.postgres
def test_a_page_on_other_images_is_graded_while_another_is_open(pg_db, tmp_path):
    users, pages = _one_page_each(pg_db, tmp_path, 2, jmin=1)  # one judgment: disjoint pages
    first = _OpenSubmit(pg_db, users[0], *pages[0])
    with ThreadPoolExecutor(1) as pool:
        second = pool.submit(_submit, pg_db, users[1], *pages[1])
        # With the job lock of before, this waited for the first page's commit: forever here.
        result = second.result(timeout=120)
    assert not first.done.is_set()  # the first page's transaction is still open
    first.release()
    assert result.saved == 4
    report = _replay_report(pg_db)
    assert report.matched, report.differences


@pytest.mark.postgres
def test_an_admin_command_waits_for_the_pages_being_graded(pg_db, tmp_path):
    users, pages = _one_page_each(pg_db, tmp_path, 3, jmin=3)
    admin = add_user(pg_db, "admin", role="admin")
    first = _OpenSubmit(pg_db, users[0], *pages[0])

    def remove() -> None:
        with pg_db.session() as s:
            job, spec = job_and_spec(s, JOB)
            commands.remove_annotator(
                s, job, spec, s.get_one(User, admin), users[1], "test", utcnow()
            )

    with ThreadPoolExecutor(1) as pool:
        removal = pool.submit(remove)
        deadline = time.monotonic() + 120
        while not _waiting_on_a_lock(pg_db, "pg_advisory_xact_lock"):
            assert time.monotonic() < deadline, "the admin command never queued on the job lock"
            assert not removal.done(), removal.exception()
            time.sleep(0.05)
        first.release()
        removal.result(timeout=120)
    result = _submit(pg_db, users[2], *pages[2])  # after the removal: graded as usual
    assert result.saved == 4
    report = _replay_report(pg_db)
    assert report.matched, report.differences


@pytest.mark.postgres
def test_a_page_that_removes_its_annotator_is_graded_alone(pg_db, tmp_path):
    """The removal re-evaluates images beyond the page, which it would lock out of order:
    instead of risking a deadlock with the pages graded side by side (issue 20: CI lost one
    after eight retries), its transaction runs again holding the job lock exclusively, so it
    waits for a page being graded and nothing deadlocks."""
    job_id = _crowd_job(pg_db, tmp_path, n_work=60)
    gold = gold_answers(pg_db, job_id)
    bad = add_user(pg_db, "bad")
    outcomes: list[tuple[str, bool]] = []  # (status, whether it ran holding the job lock alone)

    def work_until_removed() -> None:
        while (page := _serve(pg_db, bad)) is not None:
            answers = _answers(pg_db, page, gold, True)
            if _submit(pg_db, bad, page, answers, outcomes).annotator_status != "active":
                return

    # Another page of the job being graded: its transaction holds the job's quality lock shared.
    grading = pg_db.engine.connect()
    grading.begin()
    grading.execute(
        text("SELECT pg_advisory_xact_lock_shared(:cls, :key)"),
        {"cls": JOB_QUALITY, "key": job_id},
    )
    with ThreadPoolExecutor(1) as pool:
        removal = pool.submit(work_until_removed)
        deadline = time.monotonic() + 120
        while not _waiting_on_a_lock(pg_db, "pg_advisory_xact_lock"):
            assert time.monotonic() < deadline, "the removing page never queued on the job lock"
            assert not removal.done(), (removal.exception(), outcomes)
            time.sleep(0.05)
        grading.rollback()
        grading.close()
        removal.result(timeout=120)
    assert outcomes[-1] == ("removed", True), outcomes  # graded alone, after the open page
    assert all(status == "active" and not alone for status, alone in outcomes[:-1]), outcomes
    assert not job_lock_alone()  # the escalation ended with its transaction
    report = _replay_report(pg_db)
    assert report.matched, report.differences


def test_retry_transient_escalates_once_and_forgets_it():
    seen: list[bool] = []

    def attempt() -> str:
        seen.append(job_lock_alone())
        if len(seen) == 1:
            raise LockEscalation("needs rows out of order")
        return "graded"

    assert not can_escalate()  # a bare transaction cannot be run again
    assert retry_transient(attempt) == "graded"
    assert seen == [False, True]
    assert not job_lock_alone()
    assert retry_transient(can_escalate)  # the first attempt may escalate

    def always_escalates() -> str:
        raise LockEscalation("a bug: alone and still escalating")

    with pytest.raises(LockEscalation):
        retry_transient(always_escalates)  # the second attempt's escalation is not retried
    assert not job_lock_alone()


@pytest.mark.postgres
def test_retry_transient_runs_a_deadlocked_transaction_again(pg_db):
    a, b = add_user(pg_db, "a"), add_user(pg_db, "b")
    barrier = threading.Barrier(2)
    attempts: Counter[int] = Counter()
    lock = text("SELECT id FROM users WHERE id = :id FOR UPDATE")

    def cross(first: int, second: int) -> int:
        def attempt() -> int:
            attempts[first] += 1
            with pg_db.session() as s:
                s.execute(lock, {"id": first})
                if attempts[first] == 1:
                    barrier.wait(60)  # both hold their first row: each now wants the other's
                s.execute(lock, {"id": second})
                return second

        return retry_transient(attempt)

    with ThreadPoolExecutor(2) as pool:
        results = [pool.submit(cross, a, b), pool.submit(cross, b, a)]
        assert [r.result(timeout=120) for r in results] == [b, a]
    assert sorted(attempts.values()) == [1, 2]  # exactly one lost the deadlock and ran again
