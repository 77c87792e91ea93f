"""Ingest hardening (issue 18): file names print literally (no Rich markup, no raw ANSI, no
traceback after rows are committed), and DICOMs with burned-in text are held for admin
review: never served, never gold, until released."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from cxrlabel.annotate.assignment import next_page
from cxrlabel.annotate.schemas import AnswerIn
from cxrlabel.annotate.submission import submit_page
from cxrlabel.cli import app as cli_app
from cxrlabel.design.goldbank import GoldImportError, import_gold_csv
from cxrlabel.design.goldseed import sample_from_reference
from cxrlabel.ingest.phantom import make_phantom_xray
from cxrlabel.ingest.pipeline import ingest
from cxrlabel.jobspec import load_job, resolve_job_path
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import Image, ImageStatus, Job, User, utcnow
from cxrlabel.terminal import printable
from cxrlabel.web.deps import job_and_spec
from fixtures_images import dicom_bytes, dicom_dataset, png_bytes, write
from web_support import add_user, gold_answers, seed_job

runner = CliRunner()
NASTY = ["[/bold]oops.png", "[red]x[/red].png", "\x1b[31mevil.png", "ok\u202etxt.png"]


def _dicom(seed: int, **attributes: object) -> bytes:
    pixels = np.asarray(make_phantom_xray(seed, 192), dtype=np.uint16) * 16
    return dicom_bytes(dicom_dataset(pixels, bits_stored=12, **attributes))


def test_printable_escapes_control_characters_only():
    assert printable("a b[red]c") == "a b[red]c"
    assert printable("\x1b[31mx\n") == "\\x1b[31mx\\n"
    assert printable("ok\u202etxt") == "ok\\u202etxt"


def test_ingest_prints_hostile_file_names_literally(tmp_path):
    src = tmp_path / "incoming" / "NORMAL"
    for name in NASTY:  # undecodable: each is listed by name in the "Failed" table
        write(src / name, b"not an image at all")
    write(src / "fine.png", png_bytes(make_phantom_xray(1, 256)))
    data = tmp_path / "data"
    r = runner.invoke(
        cli_app, ["--data-dir", str(data), "ingest", str(tmp_path / "incoming"), "--workers", "0"]
    )
    # Before issue 18: MarkupError traceback (exit 1) after the good file was committed.
    assert r.exit_code == 0, r.output
    out = r.output
    assert "Traceback" not in out and "\x1b" not in out and "\u202e" not in out
    for shown in ("[/bold]oops.png", "[red]x[/red].png", "\\x1b[31mevil.png", "ok\\u202etxt.png"):
        assert shown in out, shown


def test_cli_error_messages_are_not_markup(tmp_path):
    r = runner.invoke(
        cli_app, ["--data-dir", str(tmp_path / "d"), "ingest", str(tmp_path / "[/]missing\x1b[2J")]
    )
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "[/]missing\\x1b[2J" in r.output and "\x1b[2J" not in r.output


@pytest.fixture
def burned(tmp_path):
    src = tmp_path / "incoming"
    write(src / "NORMAL" / "clean.dcm", _dicom(1))
    write(src / "PNEUMONIA" / "burned.dcm", _dicom(2, BurnedInAnnotation="YES"))
    data_dir = tmp_path / "data"
    db = Database(f"sqlite:///{data_dir / 'cxrlabel.sqlite3'}")
    path = resolve_job_path(None)
    spec, text = load_job(path), path.read_text()
    with db.session() as s:
        s.add(
            Job(
                name=spec.name,
                spec_toml=text,
                spec_sha256=hashlib.sha256(text.encode()).hexdigest(),
            )
        )
    with db.session() as s:
        job = s.scalar(select(Job))
    summary = ingest(db, data_dir, job, spec, src, workers=0)
    yield db, data_dir, job, spec, summary
    db.dispose()


def test_burned_in_dicom_is_held_never_gold_and_released_by_cli(burned, tmp_path):
    db, data_dir, job, spec, summary = burned
    assert len(summary.burned_in) == 1
    with db.session() as s:
        statuses = {im.source_path.rsplit("/", 1)[-1]: im.status for im in s.scalars(select(Image))}
        held_id = s.scalar(select(Image.public_id).where(Image.status == ImageStatus.HELD))
    assert statuses == {
        "clean.dcm": ImageStatus.NEEDS_JUDGMENTS,
        "burned.dcm": ImageStatus.HELD,
    }  # before issue 18: needs_judgments
    with db.session() as s:  # gold sampling takes only the clean image
        job_row = s.get(Job, job.id)
        summary_gold, _ = sample_from_reference(s, job_row, spec, n=2)
        assert summary_gold.public_ids and held_id not in summary_gold.public_ids
        s.rollback()
    csv_file = tmp_path / "gold.csv"
    csv_file.write_text(f"image,accepted_answers,reason\n{held_id},PNEUMONIA,obvious\n")
    with db.session() as s, pytest.raises(GoldImportError, match="held for review"):
        import_gold_csv(s, s.get(Job, job.id), spec, csv_file)
    base = ["--data-dir", str(data_dir), "--db", db.url]
    r = runner.invoke(cli_app, [*base, "held", "list"])
    assert r.exit_code == 0 and held_id in r.output and "burned.dcm" in r.output
    r = runner.invoke(cli_app, [*base, "held", "release", "no-such-image"])
    assert r.exit_code == 2 and "not held" in r.output
    r = runner.invoke(cli_app, [*base, "held", "release", held_id])
    assert r.exit_code == 0 and "released 1 image(s)" in r.output
    with db.read_session() as s:
        status = s.scalar(select(Image.status).where(Image.public_id == held_id))
    assert status == ImageStatus.NEEDS_JUDGMENTS


def test_held_images_are_never_served(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    try:
        seeded = seed_job(
            db,
            tmp_path,
            n_work=8,
            n_gold=4,
            quiz_length=2,
            items_per_page=4,
            min_accuracy=0.5,
            jmin=1,
            jmax=1,
        )
        held = seeded.work_ids[:4]
        with db.session() as s:
            s.execute(update(Image).where(Image.id.in_(held)).values(status=ImageStatus.HELD))
            held_public = set(s.scalars(select(Image.public_id).where(Image.id.in_(held))))
        gold = gold_answers(db, seeded.job_id)
        uid = add_user(db, "ann1")
        served: set[str] = set()
        for _ in range(10):  # the quiz, then work pages until none is left
            with db.session() as s:
                job, spec = job_and_spec(s, s.get(Job, seeded.job_id).name)
                user = s.get(User, uid)
                page = next_page(s, job, spec, user, utcnow())
                if page is None:
                    break
                ids = [item.image.public_id for item in page.items]
                served.update(ids)
                answers = [
                    AnswerIn(
                        image_public_id=pid,
                        answer=gold.get(pid, ["NORMAL"])[0],
                        certainty="definitely",
                    )
                    for pid in ids
                ]
                submit_page(
                    s, job, spec, user, page.public_id, f"c-{page.public_id}", answers, utcnow()
                )
        assert served and not served & held_public
    finally:
        db.dispose()


def test_migration_holds_burned_in_images_ingested_before(tmp_path):
    from alembic import command

    from cxrlabel.storage.db import alembic_config
    from cxrlabel.storage.models import GoldItem

    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    db = Database(url)
    try:
        seeded = seed_job(db, tmp_path, n_work=4, n_gold=2)
        burned = [seeded.work_ids[0], seeded.gold_ids[0]]
        cfg = alembic_config(url)
        command.downgrade(cfg, "0005_user_sessions_revocable")
        with db.session() as s:  # as ingest stored them before issue 18
            s.execute(update(Image).where(Image.id.in_(burned)).values(burned_in_annotation=True))
        command.upgrade(cfg, "head")
        with db.read_session() as s:
            statuses = dict(s.execute(select(Image.id, Image.status)).all())
            gold_active = dict(s.execute(select(GoldItem.image_id, GoldItem.active)).all())
        assert statuses[burned[0]] == statuses[burned[1]] == ImageStatus.HELD
        assert statuses[seeded.work_ids[1]] == ImageStatus.NEEDS_JUDGMENTS
        assert gold_active[burned[1]] is False and gold_active[seeded.gold_ids[1]] is True
    finally:
        db.dispose()
