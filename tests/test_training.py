"""Training before the quiz (issue 17): practice pages from a pool kept apart from the gold bank,
feedback after every page, counted for nothing. Real databases, the real web app, the real
simulator."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from sqlalchemy import func, select

from cxrlabel.config import Settings
from cxrlabel.design.goldbank import GoldImportError, import_gold_csv
from cxrlabel.design.goldseed import sample_from_reference
from cxrlabel.design.trainingpool import TrainingPoolError, add_training_item, sample_training
from cxrlabel.quality.audit import verify_replay
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import (
    AnnotatorState,
    AuditEvent,
    GoldItem,
    Image,
    ImageStatus,
    Job,
    Judgment,
    Page,
    PageItem,
    PageKind,
    TrainingAnswer,
    TrainingItem,
    utcnow,
)
from cxrlabel.web.app import create_app
from web_support import add_user, csrf_from_html, gold_answers, seed_job

PASSWORD = "correct horse battery"
TRAINING_REASON = "TRAINING-REASON-"


def _make_training(db: Database, seeded, n: int) -> dict[int, str]:
    """The first ``n`` work images become training cases; image id -> answer."""
    answers = {}
    with db.session() as s:
        job = s.get_one(Job, seeded.job_id)
        for i, image_id in enumerate(seeded.work_ids[:n]):
            answer = "PNEUMONIA" if i % 2 else "NORMAL"
            add_training_item(
                s,
                job,
                seeded.spec,
                s.get_one(Image, image_id),
                answer,
                f"{TRAINING_REASON}{i}: look at both lower lobes",
                utcnow(),
            )
            answers[image_id] = answer
    return answers


@pytest.fixture
def web(db_url: str, tmp_path: Path):
    db = Database(db_url)
    seeded = seed_job(
        db,
        tmp_path,
        n_work=16,
        n_gold=8,
        quiz_length=3,
        items_per_page=4,
        min_accuracy=0.6,
        training_items=4,
        training_per_page=2,
    )
    training = _make_training(db, seeded, 4)
    app = create_app(Settings(data_dir=tmp_path, db_url=db_url), db=db)
    yield app, db, seeded, training
    db.dispose()


def _login(client: TestClient, username: str) -> None:
    token = csrf_from_html(client.get("/login").text)
    r = client.post(
        "/login",
        data={"username": username, "password": PASSWORD, "csrf_token": token, "next": "/"},
        follow_redirects=False,
    )
    assert r.status_code == 303


def _form(html: str) -> tuple[str, dict[str, str], list[str]]:
    action = re.search(r'id="work-form" method="post" action="([^"]+)"', html).group(1)
    client_id = re.search(r'name="client_submission_id" value="([^"]+)"', html).group(1)
    pids = list(dict.fromkeys(re.findall(r'name="answer-([^"]+)"', html)))
    return action, {"csrf_token": csrf_from_html(html), "client_submission_id": client_id}, pids


def _answer_all(data: dict[str, str], pids: list[str], answer_of) -> dict[str, str]:
    for pid in pids:
        data[f"answer-{pid}"] = answer_of(pid)
        data[f"certainty-{pid}"] = "definitely"
        data[f"flag-{pid}"] = ""
    return data


def _quality_snapshot(db: Database, job_id: int) -> tuple:
    with db.session() as s:
        state = s.scalars(select(AnnotatorState).where(AnnotatorState.job_id == job_id)).one()
        images = s.execute(
            select(
                Image.id, Image.status, Image.label, Image.confidence, Image.trusted_judgments
            ).order_by(Image.id)
        ).all()
        return (
            (
                state.status,
                state.trust,
                state.gold_seen,
                state.gold_missed,
                state.judgments,
                state.answer_counts,
            ),
            tuple(images),
            s.scalar(select(func.count()).select_from(Judgment)),
            s.scalar(select(func.count()).select_from(AuditEvent)),
        )


def test_instructions_then_training_with_feedback_then_quiz(web) -> None:
    app, db, seeded, training = web
    with db.session() as s:
        public = dict(s.execute(select(Image.id, Image.public_id)).all())
    uid = add_user(db, "ann1")
    # the annotator sees per-user image aliases (annotate/aliases.py), never shared ids
    alias = app.state.image_urls.aliases
    training_answer = {alias.image(public[i], uid): a for i, a in training.items()}
    gold = {alias.image(pid, uid): acc for pid, acc in gold_answers(db, seeded.job_id).items()}
    client = TestClient(app)
    _login(client, "ann1")
    r = client.get("/jobs/test-job", follow_redirects=False)
    assert r.headers["location"].endswith("/instructions")
    before = None
    wrong = {"NORMAL": "PNEUMONIA", "PNEUMONIA": "NORMAL"}
    for _ in range(2):  # 4 training cases, 2 a page
        html = client.get("/jobs/test-job/page").text
        assert "Training:" in html and "Quiz:" not in html
        action, data, pids = _form(html)
        assert len(pids) == 2 and set(pids) <= set(training_answer)
        assert not set(pids) & set(gold)
        if before is None:
            before = _quality_snapshot(db, seeded.job_id)
        # The first case answered wrong, the second right: the feedback says which.
        first = pids[0]
        data = _answer_all(
            data,
            pids,
            lambda pid, first=first: (
                wrong[training_answer[pid]] if pid == first else training_answer[pid]
            ),
        )
        r = client.post(action, data=data, follow_redirects=True)
        assert r.status_code == 200 and "Training: the right answers" in r.text
        assert "1 of 2 right" in r.text and r.text.count(TRAINING_REASON) == 2
        for pid in pids:  # the image is shown again, and the browser may load it
            assert f'src="/img/{pid}"' in r.text
            assert client.get(f"/img/{pid}").status_code == 200
        assert "Not quite." in r.text and "Right." in r.text and "Continue" in r.text
        # counted for nothing: trust, counters, labels, judgments and the audit log unchanged
        assert _quality_snapshot(db, seeded.job_id) == before
    html = client.get("/jobs/test-job/page").text
    assert "Quiz:" in html and "Training:" not in html
    action, data, pids = _form(html)
    assert set(pids) <= set(gold) and not set(pids) & set(training_answer)
    r = client.post(
        action, data=_answer_all(data, pids, lambda pid: gold[pid][0]), follow_redirects=True
    )
    assert "You passed the quiz" in r.text
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(TrainingAnswer)) == 4
        assert (
            s.scalar(
                select(func.count())
                .select_from(TrainingAnswer)
                .where(TrainingAnswer.correct.is_(True))
            )
            == 2
        )
        job = s.get_one(Job, seeded.job_id)
        report = verify_replay(s, job, seeded.spec)
    assert report.matched, report.differences[:5]


def test_training_answers_never_become_judgments_gold_or_work(web) -> None:
    app, db, seeded, training = web
    uid = add_user(db, "ann1")
    alias = app.state.image_urls.aliases
    gold = {alias.image(pid, uid): acc for pid, acc in gold_answers(db, seeded.job_id).items()}
    client = TestClient(app)
    _login(client, "ann1")
    for _ in range(8):  # training, quiz, then work pages
        html = client.get("/jobs/test-job/page").text
        if "work-form" not in html:
            break
        action, data, pids = _form(html)
        client.post(
            action,
            data=_answer_all(data, pids, lambda pid: gold.get(pid, ["NORMAL"])[0]),
            follow_redirects=True,
        )
    with db.session() as s:
        kinds = list(s.scalars(select(Page.kind).order_by(Page.id)))
        assert kinds[:3] == [PageKind.TRAINING, PageKind.TRAINING, PageKind.QUIZ]
        assert PageKind.WORK in kinds
        ids = set(training)
        assert not ids & set(s.scalars(select(GoldItem.image_id)))
        assert not ids & set(s.scalars(select(Judgment.image_id)))
        on_other_pages = s.scalars(
            select(PageItem.image_id)
            .join(Page)
            .where(Page.kind != PageKind.TRAINING, PageItem.image_id.in_(ids))
        ).all()
        assert on_other_pages == []
        statuses = set(s.scalars(select(Image.status).where(Image.id.in_(ids))))
        assert statuses == {ImageStatus.TRAINING}
        assert s.scalar(select(func.count()).select_from(Judgment)) > 0


def test_pool_and_bank_refuse_each_others_images(db: Database, tmp_path: Path) -> None:
    seeded = seed_job(db, tmp_path, n_work=20, n_gold=2, training_items=4)
    with db.session() as s:  # reference labels, so both samplers can draw
        for i, image_id in enumerate(seeded.work_ids):
            image = s.get_one(Image, image_id)
            image.reference_label = "PNEUMONIA" if i % 2 else "NORMAL"
            image.phash = f"{i * 0x1111111111111 % (1 << 64):016x}"
            image.patient_id = f"p{i}"
    with db.session() as s:
        job = s.get_one(Job, seeded.job_id)
        per_label = sample_training(s, job, seeded.spec, 6, seed=3)
        assert sum(per_label.values()) == 6
        summary, _ = sample_from_reference(s, job, seeded.spec, 100, seed=3)
        assert summary.created > 0
        training_ids = set(s.scalars(select(TrainingItem.image_id)))
        gold_ids = set(s.scalars(select(GoldItem.image_id)))
        assert len(training_ids) == 6 and not training_ids & gold_ids
        with pytest.raises(TrainingPoolError, match="never be shown with its answer"):
            add_training_item(
                s, job, seeded.spec, s.get_one(Image, seeded.gold_ids[0]), "NORMAL", "no", utcnow()
            )
        public = s.get_one(Image, min(training_ids)).public_id
    csv_path = tmp_path / "gold.csv"
    csv_path.write_text(f"image,accepted_answers,reason\n{public},NORMAL,clear\n")
    with db.session() as s:
        job = s.get_one(Job, seeded.job_id)
        with pytest.raises(GoldImportError) as info:
            import_gold_csv(s, job, seeded.spec, csv_path)
        assert "training case" in str(info.value.problems)


def test_simulated_crowd_trains_first_and_replays(tmp_path: Path, db_url: str) -> None:
    """The simulator's personas go through training (same engine path as the web app); the
    slow learner's training pages count as pages with feedback; replay still matches."""
    from cxrlabel.jobspec import load_job, resolve_job_path
    from cxrlabel.jobstore import ensure_job
    from cxrlabel.sim.crowd import mixed_crowd
    from cxrlabel.sim.run import fill_job
    from test_sim_engine import _phantom  # the simulator tests' synthetic X-rays

    root = tmp_path / "images"
    rng = np.random.default_rng(1)
    for label, n in (("NORMAL", 24), ("PNEUMONIA", 24)):
        (root / label).mkdir(parents=True)
        for i in range(n):
            pixels = _phantom(rng, label == "PNEUMONIA", float(rng.uniform(10, 90)))
            PILImage.fromarray(pixels).save(root / label / f"{label.lower()}-{i:03d}.png")
    path = resolve_job_path("pneumonia-pediatric")
    spec = load_job(path)
    assert spec.training.enabled  # the bundled job trains newcomers
    db = Database(db_url)
    try:
        with db.session() as session:
            ensure_job(session, path)
        crowd = mixed_crowd(
            "t", {"careful_novice": 0.5, "slow_learner": 0.5}, annotators=6, arrivals_per_hour=30
        )
        outcome = fill_job(
            db,
            spec.name,
            spec,
            images=root,
            crowd=crowd,
            seed=4,
            n_annotators=6,
            data_dir=tmp_path,
            gold=16,
        )
        with db.session() as s:
            job = s.scalar(select(Job).where(Job.name == spec.name))
            training_ids = set(s.scalars(select(TrainingItem.image_id)))
            assert len(training_ids) == spec.training.items
            assert not training_ids & set(s.scalars(select(GoldItem.image_id)))
            assert not training_ids & set(s.scalars(select(Judgment.image_id)))
            first_quiz = dict(
                s.execute(
                    select(Page.user_id, func.min(Page.id))
                    .where(Page.kind == PageKind.QUIZ)
                    .group_by(Page.user_id)
                ).all()
            )
            last_training = dict(
                s.execute(
                    select(Page.user_id, func.max(Page.id))
                    .where(Page.kind == PageKind.TRAINING)
                    .group_by(Page.user_id)
                ).all()
            )
            report = verify_replay(s, job, spec)
    finally:
        db.dispose()
    assert report.matched, report.differences[:5]
    assert first_quiz and set(first_quiz) == set(last_training)
    assert all(last_training[u] < first_quiz[u] for u in first_quiz)  # training first
    record = outcome.record
    per_page = spec.training.per_page
    for a in record.annotators:
        if a.quiz_pages:
            assert a.training_pages == -(-spec.training.items // per_page)
            # training pages are pages with feedback: the slow learner starts the quiz better
            assert a.pages_submitted >= a.training_pages + a.quiz_pages
    assert outcome.result["training_pages"] == record.training_pages > 0


def test_cli_training_sample_and_list(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cxrlabel.cli import app
    from design_support import add_image, bundled_job

    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    db = Database(url)
    with db.session() as s:
        job, _ = bundled_job(s)
        for k in range(12):
            add_image(
                s,
                job,
                tmp_path,
                k,
                reference_label="PNEUMONIA" if k % 2 else "NORMAL",
                patient_id=f"p{k}",
            )
    runner = CliRunner()
    args = ["--data-dir", str(tmp_path), "--db", url, "training"]
    result = runner.invoke(app, [*args, "sample", "--from-reference", "4", "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert "4 training cases sampled (NORMAL 2, PNEUMONIA 2)" in result.output
    listed = runner.invoke(app, [*args, "list"])
    assert listed.exit_code == 0 and listed.output.count("Reference label") == 4
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(TrainingItem)) == 4
        assert (
            s.scalar(
                select(func.count()).select_from(Image).where(Image.status == ImageStatus.TRAINING)
            )
            == 4
        )
    db.dispose()
