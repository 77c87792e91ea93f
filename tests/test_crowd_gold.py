"""Gold from the crowd's own agreement (issue 17): the clarity rule on constructed answers, and
on a real SQLite job the CLI's fallback without model scores, the expert's confirmation, the
annotators who judged a new gold item never being served it, and refusals that change nothing."""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from cxrlabel.annotate import assignment
from cxrlabel.cli import app
from cxrlabel.design import goldcheck
from cxrlabel.design.crowdclarity import (
    DISSENT,
    FEW_ANSWERS,
    FLAGGED,
    NOT_FINALISED,
    REVIEWED,
    ClarityRule,
    CrowdAnswer,
    CrowdImage,
    crowd_clarity,
)
from cxrlabel.quality import commands
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import AuditEvent, GoldItem, Image, Job
from quality_support import make_env, pass_quiz

RULE = ClarityRule(
    cant_tell="cant_tell", certainty_weights={"definitely": 1.0, "probably": 0.6, "cant_tell": 0.0}
)
runner = CliRunner()


def _answers(*specs: tuple[str, str] | tuple[str, str, str]) -> tuple[CrowdAnswer, ...]:
    return tuple(CrowdAnswer(*s) for s in specs)


def _image(image_id: int, answers, confidence=0.99, status="finalised", **kw) -> CrowdImage:
    return CrowdImage(image_id, status, "PNEUMONIA", confidence, answers, **kw)


P, N = ("PNEUMONIA", "definitely"), ("NORMAL", "definitely")
UNSURE, CANT = ("PNEUMONIA", "probably"), ("PNEUMONIA", "cant_tell")


def test_unanimous_confident_answers_rank_clearest_and_contested_images_are_left_out() -> None:
    images = [
        _image(1, _answers(P, P, P, P, P)),
        _image(2, _answers(P, P, P, P, CANT)),  # a "can't tell" counts against clarity
        _image(3, _answers(UNSURE, UNSURE, UNSURE), confidence=0.95),
        _image(4, _answers(P, P, P, P, N), confidence=0.95),  # one dissent in five: tolerated
        _image(5, _answers(P, P, P, N)),  # one in four: not near-unanimous
        _image(6, _answers(P, P)),
        _image(7, _answers(P, P, P, P, P), reviewed=True),
        _image(8, _answers(P, P, P), status="needs_review"),
        _image(9, _answers(P, P, ("PNEUMONIA", "definitely", "unreadable"))),
    ]
    clarity = crowd_clarity(images, RULE)
    ranked = sorted(clarity.scores, key=clarity.scores.__getitem__)
    assert ranked == [1, 2, 4, 3]
    assert clarity.scores[1] < 0.02 and clarity.scores[2] > 0.2  # 1 - 0.99 x 4/5
    assert clarity.excluded == {
        DISSENT: 1,
        FEW_ANSWERS: 1,
        REVIEWED: 1,
        NOT_FINALISED: 1,
        FLAGGED: 1,
    }
    assert "1 too few answers" in clarity.explain()


# --- a real job ------------------------------------------------------------------------------


def _finalised_job(tmp_path: Path, url: str | None = None):
    """q-job (SQLite unless ``url``): w0/w1 PNEUMONIA and w2/w3 NORMAL finalised by a, b, c
    (w1 and w3 with one "can't tell" each: less clear), w4/w5 still open; distinct pHashes."""
    url = url or f"sqlite:///{tmp_path / 'db.sqlite3'}"
    db = Database(url)
    env = make_env(db, work=6)
    for name in ("a", "b", "c"):
        env.add_user(name)
        pass_quiz(env, name)
    cant_p, cant_n = ("PNEUMONIA", "cant_tell"), ("NORMAL", "cant_tell")
    env.submit("a", {"w0": "PNEUMONIA", "w1": "PNEUMONIA", "w2": "NORMAL", "w3": "NORMAL"})
    env.submit("b", {"w0": "PNEUMONIA", "w1": "PNEUMONIA", "w2": "NORMAL", "w3": "NORMAL"})
    env.submit("c", {"w0": "PNEUMONIA", "w1": cant_p, "w2": "NORMAL", "w3": cant_n})
    rng = random.Random(0)
    with db.session() as s:
        for image in s.scalars(select(Image)):
            image.phash = f"{rng.getrandbits(64):016x}"
    statuses = {name: env.image(name).status for name in ("w0", "w1", "w2", "w3", "w4")}
    assert statuses == {
        "w0": "finalised",
        "w1": "finalised",
        "w2": "finalised",
        "w3": "finalised",
        "w4": "needs_judgments",
    }, statuses
    return db, env, ["--db", url, "--data-dir", str(tmp_path)]


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


def _counts(db: Database) -> tuple[int, int]:
    with db.session() as s:
        gold = s.scalar(select(func.count()).select_from(GoldItem))
        proposed = s.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "gold.proposed")
        )
        return gold, proposed


def test_clearest_without_model_scores_falls_back_to_the_crowd_and_an_expert_confirms(
    tmp_path: Path, db_url: str
) -> None:
    """On SQLite and PostgreSQL (the confirmation takes the job's quality lock)."""
    db, env, base = _finalised_job(tmp_path, db_url)
    gold_before, _ = _counts(db)
    out = tmp_path / "proposals.csv"
    result = runner.invoke(
        app,
        [*base, "gold", "sample", "--job", "q-job", "--from-reference", "2"]
        + ["--clearest", "0.5", "-o", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "crowd's agreement" in result.output
    rows = _rows(out)
    # The clearest half of each label: the unanimous w0 and w2, not w1/w3 (a "can't tell").
    ids = {env.images[n]: n for n in ("w0", "w1", "w2", "w3")}
    with db.session() as s:
        named = {
            ids[s.scalar(select(Image.id).where(Image.public_id == r["public_id"]))]: r
            for r in rows
        }
    assert set(named) == {"w0", "w2"}
    assert named["w0"]["crowd_label"] == "PNEUMONIA" and named["w0"]["answer"] == ""
    assert _counts(db) == (gold_before, 1)  # proposals are not gold

    again = runner.invoke(
        app, [*base, "gold", "sample", "--job", "q-job", "--from-crowd", "2", "-o", str(out)]
    )
    assert again.exit_code == 2 and "exists" in again.output  # the expert's file is safe

    # The expert: agrees on w0 (gold), disagrees on w2 (a correction, not gold).
    env.add_user("doc", role="expert")
    named["w0"]["answer"], named["w0"]["reason"] = "PNEUMONIA", "Dense right lower lobe opacity."
    named["w2"]["answer"], named["w2"]["reason"] = "PNEUMONIA", "Subtle left retrocardiac opacity."
    answered = tmp_path / "answered.csv"
    with answered.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(named.values())
    trust_before = env.annotator("a").trust
    result = runner.invoke(
        app, [*base, "quality", "confirm-gold", str(answered), "--job", "q-job", "--as", "doc"]
    )
    assert result.exit_code == 0, result.output
    assert "1 made gold" in result.output and "1 corrected" in result.output
    w0, w2 = env.image("w0"), env.image("w2")
    assert (w0.status, w2.status, w2.label) == ("gold", "expert", "PNEUMONIA")
    with db.session() as s:
        gold = s.scalar(select(GoldItem).where(GoldItem.image_id == w0.id))
        assert (gold.active, gold.difficulty, gold.accepted_answers) == (
            True,
            "easy",
            ["PNEUMONIA"],
        )
        # Told apart from review-queue promotions (source "expert") in the proposal's table.
        assert gold.source == "crowd"
        assert s.scalar(select(GoldItem).where(GoldItem.image_id == w2.id)) is None
    # The answers given before it became gold are not re-graded against it.
    earlier = [j for j in env.judgments_of("a") if j.image_id == w0.id]
    assert [(j.is_gold, j.gold_missed) for j in earlier] == [(False, None)]
    assert env.annotator("a").trust == trust_before
    assert env.verify().matched  # the promotion is a logged engine event: replay agrees
    with db.session() as s:  # and the gold check does not call it work judged as gold
        report = goldcheck.check_gold(s, s.get(Job, env.job_id), env.spec)
    assert "judged_as_work" not in report.codes(), report.warnings


def test_a_path_with_brackets_is_printed_as_written(tmp_path: Path) -> None:
    """Rich markup must not eat "[bold]" from a folder name, in the report or in an error."""
    db, env, base = _finalised_job(tmp_path)
    folder = tmp_path / "[bold]proposals"
    folder.mkdir()
    out = folder / "p.csv"
    args = [*base, "gold", "sample", "--job", "q-job", "--from-crowd", "1", "-o", str(out)]
    result = runner.invoke(app, args, terminal_width=400)
    assert result.exit_code == 0, result.output
    assert "[bold]proposals" in result.output
    again = runner.invoke(app, args, terminal_width=400)
    assert again.exit_code == 2 and "[bold]proposals" in again.output


def test_an_annotator_who_judged_an_image_is_never_served_it_as_gold(tmp_path: Path) -> None:
    db, env, base = _finalised_job(tmp_path)
    env.add_user("doc", role="expert")
    out = tmp_path / "p.csv"
    assert (
        runner.invoke(
            app, [*base, "gold", "sample", "--job", "q-job", "--from-crowd", "1", "-o", str(out)]
        ).exit_code
        == 0
    )
    rows = _rows(out)
    rows[0]["answer"], rows[0]["reason"] = rows[0]["crowd_label"], "Clear case."
    with out.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = runner.invoke(
        app, [*base, "quality", "confirm-gold", str(out), "--job", "q-job", "--as", "doc"]
    )
    assert result.exit_code == 0, result.output
    with db.session() as s:
        new_gold = s.scalar(select(Image.id).where(Image.public_id == rows[0]["public_id"]))
        for gold in s.scalars(select(GoldItem).where(GoldItem.image_id != new_gold)):
            gold.active = False  # only the new item is left in the bank
    env.add_user("zoe", status="active")
    with db.session() as s:
        job = s.get(Job, env.job_id)
        for who in ("a", "b", "c"):  # they judged it: no unseen gold for them
            page, why = assignment.next_page_or_reason(
                s, job, env.spec, env.user(s, who), env.tick(), rng=random.Random(1)
            )
            assert page is None and why == assignment.GOLD_EXHAUSTED, (who, page)
        page, why = assignment.next_page_or_reason(
            s, job, env.spec, env.user(s, "zoe"), env.tick(), rng=random.Random(1)
        )
        assert page is not None, why
        assert [i.image_id for i in page.items if i.is_gold] == [new_gold]


def test_no_finalised_image_is_a_clear_error_that_changes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    db = Database(url)
    env = make_env(db, work=4)
    env.add_user("a")
    pass_quiz(env, "a")
    env.submit("a", {"w0": "PNEUMONIA"})  # judged, not finalised
    base = ["--db", url, "--data-dir", str(tmp_path)]
    before = _counts(db)
    out = tmp_path / "p.csv"
    for args in (["--from-crowd", "3"], ["--from-reference", "3", "--clearest", "0.5"]):
        result = runner.invoke(
            app, [*base, "gold", "sample", "--job", "q-job", *args, "-o", str(out)]
        )
        assert result.exit_code == 2, result.output
        assert "no finalised work image" in result.output and "model score" in result.output
    assert not out.exists() and _counts(db) == before
    assert env.image("w0").status == "needs_judgments"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("{w0},PNEUMONIA,\n", "reason is required"),
        ("{w0},PNEUMONIA,Clear.\n{w0},PNEUMONIA,Clear.\n", "listed twice"),
        ("{w0},EFFUSION,Clear.\n", "not a label"),
        ("{w0},PNEUMONIA,Clear.\n{w4},NORMAL,Clear.\n", "no longer a finalised work image"),
    ],
)
def test_confirm_gold_refuses_a_bad_row_and_records_nothing(
    tmp_path: Path, rows: str, message: str
) -> None:
    db, env, base = _finalised_job(tmp_path)
    env.add_user("doc", role="expert")
    ids = {n: env.image(n).public_id for n in ("w0", "w4")}
    bad = tmp_path / "bad.csv"
    bad.write_text("image,answer,reason\n" + rows.format(**ids), encoding="utf-8")
    result = runner.invoke(
        app, [*base, "quality", "confirm-gold", str(bad), "--job", "q-job", "--as", "doc"]
    )
    assert result.exit_code == 2 and message in result.output, result.output
    assert env.image("w0").status == "finalised" and _counts(db)[0] == 8


def test_promoted_gold_keeps_its_difficulty_in_replay(tmp_path: Path) -> None:
    """A "can't tell" on gold an expert promoted from the review queue (hard) is no miss, live
    and in replay (the replay used to rebuild promoted gold as medium: a miss)."""
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    env = make_env(db, work=6)
    for name in ("a", "b", "c", "d"):
        env.add_user(name)
        pass_quiz(env, name)
    env.add_user("doc", role="expert")
    for name in ("a", "b", "c"):
        env.submit(name, {"w0": "PNEUMONIA"})
    env.call(
        lambda s, job: commands.record_expert_label(
            s,
            job,
            env.spec,
            env.user(s, "doc"),
            env.images["w0"],
            "PNEUMONIA",
            None,
            env.tick(),
            promote_to_gold=True,
            gold_reason="Lobar opacity.",
        )
    )
    env.submit("d", {"w0": ("NORMAL", "cant_tell"), "w1": "NORMAL"})
    on_gold = [j for j in env.judgments_of("d") if j.image_id == env.images["w0"]]
    assert [(j.is_gold, j.gold_missed) for j in on_gold] == [(True, False)]
    report = env.verify()
    assert report.matched, report.differences
