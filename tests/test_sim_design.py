"""Job-design levers of the simulator: gold drawn from clear cases, sweep settings with quiz,
can't-tell and arbitrary job-file overrides, reusable templates, per-image model scores."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import select

from cxrlabel.design import goldseed
from cxrlabel.jobspec import JobSpecError, load_job, resolve_job_path
from cxrlabel.sim.engine import Truth
from cxrlabel.sim.prepare import SimSetupError
from cxrlabel.sim.scores import load_model_scores
from cxrlabel.sim.sweep import (
    Setting,
    Template,
    apply_setting,
    load_template,
    parse_setting,
    save_template,
)
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import GoldItem, Image
from design_support import add_image, bundled_job


@pytest.fixture
def twenty(tmp_path: Path):
    """The bundled job with 10 NORMAL and 10 PNEUMONIA images, one patient each."""
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    with db.session() as s:
        job, _spec = bundled_job(s)
        for k in range(20):
            add_image(
                s,
                job,
                tmp_path,
                k,
                name=f"case-{k}.jpeg",
                patient_id=f"p{k}",
                reference_label="NORMAL" if k < 10 else "PNEUMONIA",
            )
    yield db, tmp_path
    db.dispose()


def _gold_ids(db: Database) -> set[int]:
    with db.session() as s:
        return set(s.scalars(select(GoldItem.image_id)))


# --- gold of clear cases ------------------------------------------------------------------


def test_gold_is_drawn_only_from_the_clearest_cases_of_each_class(twenty) -> None:
    db, _ = twenty
    with db.session() as s:
        job, spec = bundled_job(s)
        ids = sorted(s.scalars(select(Image.id)))
        # Clarity unrelated to the label: within each class the odd positions are the clear ones.
        clarity = {image_id: (0.1 if i % 2 else 0.9) + i / 1000 for i, image_id in enumerate(ids)}
        _summary, by_label = goldseed.sample_from_reference(
            s, job, spec, 6, seed=1, clearest_fraction=0.5, clarity=clarity
        )
    assert by_label == {"NORMAL": 3, "PNEUMONIA": 3}  # still balanced
    gold = _gold_ids(db)
    assert all(clarity[i] < 0.5 for i in gold)  # only from the clear half of each class
    # Every clear image is a candidate: other seeds reach other clear images.
    with db.session() as s:
        job, spec = bundled_job(s)
        s.execute(GoldItem.__table__.delete())
        for image in s.scalars(select(Image)):
            image.status = "needs_judgments"
        goldseed.sample_from_reference(
            s, job, spec, 10, seed=2, clearest_fraction=0.5, clarity=clarity
        )
    assert _gold_ids(db) == {i for i in ids if clarity[i] < 0.5}


def test_clarity_defaults_to_the_model_score_and_needs_one(twenty) -> None:
    db, _ = twenty
    with db.session() as s:
        job, spec = bundled_job(s)
        with pytest.raises(ValueError, match="model score"):
            goldseed.sample_from_reference(s, job, spec, 4, clearest_fraction=0.5)
        with pytest.raises(ValueError, match="clearest_fraction"):
            goldseed.sample_from_reference(s, job, spec, 4, clearest_fraction=0.0)
        images = list(s.scalars(select(Image).order_by(Image.id)))
        for i, image in enumerate(images):  # the model is sure of the first 5 of each class
            sure = i % 10 < 5
            positive = image.reference_label == "PNEUMONIA"
            image.model_score = (0.97 if positive else 0.03) if sure else 0.5
        s.flush()
        goldseed.sample_from_reference(s, job, spec, 4, seed=0, clearest_fraction=0.5)
        chosen = [s.get(Image, i) for i in _ids_of_gold(s)]
    assert len(chosen) == 4
    assert all(abs(im.model_score - 0.5) > 0.4 for im in chosen)


def _ids_of_gold(session) -> list[int]:  # a Session
    return list(session.scalars(select(GoldItem.image_id)))


def test_default_sampling_is_unchanged_by_the_new_option(twenty) -> None:
    db, tmp_path = twenty
    with db.session() as s:
        job, spec = bundled_job(s)
        goldseed.sample_from_reference(s, job, spec, 6, seed=3)
    first = _gold_ids(db)
    other = Database(f"sqlite:///{tmp_path / 'other.sqlite3'}")
    try:
        with other.session() as s:
            job, spec = bundled_job(s)
            for k in range(20):
                add_image(
                    s,
                    job,
                    tmp_path,
                    k,
                    name=f"case-{k}.jpeg",
                    patient_id=f"p{k}",
                    reference_label="NORMAL" if k < 10 else "PNEUMONIA",
                )
            goldseed.sample_from_reference(
                s, job, spec, 6, seed=3, clearest_fraction=1.0, clarity={}
            )
        assert _gold_ids(other) == first
    finally:
        other.dispose()


# --- settings -------------------------------------------------------------------------------


def test_parse_setting_with_quiz_cant_tell_and_overrides() -> None:
    spec = load_job(resolve_job_path("pneumonia-pediatric"))
    setting = parse_setting("2,5,0.8,1,0.65,trust,6,0.6+pages.min_seconds_per_page=12.5")
    assert setting == Setting(
        2, 5, 0.8, 1, 0.65, "trust", 6, 0.6, (("pages.min_seconds_per_page", "12.5"),)
    )
    assert setting.key == "j2-5 c0.8 g1 a0.65 trust q6 ct0.6 +pages.min_seconds_per_page=12.5"
    changed = apply_setting(spec, setting)
    assert (
        changed.judgments.min,
        changed.gold.quiz_length,
        changed.review.cant_tell_fraction,
        changed.pages.min_seconds_per_page,
    ) == (2, 6, 0.6, 12.5)
    assert parse_setting("3,5,0.8,1,0.75,trust") == Setting()  # the short form still works
    for bad in ("3,5,0.8", "3,5,x,1,0.75,trust", "3,5,0.8,1,0.75,trust+nothing"):
        with pytest.raises(ValueError, match="expected|section.field"):
            parse_setting(bad)
    with pytest.raises(JobSpecError, match="no_such_field"):  # unknown fields are refused
        apply_setting(spec, parse_setting("3,5,0.8,1,0.75,trust+judgments.no_such_field=1"))


def test_template_is_reused_only_for_the_same_parameters(tmp_path: Path) -> None:
    (tmp_path / "template.sqlite3").write_bytes(b"")
    truth = Truth({1: "NORMAL", 2: "PNEUMONIA"}, {1: 0.25, 2: 0.75})
    template = Template(tmp_path / "template.sqlite3", 7, truth, {"gold_bank": 5})
    save_template(template, {"seed": 0, "gold_clearest": 0.7})
    again = load_template(tmp_path / "template.sqlite3", {"seed": 0, "gold_clearest": 0.7})
    assert again is not None and again.truth == truth and again.job_id == 7
    assert again.setup == {"gold_bank": 5}
    assert load_template(tmp_path / "template.sqlite3", {"seed": 0, "gold_clearest": 1.0}) is None
    assert load_template(tmp_path / "missing.sqlite3", {"seed": 0}) is None


# --- model scores ---------------------------------------------------------------------------


def test_model_scores_match_by_path_suffix_and_sha256(twenty) -> None:
    db, tmp_path = twenty
    with db.session() as s:
        images = {Path(im.source_path).name: im for im in s.scalars(select(Image))}
        images["case-3.jpeg"].source_path = "/data/src/val/NORMAL/case-3.jpeg"
        sha_of_5 = images["case-5.jpeg"].sha256
        job_id = images["case-5.jpeg"].job_id
    csv_path = tmp_path / "scores.csv"
    csv_path.write_text(
        "file,p_pneumonia,sha256\n"
        "train/case-1.jpeg,0.25,\n"  # matched by file name under another folder
        "val/NORMAL/case-3.jpeg,0.75,\n"  # matched by the longer suffix
        "anything.jpeg,0.5," + sha_of_5 + "\n"  # matched by content hash
        "a/case-7.jpeg,0.1,\nb/case-7.jpeg,0.9,\n",  # two rows share the name: not used
        encoding="utf-8",
    )
    summary = load_model_scores(db, job_id, csv_path)
    assert summary["matched"] == 3 and summary["images_without_score"] == 17
    with db.session() as s:
        scores = {Path(im.source_path).name: im.model_score for im in s.scalars(select(Image))}
    assert (scores["case-1.jpeg"], scores["case-3.jpeg"], scores["case-5.jpeg"]) == (
        0.25,
        0.75,
        0.5,
    )
    assert scores["case-7.jpeg"] is None and scores["case-2.jpeg"] is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("file,score\nx.jpeg,0.5\n", "columns file,p_pneumonia"),
        ("file,p_pneumonia\ncase-1.jpeg,high\n", "not a number"),
        ("file,p_pneumonia\ncase-1.jpeg,1.5\n", r"not in \[0, 1\]"),
        ("file,p_pneumonia\n", "no rows"),
        ("file,p_pneumonia\nnot-here.jpeg,0.5\n", "matches an image"),
    ],
)
def test_bad_model_score_files_give_one_clear_error(twenty, text: str, message: str) -> None:
    db, tmp_path = twenty
    path = tmp_path / f"bad-{hashlib.sha256(text.encode()).hexdigest()[:8]}.csv"
    path.write_text(text, encoding="utf-8")
    with db.session() as s:
        job_id = s.scalar(select(Image.job_id))
    with pytest.raises(SimSetupError, match=message):
        load_model_scores(db, job_id, path)


def test_cli_refuses_a_bad_setting_or_missing_scores_before_any_work(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cxrlabel.cli import app

    runner = CliRunner()
    base = ["--data-dir", str(tmp_path), "design-sweep", "--images", str(tmp_path)]
    bad = runner.invoke(app, [*base, "--setting", "2,5,0.8"])
    assert bad.exit_code == 2 and "expected min,max" in bad.output
    missing = runner.invoke(app, [*base, "--model-scores", str(tmp_path / "none.csv")])
    assert missing.exit_code == 2 and "no such file" in missing.output
    assert not (tmp_path / "simulation").exists()  # nothing was written
