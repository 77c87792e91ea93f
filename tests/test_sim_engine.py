"""The simulator through the real ingest, assignment, submission and quality engines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select
from typer.testing import CliRunner

from cxrlabel.cli import app
from cxrlabel.jobspec import Training, load_job, resolve_job_path
from cxrlabel.jobstore import ensure_job
from cxrlabel.sim.crowd import mixed_crowd
from cxrlabel.sim.run import RESULT_KEYS, simulate_into
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import AnnotatorState, AnnotatorStatus, Job, Role, User
from live_server import LiveServer

OUT = (AnnotatorStatus.REMOVED, AnnotatorStatus.DISQUALIFIED)


def _phantom(rng: np.random.Generator, pneumonia: bool, strength: float) -> np.ndarray:
    """A 96x96 'chest': two dark lung fields; pneumonia adds a bright patch of some strength."""
    yy, xx = np.mgrid[0:96, 0:96]
    img = 170 + rng.normal(0, 18, (96, 96))
    for cx in (30, 66):
        img -= 90 * np.exp(-(((xx - cx) / 14) ** 2 + ((yy - 48) / 28) ** 2))
    if pneumonia:
        cx, cy = rng.integers(22, 74), rng.integers(30, 66)
        img += strength * np.exp(-(((xx - cx) / 9) ** 2 + ((yy - cy) / 9) ** 2))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def phantom_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 synthetic images in NORMAL/ and PNEUMONIA/ folders (labels from folder names)."""
    root = tmp_path_factory.mktemp("sim-images")
    rng = np.random.default_rng(0)
    for label, n in (("NORMAL", 28), ("PNEUMONIA", 36)):
        (root / label).mkdir()
        for i in range(n):
            pixels = _phantom(rng, label == "PNEUMONIA", float(rng.uniform(10, 90)))
            PILImage.fromarray(pixels).save(root / label / f"{label.lower()}-{i:03d}.png")
    return root


def _spec():
    path = resolve_job_path("pneumonia-pediatric")
    return path, load_job(path)


def test_cli_simulate_is_deterministic_and_writes_its_result(
    phantom_images: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    outputs = []
    for run in range(2):
        data_dir = tmp_path / f"data{run}"
        args = [
            "--data-dir",
            str(data_dir),
            "simulate",
            "--images",
            str(phantom_images),
            "--crowd",
            "good",
            "--seed",
            "5",
            "--json",
            "--annotators",
            "8",
            "--gold",
            "20",
            "--plots",
            str(tmp_path / "plots"),
        ]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        outputs.append(result.stdout)
        written = json.loads((data_dir / "simulation" / "pneumonia-pediatric.json").read_text())
        assert written == json.loads(result.stdout)
    assert outputs[0] == outputs[1]  # same seed, same JSON, byte for byte
    result = json.loads(outputs[0])
    for key in RESULT_KEYS:
        assert key in result
    # the bundled job's training pool (6 cases) is neither work nor gold
    assert result["training_items"] == 6 and result["training_pages"] > 0
    assert result["images"] == 64 - 20 - 6 and result["gold_items"] == 20
    assert result["setup"]["intake"] == "ingest"
    assert 0.5 < result["label_accuracy"] <= 1.0
    assert result["judgments_per_image"] >= 1.0
    # Where the wrong labels come from: the parts add up to the whole.
    errors = result["errors"]
    parts = [errors["finalised"], *errors["expert_by_review_reason"].values()]
    assert sum(p["images"] for p in parts) == result["labelled_images"]
    assert sum(p["images"] for p in errors["by_difficulty"]) == result["labelled_images"]
    wrong = sum(p["wrong"] for p in parts)
    assert wrong == sum(p["wrong"] for p in errors["by_difficulty"])
    assert wrong == round((1 - result["label_accuracy"]) * result["labelled_images"])
    assert errors["finalised"]["images"] == sum(p["finalised"] for p in errors["by_difficulty"])
    # Training pages are practice, unpaid unless the job says pay.training_paid.
    assert result["training_pages"] > 0
    assert result["cost"] == pytest.approx((result["pages"] - result["training_pages"]) * 0.10)
    assert (tmp_path / "plots" / "accuracy_vs_judgments.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "trust_by_persona.png").stat().st_size > 1000


def test_cli_rejects_bad_crowd_and_missing_images(phantom_images: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "--data-dir",
            str(tmp_path),
            "simulate",
            "--images",
            str(phantom_images),
            "--crowd",
            "nonsense",
        ],
    )
    assert result.exit_code == 2 and "no such crowd file or preset" in result.output
    result = runner.invoke(
        app, ["--data-dir", str(tmp_path), "simulate", "--images", str(tmp_path / "nothing-here")]
    )
    assert result.exit_code == 2 and "no such file or folder" in result.output


def test_spammers_are_removed_and_the_stored_state_replays(
    phantom_images: Path, db_url: str, tmp_path: Path
) -> None:
    from cxrlabel.quality.audit import verify_replay

    path, spec = _spec()
    # The scenario as written before training existed (training reorders every random pick;
    # test_training.py runs the simulator with training on).
    spec = spec.model_copy(update={"training": Training(enabled=False)})
    db = Database(db_url)
    try:
        with db.session() as session:
            ensure_job(session, path)
        crowd = mixed_crowd(
            "test",
            {"careful_novice": 0.5, "spammer_random": 0.25, "spammer_constant": 0.25},
            annotators=12,
            arrivals_per_hour=30,
        )
        result = simulate_into(
            db,
            spec.name,
            spec,
            images=phantom_images,
            crowd=crowd,
            seed=2,
            n_annotators=12,
            data_dir=tmp_path,
            gold=20,
        )
        with db.session() as session:
            job = session.scalar(select(Job).where(Job.name == spec.name))
            rows = session.execute(
                select(User.username, User.role, AnnotatorState.status)
                .join(AnnotatorState, AnnotatorState.user_id == User.id)
                .where(AnnotatorState.job_id == job.id)
            ).all()
            report = verify_replay(session, job, spec)
    finally:
        db.dispose()
    spammers = [r for r in rows if r.username.startswith("sim-spammer-")]
    assert len(spammers) >= 3
    assert all(r.status in OUT for r in spammers), spammers
    assert all(r.role == Role.ANNOTATOR for r in rows)
    assert result["bad_annotators_removed"] == result["bad_annotators"] >= 3
    assert report.matched, report.differences[:5]
    assert report.judgments > 0


def test_http_driver_works_a_live_server_over_loopback(
    phantom_images: Path, tmp_path: Path
) -> None:

    from cxrlabel.config import Settings
    from cxrlabel.sim import http_driver
    from cxrlabel.sim.prepare import build_truth, ensure_gold, ingest_images, list_images
    from cxrlabel.storage.models import utcnow
    from cxrlabel.web.app import create_app

    path, spec = _spec()
    url = f"sqlite:///{tmp_path / 'web.sqlite3'}"
    db = Database(url)
    with db.session() as session:
        job, _ = ensure_job(session, path)
    ingest_images(db, job, spec, list_images(phantom_images, spec), tmp_path, utcnow())
    ensure_gold(db, job, spec, 20, seed=0, now=utcnow())
    truth, _ = build_truth(db, job.id, spec, data_dir=tmp_path)
    crowd = mixed_crowd("http", {"careful_novice": 1.0}, annotators=4)
    annotators = http_driver.create_annotators(db, crowd, 4, seed=1)
    with pytest.raises(ValueError, match="loopback"):
        http_driver.drive("http://example.org", spec.name, spec, annotators, truth)

    app = create_app(Settings(data_dir=tmp_path, db_url=url), db=db)
    with LiveServer(app) as base_url:
        stats = http_driver.drive(
            base_url,
            spec.name,
            spec,
            annotators,
            http_driver.truth_by_public_id(db, job.id, truth),
            aliases=app.state.image_urls.aliases,
            pages_per_annotator=3,
            time_limit_s=60,
        )
        db.dispose()
    summary = stats.summary()
    assert stats.pages_submitted >= 4  # every annotator at least took the quiz
    assert not [e for e in stats.errors if e.startswith("5")], stats.errors
    assert summary["next_ms"]["n"] >= 4 and summary["submit_ms"]["n"] >= 4
    assert sum(stats.stopped_by.values()) == 4


def test_sweep_runs_settings_on_copies_of_one_template(
    phantom_images: Path, tmp_path: Path
) -> None:
    from cxrlabel.sim import sweep as sw
    from cxrlabel.sim.crowd import load_crowd

    path, spec = _spec()
    template = sw.build_template(
        spec,
        path.read_text(encoding="utf-8"),
        phantom_images,
        tmp_path,
        limit=None,
        seed=0,
        gold=20,
    )
    crowd = load_crowd("good").with_settings(annotators=8)
    settings = [sw.setting_of(spec), sw.Setting(2, 4, 0.8, 1, 0.65, "mv")]
    rows = sw.sweep(template, tmp_path, spec, settings, [crowd], seed=0)
    assert [r["setting"] for r in rows] == [s.key for s in settings]
    assert rows[0]["min_judgments"] == 2 and rows[1]["aggregation"] == "mv"
    for row in rows:
        assert 0.0 < row["label_accuracy"] <= 1.0 and row["cost_per_image"] > 0
    assert not list(tmp_path.glob("run-*"))  # each run's copy is cleaned up
    summary = sw.summarise_settings(rows)
    best, _why = sw.recommend(summary, 0.5)
    assert best is not None and best["setting"] in {s.key for s in settings}


def test_gold_of_clear_cases_comes_from_the_pixel_difficulty(
    phantom_images: Path, tmp_path: Path
) -> None:
    """--gold-clearest: gold only from the clearest part of each class, by the cross-fitted
    difficulty (pixels), and the simulation still runs on it."""
    from cxrlabel.sim import sweep as sw
    from cxrlabel.sim.crowd import load_crowd
    from cxrlabel.storage.models import GoldItem, Image

    path, spec = _spec()
    template = sw.build_template(
        spec,
        path.read_text(encoding="utf-8"),
        phantom_images,
        tmp_path,
        limit=None,
        seed=0,
        gold=16,
        gold_clearest=0.5,
    )
    assert template.setup["gold_clearest_fraction"] == 0.5
    db = Database(f"sqlite:///{template.path}")
    try:
        with db.session() as s:
            gold = set(s.scalars(select(GoldItem.image_id)))
            labels = dict(s.execute(select(Image.id, Image.reference_label)).all())
    finally:
        db.dispose()
    assert len(gold) == 16
    difficulty = template.truth.difficulty
    for label in ("NORMAL", "PNEUMONIA"):  # within each class, from its clearer half only
        ranked = sorted((difficulty[i], i) for i in labels if labels[i] == label)
        clear_half = {i for _d, i in ranked[: (len(ranked) + 1) // 2]}
        assert {i for i in gold if labels[i] == label} <= clear_half
    assert template.setup["gold_mean_difficulty"] < 0.4
    crowd = load_crowd("good").with_settings(annotators=6)
    row = sw.run_one(template, tmp_path, spec, crowd, 0, 1.0)
    assert row["label_accuracy"] is not None and row["quiz_pages"] >= 1
    # One ingest, several gold policies: a template without gold, gold added to copies.
    (tmp_path / "bare").mkdir()
    bare = sw.build_template(
        spec,
        path.read_text(encoding="utf-8"),
        phantom_images,
        tmp_path / "bare",
        limit=None,
        seed=0,
        sample_gold=False,
    )
    assert bare.setup["gold_bank"] == 0
    clear = sw.with_gold(
        bare, tmp_path / "clear.sqlite3", spec, n_gold=16, seed=0, gold_clearest=0.5
    )
    every = sw.with_gold(bare, tmp_path / "every.sqlite3", spec, n_gold=16, seed=0)
    assert clear.setup["gold_bank"] == every.setup["gold_bank"] == 16
    assert clear.setup["gold_mean_difficulty"] < every.setup["gold_mean_difficulty"]


def test_gold_top_up_refills_the_bank_from_the_crowd_through_the_page_code(
    phantom_images: Path, db_url: str, tmp_path: Path
) -> None:
    """``simulate --gold-top-up N`` (issue 17): once exposure has retired N test questions the
    simulated radiologist confirms N crowd proposals through the Gold proposals page's code;
    the new gold is stored as crowd gold, the confirmations are expert labels, and the log
    replays. Without it the same run retires gold and adds none."""
    from cxrlabel.quality.audit import verify_replay
    from cxrlabel.storage.models import ExpertReview, GoldItem

    path, spec = _spec()
    gold = spec.gold.model_copy(update={"quiz_length": 4, "retire_after_reveals": 1})
    spec = spec.model_copy(update={"training": Training(enabled=False), "gold": gold})
    crowd = mixed_crowd("test", {"careful_novice": 1.0}, annotators=16, arrivals_per_hour=30)
    outcomes = {}
    for top_up in (0, 2):
        db = Database(db_url if top_up else f"sqlite:///{tmp_path / 'off.sqlite3'}")
        try:
            with db.session() as session:
                ensure_job(session, path)
            result = simulate_into(
                db,
                spec.name,
                spec,
                images=phantom_images,
                crowd=crowd,
                seed=3,
                n_annotators=16,
                data_dir=tmp_path / str(top_up),
                gold=24,
                gold_top_up=top_up,
            )
            with db.session() as session:
                job = session.scalar(select(Job).where(Job.name == spec.name))
                crowd_gold = session.scalars(
                    select(GoldItem).where(GoldItem.job_id == job.id, GoldItem.source == "crowd")
                ).all()
                reviewed = set(session.scalars(select(ExpertReview.image_id)))
                report = verify_replay(session, job, spec)
        finally:
            db.dispose()
        assert report.matched, report.differences[:5]
        outcomes[top_up] = (result, crowd_gold, reviewed)
    off, on = outcomes[0][0], outcomes[2][0]
    assert (off["gold_topped_up"], off["gold_top_up_rounds"]) == (0, 0)
    assert on["gold_top_up_rounds"] >= 1 and on["gold_topped_up"] >= 1
    result, crowd_gold, reviewed = outcomes[2]
    assert len(crowd_gold) == result["gold_topped_up"]
    assert all(g.difficulty == "easy" and g.accepted_answers for g in crowd_gold)
    assert {g.image_id for g in crowd_gold} <= reviewed  # each is the expert's confirmation
    assert not outcomes[0][1]
