"""The quality engine behind the real annotation engine (join -> next page -> submit), and two
experts finalising the same image at the same time."""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from cxrlabel.annotate.assignment import join_job, next_page_or_reason
from cxrlabel.annotate.schemas import AnswerIn
from cxrlabel.annotate.submission import submit_page
from cxrlabel.quality import audit, commands
from cxrlabel.quality.store import ReviewConflict
from cxrlabel.storage.models import AnnotatorState, ExpertReview, GoldItem, Image, Job, User
from quality_support import make_env, pass_quiz
from web_support import add_user, seed_job

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


def test_annotation_engine_drives_quality_and_replays(db, tmp_path):
    seeded = seed_job(
        db,
        tmp_path,
        n_work=8,
        n_gold=8,
        quiz_length=3,
        items_per_page=4,
        min_accuracy=0.6,
        jmin=2,
        jmax=3,
    )
    with db.session() as s:
        gold = {g.image_id: g.accepted_answers[0] for g in s.scalars(select(GoldItem))}
        truth = {
            i.id: ("PNEUMONIA" if i.id % 2 else "NORMAL")
            for i in s.scalars(select(Image).where(Image.job_id == seeded.job_id))
        }
    users = {name: add_user(db, name) for name in ("good1", "good2", "good3", "bad")}
    now, results = T0, {}
    rng = random.Random(7)
    for _round in range(12):
        for name, uid in users.items():
            now += timedelta(minutes=1)
            with db.session() as s:
                job, user = s.get(Job, seeded.job_id), s.get(User, uid)
                join_job(s, job, seeded.spec, user, now)
                page, _ = next_page_or_reason(s, job, seeded.spec, user, now, rng=rng)
                if page is None:
                    continue
                answers = []
                for item in page.items:
                    right = gold.get(item.image_id, truth[item.image_id])
                    wrong = "NORMAL" if right == "PNEUMONIA" else "PNEUMONIA"
                    answers.append(
                        AnswerIn(
                            image_public_id=item.image.public_id,
                            answer=wrong if name == "bad" else right,
                            certainty="definitely",
                        )
                    )
                result = submit_page(
                    s,
                    job,
                    seeded.spec,
                    user,
                    page.public_id,
                    f"{name}-{_round}",
                    answers,
                    now + timedelta(seconds=40),
                )
                results.setdefault(name, []).append(result)
    assert results["bad"][0].quiz_passed is False
    # The job allows one retake (gold.quiz_retakes = 1): a second quiz, on other questions,
    # and its failure is final.
    assert results["bad"][0].annotator_status == "quiz"
    assert results["bad"][1].annotator_status == "disqualified"
    assert len(results["bad"][0].missed_gold) == 3
    first, second = ({m.image_public_id for m in r.missed_gold} for r in results["bad"][:2])
    assert len(second) == 3 and not first & second
    assert all(r.quiz_passed for r in (results[n][0] for n in ("good1", "good2", "good3")))
    with db.session() as s:
        job = s.get(Job, seeded.job_id)
        states = {st.user_id: st for st in s.scalars(select(AnnotatorState))}
        assert states[users["bad"]].status == "disqualified"
        assert states[users["good1"]].trust > 0.6
        images = s.scalars(
            select(Image).where(Image.job_id == job.id, Image.status == "finalised")
        ).all()
        assert images, "the good annotators finalised some images"
        assert all(i.label == truth[i.id] and i.trusted_judgments >= 2 for i in images)
        report = audit.verify_replay(s, job, seeded.spec)
    assert report.matched, report.differences
    assert report.judgments == sum(r.saved for rs in results.values() for r in rs)


def test_two_experts_at_once_the_second_gets_a_conflict(db):
    env = make_env(db, jmin=2, jmax=2)
    for name in ("a1", "a2"):
        env.add_user(name)
        pass_quiz(env, name)
    env.submit("a1", {"w0": "PNEUMONIA"})
    env.submit("a2", {"w0": "NORMAL"})
    env.add_user("doc1", role="expert")
    env.add_user("doc2", role="expert")
    first_recorded, outcome = threading.Event(), {}

    def expert(name, hold):
        try:
            with db.session() as s:
                job = s.get(Job, env.job_id)
                commands.record_expert_label(
                    s,
                    job,
                    env.spec,
                    env.user(s, name),
                    env.images["w0"],
                    "PNEUMONIA",
                    None,
                    env.clock,
                )
                if hold:
                    first_recorded.set()
                    time.sleep(0.5)  # still uncommitted while the second expert tries
            outcome[name] = "ok"
        except ReviewConflict as exc:
            outcome[name] = exc

    one = threading.Thread(target=expert, args=("doc1", True))
    one.start()
    assert first_recorded.wait(10)
    two = threading.Thread(target=expert, args=("doc2", False))
    two.start()
    one.join(20)
    two.join(20)
    assert outcome["doc1"] == "ok"
    assert isinstance(outcome["doc2"], ReviewConflict) and outcome["doc2"].status == 409
    with db.session() as s:
        reviews = s.scalars(select(ExpertReview)).all()
        assert [r.expert_id for r in reviews] == [env.users["doc1"]]
    assert env.image("w0").status == "expert"
