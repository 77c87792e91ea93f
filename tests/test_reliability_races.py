"""Races, on SQLite and PostgreSQL: threads hit the engine functions the web app calls, each
in its own session and transaction, released together by a barrier.

- the last open slot of an image, wanted by many annotators at once;
- one page submitted twice at once (same client id, and different ids);
- one annotator in two tabs asking for a page and submitting at once;
- two experts finalising the same image;
- a test question's accepted answer changed while annotators are answering it.
"""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import func, select

from cxrlabel.annotate.assignment import next_page, next_page_or_reason
from cxrlabel.annotate.schemas import AnswerIn
from cxrlabel.annotate.submission import submit_page
from cxrlabel.errors import EngineError
from cxrlabel.quality import audit, commands, store
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import (
    ExpertReview,
    GoldItem,
    Image,
    ImageStatus,
    Judgment,
    Page,
    PageItem,
    Submission,
    User,
    utcnow,
)
from cxrlabel.web.deps import job_and_spec
from web_support import add_user, gold_answers, seed_job, together

pytestmark = pytest.mark.timeout(180)
JOB = "test-job"


def _serve(db: Database, user_id: int) -> str | None:
    # Database.write, as the web app: group-committed on SQLite, a plain session on PostgreSQL.
    def claim(s) -> str | None:
        job, spec = job_and_spec(s, JOB)
        page = next_page(s, job, spec, s.get(User, user_id), utcnow())
        return page.public_id if page else None

    return db.write(claim)


def _answers(db: Database, page_id: str, gold: dict[str, list[str]]) -> list[AnswerIn]:
    with db.session() as s:
        page = s.scalar(select(Page).where(Page.public_id == page_id))
        pids = [i.image.public_id for i in page.items]
    return [
        AnswerIn(image_public_id=p, answer=gold.get(p, ["NORMAL"])[0], certainty="definitely")
        for p in pids
    ]


def _submit(db: Database, user_id: int, page_id: str, client_id: str, answers: list[AnswerIn]):
    def submit(s):
        job, spec = job_and_spec(s, JOB)
        return submit_page(
            s, job, spec, s.get(User, user_id), page_id, client_id, answers, utcnow()
        )

    return db.write(submit)  # see _serve


def test_last_slot_goes_to_exactly_one_annotator(db, tmp_path):
    # 3 work images wanting 1 judgment each, 12 annotators asking at the same instant.
    seeded = seed_job(
        db,
        tmp_path,
        n_work=3,
        n_gold=6,
        quiz_length=0,
        items_per_page=2,
        gold_per_page=1,
        jmin=1,
        jmax=1,
    )
    users = [add_user(db, f"racer{i}") for i in range(12)]
    pages = together(len(users), lambda i: _serve(db, users[i]))
    assert not [p for p in pages if isinstance(p, Exception)], pages
    served = [p for p in pages if p]
    assert len(served) == 3  # one page per open image, the rest get "no work now"
    with db.session() as s:
        per_image = Counter(
            s.scalars(select(PageItem.image_id).where(PageItem.is_gold.is_(False))).all()
        )
    assert sorted(per_image) == sorted(seeded.work_ids)
    assert max(per_image.values()) == 1  # nobody got a slot that was already taken
    late = add_user(db, "late")
    with db.session() as s:
        job, spec = job_and_spec(s, JOB)
        _page, reason = next_page_or_reason(s, job, spec, s.get(User, late), utcnow())
    assert reason is not None and reason.code == "no_work_now"


def test_double_submit_same_and_different_client_ids(db, tmp_path):
    seed_job(db, tmp_path, n_work=8, n_gold=6, quiz_length=0, items_per_page=4)
    user = add_user(db, "clicker")
    gold = gold_answers(db, 1)
    page = _serve(db, user)
    answers = _answers(db, page, gold)
    same = together(4, lambda i: _submit(db, user, page, "same-id", answers))
    assert not [r for r in same if isinstance(r, Exception)], same
    assert sorted(r.replayed for r in same) == [False, True, True, True]
    assert len({r.model_dump_json(exclude={"replayed"}) for r in same}) == 1
    page2 = _serve(db, user)
    answers2 = _answers(db, page2, gold)
    other = together(3, lambda i: _submit(db, user, page2, f"tab-{i}", answers2))
    ok = [r for r in other if not isinstance(r, Exception)]
    refused = [r for r in other if isinstance(r, EngineError)]
    assert len(ok) == 1 and len(refused) == 2
    assert {r.code for r in refused} == {"already_submitted"}
    with db.session() as s:
        assert s.scalar(select(func.count(Submission.id))) == 2
        per_page = Counter(s.scalars(select(Judgment.page_id)).all())
    assert sorted(per_page.values()) == [4, 4]


def test_same_annotator_in_two_tabs(db, tmp_path):
    seed_job(db, tmp_path, n_work=12, n_gold=8, quiz_length=0, items_per_page=4)
    user = add_user(db, "twotabs")
    gold = gold_answers(db, 1)
    pages = together(2, lambda i: _serve(db, user))
    assert pages[0] == pages[1] and pages[0] is not None  # both tabs show the same page
    with db.session() as s:
        assert s.scalar(select(func.count(Page.id))) == 1
    answers = _answers(db, pages[0], gold)
    results = together(2, lambda i: _submit(db, user, pages[0], f"tab{i}", answers))
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert [r.code for r in results if isinstance(r, EngineError)] == ["already_submitted"]


def test_two_experts_finalise_the_same_image(db, tmp_path):
    seeded = seed_job(db, tmp_path, n_work=4, n_gold=4, quiz_length=0)
    experts = [add_user(db, f"doc{i}", role="expert") for i in range(3)]
    image_id = seeded.work_ids[0]
    with db.session() as s:
        s.get(Image, image_id).status = ImageStatus.NEEDS_REVIEW

    def label(i: int):
        with db.session() as s:
            job, spec = job_and_spec(s, JOB)
            return commands.record_expert_label(
                s,
                job,
                spec,
                s.get(User, experts[i]),
                image_id,
                ["NORMAL", "PNEUMONIA", "NORMAL"][i],
                f"reading {i}",
                utcnow(),
            )

    results = together(3, label)
    ok = [r for r in results if isinstance(r, ExpertReview)]
    conflicts = [r for r in results if isinstance(r, store.ReviewConflict)]
    assert len(ok) == 1 and len(conflicts) == 2, results
    with db.session() as s:
        assert s.scalar(select(func.count(ExpertReview.id))) == 1
        image = s.get(Image, image_id)
        assert image.status == ImageStatus.EXPERT and image.label == ok[0].label


def test_gold_answer_changed_while_annotators_answer_it(db, tmp_path):
    # A bank of one test question: every page carries it.
    seeded = seed_job(
        db,
        tmp_path,
        n_work=40,
        n_gold=1,
        quiz_length=0,
        items_per_page=3,
        gold_per_page=1,
        jmin=3,
        jmax=3,
    )
    admin = add_user(db, "admin", role="admin")
    users = [add_user(db, f"g{i}") for i in range(6)]
    gold = gold_answers(db, seeded.job_id)
    pages = [_serve(db, u) for u in users]
    answers = [_answers(db, p, gold) for p in pages]
    with db.session() as s:
        target = s.scalar(select(GoldItem).where(GoldItem.image_id == seeded.gold_ids[0]))
        gold_id, old = target.id, list(target.accepted_answers)
    new = ["NORMAL", "PNEUMONIA"]  # widen: both answers now count as right

    def act(i: int):
        if i == len(users):
            with db.session() as s:
                job, spec = job_and_spec(s, JOB)
                return commands.update_gold(
                    s, job, spec, s.get(User, admin), gold_id, now=utcnow(), accepted_answers=new
                )
        # Half answer the test question the old way, half the other way.
        flipped = [
            a.model_copy(update={"answer": "NORMAL" if a.answer == "PNEUMONIA" else "PNEUMONIA"})
            if i % 2 and a.image_public_id in gold
            else a
            for a in answers[i]
        ]
        return _submit(db, users[i], pages[i], f"c{i}", flipped)

    results = together(len(users) + 1, act)
    assert not [r for r in results if isinstance(r, Exception)], results
    with db.session() as s:
        job, spec = job_and_spec(s, JOB)
        accepted = s.get(GoldItem, gold_id).accepted_answers
        assert sorted(accepted) == sorted(new) != sorted(old)
        graded = s.execute(
            select(Judgment.answer, Judgment.gold_missed).where(
                Judgment.image_id == seeded.gold_ids[0]
            )
        ).all()
        report = audit.verify_replay(s, job, spec)
    # Whoever answered before or after the change: graded by the final accepted answers.
    assert all(missed == (answer not in accepted) for answer, missed in graded), graded
    assert len(graded) == len(users)
    assert report.matched, report.differences


def test_concurrent_submits_on_shared_images_replay_exactly(db, tmp_path):
    """Many annotators submit pages with the same images at once: the stored aggregate of
    each image must be the one the quality log replays to (found by the PostgreSQL load run:
    rows read before the job lock were used after it)."""
    seed_job(
        db,
        tmp_path,
        n_work=3,
        n_gold=12,
        quiz_length=0,
        items_per_page=4,
        gold_per_page=1,
        jmin=32,
        jmax=32,
    )
    gold = gold_answers(db, 1)
    for round_ in range(4):
        users = [add_user(db, f"s{round_}-{i}") for i in range(8)]
        pages = [_serve(db, u) for u in users]
        answers = [
            [
                a.model_copy(update={"answer": ["NORMAL", "PNEUMONIA"][(i + j) % 2]})
                if a.image_public_id not in gold
                else a
                for j, a in enumerate(_answers(db, p, gold))
            ]
            for i, p in enumerate(pages)
        ]
        results = together(
            len(users),
            lambda i, u=users, p=pages, a=answers: _submit(db, u[i], p[i], f"c{i}", a[i]),
        )
        assert not [r for r in results if isinstance(r, Exception)], results
    with db.session() as s:
        job, spec = job_and_spec(s, JOB)
        report = audit.verify_replay(s, job, spec)
    assert report.matched, report.differences
