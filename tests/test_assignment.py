"""Assignment + submission engine rules, on SQLite and PostgreSQL."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from cxrlabel.annotate.assignment import next_page_or_reason, prefetch_page
from cxrlabel.annotate.schemas import AnswerIn, SubmissionError
from cxrlabel.annotate.submission import submit_page
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import (
    AnnotatorState,
    GoldItem,
    Image,
    Job,
    Judgment,
    Page,
    PageItem,
    Submission,
    User,
)
from web_support import add_user, seed_job

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def env(db_url, tmp_path):
    db = Database(db_url)
    yield db, tmp_path
    db.dispose()


def _ctx(s, job_id, user_id):
    return s.get(Job, job_id), s.get(User, user_id)


def _page(db, seeded, uid, now=T0, rng=None):
    with db.session() as s:
        job, user = _ctx(s, seeded.job_id, uid)
        page, reason = next_page_or_reason(
            s, job, seeded.spec, user, now, rng=rng or random.Random(1)
        )
        if page is None:
            return None, reason
        return (
            page.public_id,
            page.kind,
            [(i.image.public_id, i.image_id, i.is_gold) for i in page.items],
        ), None


def _answers(db, items, *, correct_gold=True, answer="NORMAL"):
    with db.session() as s:
        gold = {g.image_id: g.accepted_answers[0] for g in s.scalars(select(GoldItem))}
    out = []
    for pid, image_id, is_gold in items:
        a = answer
        if is_gold:
            right = gold[image_id]
            a = right if correct_gold else ("NORMAL" if right == "PNEUMONIA" else "PNEUMONIA")
        out.append(AnswerIn(image_public_id=pid, answer=a, certainty="definitely"))
    return out


def _submit(db, seeded, uid, page_id, answers, client_id="c1", now=T0 + timedelta(minutes=1)):
    with db.session() as s:
        job, user = _ctx(s, seeded.job_id, uid)
        return submit_page(s, job, seeded.spec, user, page_id, client_id, answers, now)


def _pass_quiz(db, seeded, uid, now=T0):
    (pid, kind, items), _ = _page(db, seeded, uid, now)
    assert kind == "quiz"
    result = _submit(db, seeded, uid, pid, _answers(db, items), f"quiz-{uid}", now)
    assert result.quiz_passed is True
    return result


def test_quiz_first_then_same_page_back(env):
    db, tmp = env
    seeded = seed_job(db, tmp, n_work=8, n_gold=6, quiz_length=3)
    uid = add_user(db, "ann1")
    (pid, kind, items), _ = _page(db, seeded, uid)
    assert kind == "quiz" and len(items) == 3 and all(g for *_, g in items)
    (pid2, _, items2), _ = _page(db, seeded, uid, T0 + timedelta(minutes=5))
    assert pid2 == pid and items2 == items


def test_work_pages_have_hidden_gold_and_never_repeat_images(env):
    db, tmp = env
    seeded = seed_job(db, tmp, n_work=9, n_gold=8, quiz_length=2, items_per_page=4, jmin=3)
    uid = add_user(db, "ann1")
    _pass_quiz(db, seeded, uid)
    seen: list[int] = []
    for n in range(3):
        now = T0 + timedelta(minutes=10 * (n + 1))
        (pid, kind, items), _ = _page(db, seeded, uid, now, rng=random.Random(n))
        assert kind == "work" and len(items) == 4
        assert sum(1 for *_, g in items if g) == 1
        seen += [i for _, i, _ in items]
        _submit(db, seeded, uid, pid, _answers(db, items), f"p{n}", now)
    assert len(seen) == len(set(seen))  # never the same image twice, gold included
    page, reason = _page(db, seeded, uid, T0 + timedelta(hours=2))
    assert page is None and reason.code == "no_work_now"  # all 9 work images seen


def test_prefers_images_closest_to_finalised(env):
    db, tmp = env
    seeded = seed_job(db, tmp, n_work=8, n_gold=4, quiz_length=0, items_per_page=3, jmin=3)
    with db.session() as s:
        for image_id, trusted in zip(seeded.work_ids[5:8], (2, 1, 2), strict=True):
            s.get(Image, image_id).trusted_judgments = trusted
    uid = add_user(db, "ann1")
    (_, kind, items), _ = _page(db, seeded, uid)
    work = sorted(i for _, i, g in items if not g)
    assert kind == "work"
    assert work == sorted([seeded.work_ids[5], seeded.work_ids[7]])


def test_failing_quiz_disqualifies_for_good(env):
    db, tmp = env
    seeded = seed_job(db, tmp, n_work=6, n_gold=6, quiz_length=3, min_accuracy=0.9)
    uid = add_user(db, "ann1")
    (pid, _, items), _ = _page(db, seeded, uid)
    result = _submit(db, seeded, uid, pid, _answers(db, items, correct_gold=False))
    # The job allows one retake (gold.quiz_retakes = 1): a new quiz on the other questions.
    assert result.quiz_passed is False and result.annotator_status == "quiz"
    assert "instructions" in result.message
    (pid, kind, retake), _ = _page(db, seeded, uid)
    assert kind == "quiz" and not {i for _, i, _ in retake} & {i for _, i, _ in items}
    result = _submit(db, seeded, uid, pid, _answers(db, retake, correct_gold=False), "c-2")
    assert result.quiz_passed is False and result.annotator_status == "disqualified"
    assert len(result.missed_gold) == 3 and result.message
    page, reason = _page(db, seeded, uid, T0 + timedelta(days=1))
    assert page is None and reason.code == "disqualified" and "Thank you" in reason.message
    with pytest.raises(SubmissionError) as err:
        _submit(db, seeded, uid, pid, _answers(db, items), "other-id")
    assert err.value.status in (403, 409)


def test_reservations_block_then_expire(env):
    db, tmp = env
    seeded = seed_job(
        db, tmp, n_work=3, n_gold=4, quiz_length=0, items_per_page=4, jmin=1, reservation_minutes=30
    )
    a, b = add_user(db, "aa"), add_user(db, "bb")
    (_, _, items_a), _ = _page(db, seeded, a)
    assert sorted(i for _, i, g in items_a if not g) == sorted(seeded.work_ids)
    page, reason = _page(db, seeded, b, T0 + timedelta(minutes=29))
    assert page is None and reason.code == "no_work_now"
    (_, _, items_b), _ = _page(db, seeded, b, T0 + timedelta(minutes=31))
    assert sorted(i for _, i, g in items_b if not g) == sorted(seeded.work_ids)


def test_max_judgments_per_annotator(env):
    db, tmp = env
    seeded = seed_job(
        db, tmp, n_work=20, n_gold=4, quiz_length=0, items_per_page=4, max_per_annotator=5
    )
    uid = add_user(db, "ann1")
    (pid, _, items), _ = _page(db, seeded, uid)
    assert len(items) == 4
    _submit(db, seeded, uid, pid, _answers(db, items), "p1")
    (pid, _, items), _ = _page(db, seeded, uid, T0 + timedelta(minutes=2))
    assert sum(1 for *_, g in items if not g) == 2  # quota: 3 done + 2 more
    _submit(db, seeded, uid, pid, _answers(db, items), "p2", T0 + timedelta(minutes=3))
    page, reason = _page(db, seeded, uid, T0 + timedelta(minutes=4))
    assert page is None and reason.code == "quota_reached"


def test_seen_all_gold_means_no_more_work(env):
    db, tmp = env
    seeded = seed_job(db, tmp, n_work=20, n_gold=2, quiz_length=0, items_per_page=4)
    uid = add_user(db, "ann1")
    for n in range(2):  # two gold items, one per page: the gold bank allows two pages
        now = T0 + timedelta(minutes=10 + n)
        (pid, _, items), _ = _page(db, seeded, uid, now)
        _submit(db, seeded, uid, pid, _answers(db, items), f"o{n}", now)
    page, reason = _page(db, seeded, uid, T0 + timedelta(minutes=20))
    assert page is None and reason.code == "all_done"
    with db.session() as s:  # each gold image was shown to this annotator exactly once
        gold_served = s.scalars(select(PageItem.image_id).where(PageItem.is_gold)).all()
        assert sorted(gold_served) == sorted(seeded.gold_ids)


def test_submission_is_idempotent_and_validated(env):
    db, tmp = env
    seeded = seed_job(db, tmp, n_work=6, n_gold=4, quiz_length=0, items_per_page=4)
    uid, other = add_user(db, "ann1"), add_user(db, "ann2")
    (pid, _, items), _ = _page(db, seeded, uid)
    good = _answers(db, items)
    for bad, code in [
        (good[:-1], "incomplete_page"),
        (good + good[:1], "duplicate_answer"),
        ([*good[:-1], good[-1].model_copy(update={"answer": "MAYBE"})], "bad_answer"),
        ([*good[:-1], good[-1].model_copy(update={"certainty": "sure"})], "bad_certainty"),
        ([*good[:-1], good[-1].model_copy(update={"quality_flag": "x"})], "bad_quality_flag"),
        ([*good[:-1], good[-1].model_copy(update={"image_public_id": "nope"})], "unknown_image"),
    ]:
        with pytest.raises(SubmissionError) as err:
            _submit(db, seeded, uid, pid, bad, "c-bad")
        assert err.value.code == code and err.value.status == 422
    with pytest.raises(SubmissionError) as err:
        _submit(db, seeded, other, pid, good, "c-other")
    assert err.value.status == 404
    first = _submit(db, seeded, uid, pid, good, "c1")
    again = _submit(db, seeded, uid, pid, good, "c1", T0 + timedelta(minutes=3))
    assert first.replayed is False and again.replayed is True
    assert again.model_dump(exclude={"replayed"}) == first.model_dump(exclude={"replayed"})
    with pytest.raises(SubmissionError) as err:
        _submit(db, seeded, uid, pid, good, "c2")
    assert err.value.code == "already_submitted" and err.value.status == 409
    with db.session() as s:
        assert s.scalar(select(func.count(Judgment.id))) == 4
        assert s.scalar(select(func.count(Submission.id))) == 1
        state = s.scalar(select(AnnotatorState).where(AnnotatorState.user_id == uid))
        assert state.gold_seen == 1


def test_expired_page_policy(env):
    db, tmp = env
    seeded = seed_job(
        db, tmp, n_work=3, n_gold=4, quiz_length=0, items_per_page=4, jmin=1, reservation_minutes=10
    )
    a, b, c = add_user(db, "aa"), add_user(db, "bb"), add_user(db, "cc")
    (pid_a, _, items_a), _ = _page(db, seeded, a)
    late = T0 + timedelta(minutes=15)
    # Still needed: nobody took the images after expiry -> accepted.
    result = _submit(db, seeded, a, pid_a, _answers(db, items_a), "a1", late)
    assert result.saved == 4
    # B's page expires and C fills the images meanwhile -> B's late submit is refused.
    with db.session() as s:
        for image_id in seeded.work_ids:
            img = s.get(Image, image_id)
            img.judgment_target, img.status = 2, "needs_judgments"
    (pid_b, _, items_b), _ = _page(db, seeded, b, late)
    (pid_c, _, items_c), _ = _page(db, seeded, c, late + timedelta(minutes=11))
    _submit(db, seeded, c, pid_c, _answers(db, items_c), "c1", late + timedelta(minutes=12))
    with pytest.raises(SubmissionError) as err:
        _submit(db, seeded, b, pid_b, _answers(db, items_b), "b1", late + timedelta(minutes=13))
    assert err.value.code == "page_expired" and err.value.status == 409
    with db.session() as s:
        assert s.scalar(select(func.count(Judgment.id)).where(Judgment.user_id == b)) == 0


def test_prefetch_reserves_next_page_and_restarts_its_clock(env):
    db, tmp = env
    seeded = seed_job(db, tmp, n_work=12, n_gold=4, quiz_length=0, items_per_page=4)
    uid = add_user(db, "ann1")
    (pid, _, items), _ = _page(db, seeded, uid)
    with db.session() as s:
        job, user = _ctx(s, seeded.job_id, uid)
        nxt = prefetch_page(s, job, seeded.spec, user, T0 + timedelta(seconds=5))
        again = prefetch_page(s, job, seeded.spec, user, T0 + timedelta(seconds=6))
        nxt_id, nxt_images = nxt.public_id, {i.image_id for i in nxt.items}
        assert again.public_id == nxt_id
        assert not nxt_images & {i for _, i, _ in items}
    assert _page(db, seeded, uid)[0][0] == pid  # the current page still comes first
    submit_at = T0 + timedelta(minutes=4)
    _submit(db, seeded, uid, pid, _answers(db, items), "c1", submit_at)
    (pid2, _, _), _ = _page(db, seeded, uid, submit_at)
    assert pid2 == nxt_id
    with db.session() as s:
        served = s.scalar(select(Page.served_at).where(Page.public_id == nxt_id))
        assert served.replace(tzinfo=UTC) == submit_at


def _overfilled(db) -> list[tuple[int, int, int]]:
    with db.session() as s:
        now = T0 + timedelta(minutes=1)
        reserved = dict(
            s.execute(
                select(PageItem.image_id, func.count())
                .join(Page)
                .where(
                    Page.submitted_at.is_(None), Page.expires_at > now, PageItem.is_gold.is_(False)
                )
                .group_by(PageItem.image_id)
            ).all()
        )
        return [
            (i.id, i.trusted_judgments + reserved.get(i.id, 0), i.judgment_target)
            for i in s.scalars(select(Image).where(Image.status == "needs_judgments"))
            if i.trusted_judgments + reserved.get(i.id, 0) > i.judgment_target
        ]


def _pages_at_once(db, seeded, users: list[int]) -> list:
    """Every user asks for a page at the same instant (threads behind a barrier); their
    ``(page, reason)`` answers. A thread's exception fails the calling test."""
    import threading

    barrier = threading.Barrier(len(users))
    errors: list[BaseException] = []
    results: list = []

    def work(uid: int) -> None:
        try:
            barrier.wait()
            results.append(_page(db, seeded, uid, T0, rng=random.Random(uid)))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


def test_concurrent_requests_never_overfill_last_slots(env):
    """Many annotators at once compete for a few last open slots."""
    db, tmp = env
    seeded = seed_job(db, tmp, n_work=6, n_gold=3, quiz_length=0, items_per_page=3, jmin=2)
    with db.session() as s:  # every image misses exactly one judgment: 6 slots in total
        for image_id in seeded.work_ids:
            s.get(Image, image_id).trusted_judgments = 1
    results = _pages_at_once(db, seeded, [add_user(db, f"u{n}") for n in range(16)])
    got = [i for page, _ in results if page is not None for _, i, g in page[2] if not g]
    counts = Counter(got)
    assert set(counts) == set(seeded.work_ids) and max(counts.values()) == 1
    assert _overfilled(db) == []


def test_gold_draw_matches_sampling_the_whole_unseen_list(env):
    """The test questions on a page are drawn without loading the bank: the picks must be the
    ones ``rng.sample`` makes from the full id-ordered list of unseen active gold (so seeded
    simulations keep their results), with seen and deactivated questions left out."""
    from cxrlabel.annotate.assignment import _unseen_gold, _unseen_gold_at

    db, tmp = env
    seeded = seed_job(db, tmp, n_work=12, n_gold=30, quiz_length=0, items_per_page=4)
    uid = add_user(db, "gold-drawer")
    for n in range(3):  # three work pages: three gold questions seen
        (pid, _kind, items), _ = _page(db, seeded, uid, rng=random.Random(n))
        _submit(db, seeded, uid, pid, _answers(db, items), f"p{n}")
    with db.session() as s:  # deactivate five questions, one of them seen
        seen_gold = set(s.scalars(select(PageItem.image_id).where(PageItem.is_gold)))
        off = sorted(seen_gold)[:1] + sorted(set(seeded.gold_ids) - seen_gold)[:4]
        for gold in s.scalars(select(GoldItem).where(GoldItem.image_id.in_(off))):
            gold.active = False
    expected_pool = sorted(set(seeded.gold_ids) - seen_gold - set(off))
    assert len(expected_pool) == 30 - 3 - 4
    with db.session() as s:
        job, user = _ctx(s, seeded.job_id, uid)
        n_unseen, seen = _unseen_gold(s, job, user)
        assert n_unseen == len(expected_pool)
        for seed in range(20):
            for k in (1, 3, 8, len(expected_pool)):
                positions = random.Random(seed).sample(range(n_unseen), k)
                drawn = _unseen_gold_at(s, job, seen, positions)
                assert drawn == random.Random(seed).sample(expected_pool, k)
        # positions past the end (the bank shrank since the count): only the valid ones
        assert _unseen_gold_at(s, job, seen, [0, n_unseen + 5]) == [expected_pool[0]]


def test_work_is_served_in_shuffled_order_not_ingest_order(env):
    """A Kaggle folder lists one class first; the first pages must not be all one class.
    The order is the job's ``serve_rank`` (a hash), so it is the same on every replay."""
    db, tmp = env
    seeded = seed_job(
        db, tmp, n_work=80, n_gold=12, quiz_length=0, items_per_page=4, jmin=1, jmax=1
    )
    first_half = set(seeded.work_ids[:40])  # "NORMAL": ingested first, as a folder lists it
    uid = add_user(db, "ann1")
    served: list[int] = []
    for n in range(7):
        now = T0 + timedelta(minutes=10 * (n + 1))
        (pid, kind, items), _ = _page(db, seeded, uid, now, rng=random.Random(n))
        served += [i for _, i, g in items if not g]
        _submit(db, seeded, uid, pid, _answers(db, items), f"p{n}", now)
    assert len(served) == 21
    assert set(served) & first_half and set(served) - first_half
    with db.session() as s:
        ranks = dict(
            s.execute(select(Image.id, Image.serve_rank).where(Image.id.in_(seeded.work_ids))).all()
        )
    # Pages take the next images in rank order (their positions on a page are shuffled).
    assert set(served) == set(sorted(seeded.work_ids, key=lambda i: (ranks[i], i))[:21])


def test_a_crowd_arriving_at_once_all_get_work_while_images_wait(env):
    """Everyone ranks the same few almost-finalised images first; under PostgreSQL's row
    locks most of those are filled by someone else between a claimer's query and its
    re-count. Before the fix a claimer whose rounds all hit such rows was told "no images
    waiting right now" (seen in the load benchmark at warm-up) while hundreds were open."""
    db, tmp = env  # SQLite runs claims one at a time: the same promise, kept trivially
    seeded = seed_job(db, tmp, n_work=400, n_gold=12, quiz_length=0, items_per_page=9, jmin=2)
    with db.session() as s:  # 40 images miss one judgment: everyone's first choice
        for image_id in seeded.work_ids[:40]:
            s.get(Image, image_id).trusted_judgments = 1
    results = _pages_at_once(db, seeded, [add_user(db, f"u{n}") for n in range(32)])
    assert len(results) == 32
    assert [reason.code for page, reason in results if page is None] == []
    assert _overfilled(db) == []
