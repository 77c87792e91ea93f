"""The gold bank: import (and its error cases), export round trip, check warnings, sampling."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from cxrlabel.cli import app
from cxrlabel.design import goldbank, goldcheck, goldseed
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import (
    AuditEvent,
    GoldItem,
    Image,
    ImageStatus,
    Judgment,
    Page,
    Submission,
    User,
    utcnow,
)
from design_support import add_image, bundled_job, write_csv

runner = CliRunner()


def _cli(data_dir: Path, db_url: str, *args: str):
    return runner.invoke(app, ["--data-dir", str(data_dir), "--db", db_url, *args])


def _seed(tmp_path: Path, db_url: str):
    db = Database(db_url)
    with db.session() as s:
        job, _ = bundled_job(s)
        for i in range(6):
            label = "PNEUMONIA" if i % 2 else "NORMAL"
            add_image(
                s,
                job,
                tmp_path,
                i,
                name=f"case-{i}.jpeg",
                reference_label=label,
                patient_id=f"p{i}",
            )
    return db, tmp_path, db_url


@pytest.fixture
def seeded(tmp_path: Path, db_url: str):
    """The bundled job with 6 work images (no gold yet), on SQLite and PostgreSQL."""
    db, data_dir, url = _seed(tmp_path, db_url)
    yield db, data_dir, url
    db.dispose()


@pytest.fixture
def seeded_sqlite(tmp_path: Path):
    """The same on SQLite only: for the many error cases, which fail before any write."""
    db, data_dir, url = _seed(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite3'}")
    yield db, data_dir, url
    db.dispose()


def _gold_count(db: Database) -> tuple[int, int]:
    with db.session() as s:
        return (
            s.scalar(select(func.count()).select_from(GoldItem)),
            s.scalar(
                select(func.count()).select_from(Image).where(Image.status == ImageStatus.GOLD)
            ),
        )


def test_import_makes_images_gold_by_every_kind_of_reference(seeded) -> None:
    db, data_dir, url = seeded
    with db.session() as s:
        first = s.scalar(select(Image).where(Image.source_path.endswith("case-0.jpeg")))
        pid, sha = (
            first.public_id,
            s.scalar(select(Image.sha256).where(Image.source_path.endswith("case-1.jpeg"))),
        )
    csv = write_csv(
        data_dir / "bank.csv",
        f"""
image,accepted_answers,reason,difficulty
{pid},NORMAL,Clear dark lungs and a sharp diaphragm.,easy
{sha},pneumonia,White patch in the right upper zone.,medium
case-2.jpeg,NORMAL;PNEUMONIA,Borderline: both accepted.,hard
/data/src/case-3.jpeg,PNEUMONIA,,
""",
    )
    result = _cli(data_dir, url, "gold", "import", str(csv))
    assert result.exit_code == 0, result.output
    assert "4 added" in result.output
    with db.session() as s:
        golds = {
            Path(im.source_path).name: g
            for g, im in s.execute(
                select(GoldItem, Image).join(Image, Image.id == GoldItem.image_id)
            ).all()
        }
        assert golds["case-1.jpeg"].accepted_answers == ["PNEUMONIA"]  # canonical case
        assert golds["case-2.jpeg"].accepted_answers == ["NORMAL", "PNEUMONIA"]
        assert golds["case-2.jpeg"].difficulty == "hard"
        assert golds["case-3.jpeg"].difficulty == "medium" and golds["case-3.jpeg"].reason == ""
        assert (
            s.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.action == "gold.import")
            )
            == 1
        )
    assert _gold_count(db) == (4, 4)
    # Re-importing updates instead of duplicating.
    write_csv(csv, f"image,accepted_answers,reason\n{pid},NORMAL,Better reason.\n")
    result = _cli(data_dir, url, "gold", "import", str(csv))
    assert "0 added, 1 updated" in result.output
    assert _gold_count(db) == (4, 4)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("image,accepted_answers,reason\nno-such-image.jpeg,NORMAL,x\n", "unknown image"),
        ("image,accepted_answers,reason\ncase-0.jpeg,PNEUMONA,x\n", "'PNEUMONA' is not a label"),
        ("image,reason\ncase-0.jpeg,x\n", "missing column 'accepted_answers'"),
        ("image,accepted_answers,reason,difficulty\ncase-0.jpeg,NORMAL,x,trivial\n", "difficulty"),
        (
            "image,accepted_answers,reason\ncase-0.jpeg,NORMAL,x\ncase-0.jpeg,NORMAL,y\n",
            "line 4: same image as line 3",
        ),
        ("image,accepted_answers,reason\ncase-0.jpeg,,x\n", "no accepted answer"),
        ("", "empty"),
    ],
)
def test_import_errors_exit_2_and_import_nothing(seeded_sqlite, content: str, message: str) -> None:
    db, data_dir, url = seeded_sqlite
    # A good row first: it must not be imported when a later row is bad.
    if content.startswith("image,accepted_answers,reason\n"):
        content = content.replace("reason\n", "reason\ncase-5.jpeg,PNEUMONIA,good row\n", 1)
    csv = data_dir / "bad.csv"
    csv.write_text(content, encoding="utf-8")
    result = _cli(data_dir, url, "gold", "import", str(csv))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "nothing imported" in result.output
    assert "Traceback" not in result.output
    assert _gold_count(db) == (0, 0)


def test_import_rejects_a_non_utf8_file(seeded_sqlite) -> None:
    db, data_dir, url = seeded_sqlite
    bad = data_dir / "latin1.csv"
    bad.write_bytes(
        "image,accepted_answers,reason\ncase-0.jpeg,NORMAL,tr\xe8s clair\n".encode("latin-1")
    )
    result = _cli(data_dir, url, "gold", "import", str(bad))
    assert result.exit_code == 2 and "UTF-8" in result.output
    assert _gold_count(db) == (0, 0)


def test_export_round_trips(seeded, tmp_path: Path) -> None:
    db, data_dir, url = seeded
    csv = write_csv(
        data_dir / "bank.csv",
        """
image,accepted_answers,reason,difficulty
case-0.jpeg,NORMAL,"Clear lungs, sharp diaphragm.",easy
case-1.jpeg,PNEUMONIA,Patch.,hard
""",
    )
    assert _cli(data_dir, url, "gold", "import", str(csv)).exit_code == 0
    out = tmp_path / "export.csv"
    assert _cli(data_dir, url, "gold", "export", "-o", str(out)).exit_code == 0
    text = out.read_text()
    assert text.splitlines()[0].startswith("image,accepted_answers,reason,difficulty")
    assert '"Clear lungs, sharp diaphragm."' in text and "case-1.jpeg" in text
    # Importing the export is a no-op update of the same items.
    result = _cli(data_dir, url, "gold", "import", str(out))
    assert result.exit_code == 0 and "0 added, 2 updated" in result.output
    listing = _cli(data_dir, url, "gold", "list")
    assert listing.exit_code == 0 and "case-0.jpeg" in listing.output


# --- check ------------------------------------------------------------------------------------


def _make_bank(
    db: Database,
    data_dir: Path,
    answers: list[str],
    *,
    reason: str = "Reason.",
    start: int = 100,
    png: bytes | None = None,
) -> list[int]:
    ids = []
    with db.session() as s:
        job, spec = bundled_job(s)
        for k, answer in enumerate(answers):
            im = add_image(s, job, data_dir, start + k, status=ImageStatus.GOLD, png=png)
            s.add(GoldItem(job_id=job.id, image_id=im.id, accepted_answers=[answer], reason=reason))
            ids.append(im.id)
    return ids


def _check(db: Database, **kwargs) -> goldcheck.GoldReport:
    with db.session() as s:
        job, spec = bundled_job(s)
        return goldcheck.check_gold(s, job, spec, **kwargs)


def test_a_healthy_bank_has_no_warnings(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    # 30 gold, 40% NORMAL (expected 26%: within tolerance), all with reasons, all distinct.
    _make_bank(db, tmp_path, ["NORMAL"] * 12 + ["PNEUMONIA"] * 18)
    report = _check(db)
    assert report.warnings == []
    assert report.n_gold == 30 and report.by_label == {"NORMAL": 12, "PNEUMONIA": 18}
    assert report.pages_bound == 22  # (30 - 8) / 1


def test_check_warns_about_class_imbalance(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    _make_bank(db, tmp_path, ["PNEUMONIA"] * 20)
    report = _check(db)
    assert "imbalance" in report.codes()
    assert any("0 gold with answer NORMAL" in w.message for w in report.warnings)


def test_check_warns_about_too_few_gold_for_the_plan(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    _make_bank(db, tmp_path, ["NORMAL"] * 4 + ["PNEUMONIA"] * 8)  # bound (12 - 8) / 1 = 4 pages
    with db.session() as s:
        job, _ = bundled_job(s)
        for k in range(30):  # 30 work images x 2 judgments (bundled min) / 9 per page = 7 pages
            add_image(s, job, tmp_path, 500 + k)
    report = _check(db, annotators=1)
    assert report.pages_bound == 4 and report.planned_pages_per_annotator == 7
    too_few = [w for w in report.warnings if w.code == "too_few"]
    assert too_few and "supports 4 work pages" in too_few[0].message
    assert "add 3 gold" in too_few[0].message
    assert "too_few" not in _check(db, annotators=5).codes()  # 2 pages each: enough
    # Fewer gold than the quiz is its own, blunter message.
    db2 = Database(f"sqlite:///{tmp_path / 'db2.sqlite3'}")
    _make_bank(db2, tmp_path / "b", ["NORMAL", "PNEUMONIA", "PNEUMONIA"])
    assert any("cannot fill the quiz" in w.message for w in _check(db2).warnings)


def test_check_warns_about_gold_without_reason(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    _make_bank(db, tmp_path, ["NORMAL"] * 12 + ["PNEUMONIA"] * 18)
    _make_bank(db, tmp_path, ["PNEUMONIA"], reason="  ", start=900)
    report = _check(db)
    assert report.codes() == {"no_reason"} and report.without_reason == 1


def test_check_warns_about_gold_already_judged_as_work(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    ids = _make_bank(db, tmp_path, ["NORMAL"] * 12 + ["PNEUMONIA"] * 18)
    now = utcnow()
    with db.session() as s:
        job, _ = bundled_job(s)
        user = User(username="ann", password_hash="x", role="annotator")
        s.add(user)
        s.flush()
        page = Page(job_id=job.id, user_id=user.id, kind="work", expires_at=now)
        s.add(page)
        s.flush()
        sub = Submission(user_id=user.id, page_id=page.id, client_submission_id="c1", response={})
        s.add(sub)
        s.flush()
        s.add(
            Judgment(
                job_id=job.id,
                image_id=ids[0],
                user_id=user.id,
                page_id=page.id,
                submission_id=sub.id,
                answer="NORMAL",
                certainty="definitely",
                is_gold=False,
                served_at=now,
            )
        )
    report = _check(db)
    assert report.codes() == {"judged_as_work"}
    assert "1 gold image(s)" in report.warnings[0].message


def test_check_warns_about_near_duplicate_gold(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    _make_bank(db, tmp_path, ["NORMAL"] * 12 + ["PNEUMONIA"] * 18)
    from design_support import synthetic_png

    twin = synthetic_png(7)
    _make_bank(db, tmp_path, ["PNEUMONIA", "PNEUMONIA"], start=800, png=twin)
    report = _check(db)
    assert "near_duplicate" in report.codes()
    dup = [w for w in report.warnings if w.code == "near_duplicate"]
    assert len(dup) == 1 and "phash distance 0" in dup[0].message
    # With the renditions at hand the pixels confirm it (the ingest rule).
    confirmed = [w for w in _check(db, data_dir=tmp_path).warnings if w.code == "near_duplicate"]
    assert len(confirmed) == 1 and "are near-duplicates" in confirmed[0].message


def test_close_phash_but_different_pixels_is_not_a_duplicate(tmp_path: Path) -> None:
    """pHash alone confuses different X-rays; the pixel check must clear such a pair."""
    from design_support import synthetic_png

    db = Database(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    _make_bank(db, tmp_path, ["NORMAL"] * 12 + ["PNEUMONIA"] * 18)
    _make_bank(db, tmp_path, ["PNEUMONIA"], start=900, png=synthetic_png(5))
    _make_bank(db, tmp_path, ["PNEUMONIA"], start=901, png=synthetic_png(6))
    with db.session() as s:  # give the two different pictures the same pHash
        images = s.scalars(select(Image).where(Image.phash.is_not(None))).all()
        twins = [im for im in images if im.rendition_path.endswith(("-900.png", "-901.png"))]
        assert len(twins) == 2
        twins[1].phash = twins[0].phash
    assert "near_duplicate" in _check(db).codes()  # shortlist only: reported as possible
    assert "near_duplicate" not in _check(db, data_dir=tmp_path).codes()


def test_near_duplicate_pairs_threshold() -> None:
    a = ["0000000000000000", "000000000000003f", "ffffffffffffffff"]
    assert goldcheck.near_duplicate_pairs(a, threshold=6) == [(0, 1, 6)]
    assert goldcheck.near_duplicate_pairs(a, threshold=5) == []
    assert goldcheck.near_duplicate_pairs(["ffffffffffffffff"], a, threshold=0) == [(0, 2, 0)]


def test_cli_check_prints_the_page_bound_and_strict_fails(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    db = Database(url)
    _make_bank(db, tmp_path, ["PNEUMONIA"] * 10)
    result = _cli(tmp_path, url, "gold", "check")
    assert result.exit_code == 0
    assert "before running out of unseen gold: 2" in result.output
    assert "[imbalance]" in result.output
    assert _cli(tmp_path, url, "gold", "check", "--strict").exit_code == 1


# --- sample -----------------------------------------------------------------------------------


def test_sample_from_reference_is_balanced_one_per_patient(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    db = Database(url)
    with db.session() as s:
        job, _ = bundled_job(s)
        for k in range(20):
            add_image(s, job, tmp_path, k, reference_label="PNEUMONIA", patient_id=f"p{k % 5}")
        for k in range(20, 26):
            add_image(s, job, tmp_path, k, reference_label="NORMAL", patient_id=f"n{k}")
        add_image(s, job, tmp_path, 99)  # no reference label: never sampled
    result = _cli(tmp_path, url, "gold", "sample", "--from-reference", "8", "--seed", "3")
    assert result.exit_code == 0, result.output
    # 4 per class wanted; only 5 distinct PNEUMONIA patients, 6 NORMAL: 4 + 4.
    with db.session() as s:
        rows = s.execute(select(Image, GoldItem).join(GoldItem, GoldItem.image_id == Image.id))
        rows = rows.all()
    labels = [im.reference_label for im, _ in rows]
    assert labels.count("NORMAL") == 4 and labels.count("PNEUMONIA") == 4
    patients = [im.patient_id for im, _ in rows]
    assert len(set(patients)) == len(patients)
    assert all(g.accepted_answers == [im.reference_label] for im, g in rows)
    assert all(g.source == "reference" and "expert" in g.reason for _, g in rows)
    assert all(im.status == ImageStatus.GOLD for im, _ in rows)
    # Asking for more than distinct patients allow says so.
    more = _cli(tmp_path, url, "gold", "sample", "--from-reference", "20")
    assert "only" in more.output


def test_sample_clearest_uses_model_scores_and_refuses_without(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    db = Database(url)
    with db.session() as s:
        job, _ = bundled_job(s)
        for k in range(10):  # p(PNEUMONIA) rises with k: k >= 7 are the clearest pneumonia
            add_image(s, job, tmp_path, k, reference_label="PNEUMONIA", patient_id=f"p{k}")
        for k in range(10, 20):  # k <= 12 are the clearest normal
            add_image(s, job, tmp_path, k, reference_label="NORMAL", patient_id=f"n{k}")
    refused = _cli(tmp_path, url, "gold", "sample", "--from-reference", "4", "--clearest", "0.3")
    assert refused.exit_code == 2 and "model score" in refused.output
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(GoldItem)) == 0  # nothing half-done
        for image in s.scalars(select(Image)):
            k = int(image.source_path.rsplit("-", 1)[-1].split(".")[0])
            image.model_score = k / 10 if k < 10 else (k - 10) / 10
    result = _cli(tmp_path, url, "gold", "sample", "--from-reference", "4", "--clearest", "0.3")
    assert result.exit_code == 0, result.output
    with db.session() as s:
        chosen = [
            (im.reference_label, im.model_score)
            for im in s.scalars(select(Image).join(GoldItem, GoldItem.image_id == Image.id))
        ]
    assert len(chosen) == 4
    assert all(score >= 0.7 if label == "PNEUMONIA" else score <= 0.2 for label, score in chosen), (
        chosen
    )


def test_instruction_examples_never_become_gold(tmp_path: Path) -> None:
    """The instructions show these images with their answer: a test question must not be one."""
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    db = Database(url)
    with db.session() as s:
        job, spec = bundled_job(s)
        example = spec.instructions.examples[0]
        shown = add_image(
            s, job, tmp_path, 1, name=example.image, reference_label="NORMAL", patient_id="p1"
        )
        for k in range(2, 10):
            label = "NORMAL" if k < 6 else "PNEUMONIA"
            add_image(s, job, tmp_path, k, reference_label=label, patient_id=f"p{k}")
        summary, by_label = goldseed.sample_from_reference(s, job, spec, 8, seed=0)
        # Five NORMAL candidates, one of them an example: the four others are taken.
        assert shown.public_id not in summary.public_ids
        assert by_label == {"NORMAL": 4, "PNEUMONIA": 4}
    csv_path = write_csv(
        tmp_path / "gold.csv",
        f"image,accepted_answers,reason,difficulty\n{example.image},NORMAL,clear lungs,easy\n",
    )
    result = _cli(tmp_path, url, "gold", "import", str(csv_path))
    assert result.exit_code == 2
    assert "instruction example" in result.output
    with db.session() as s:
        job, spec = bundled_job(s)
        image = goldbank.find_images(s, job, example.image)[0]
        s.add(GoldItem(job_id=job.id, image_id=image.id, accepted_answers=["NORMAL"], reason="r"))
        s.flush()
        codes = [w.code for w in goldcheck.check_gold(s, job, spec).warnings]
    assert "instruction_example" in codes


def test_gold_checks_use_ingests_near_duplicate_distance() -> None:
    """One threshold: gold checks shortlist pairs up to ingest's NEAR_DUP_MAX_PHASH (they used
    a private 6 while ingest used 8)."""
    from cxrlabel.ingest.dedup import NEAR_DUP_MAX_PHASH

    zero = "0" * 16
    at_limit = f"{(1 << NEAR_DUP_MAX_PHASH) - 1:016x}"  # NEAR_DUP_MAX_PHASH bits differ
    beyond = f"{(1 << (NEAR_DUP_MAX_PHASH + 1)) - 1:016x}"
    assert goldcheck.shortlist_distance() == NEAR_DUP_MAX_PHASH
    assert goldcheck.near_duplicate_pairs([zero, at_limit]) == [(0, 1, NEAR_DUP_MAX_PHASH)]
    assert goldcheck.near_duplicate_pairs([zero, beyond]) == []
