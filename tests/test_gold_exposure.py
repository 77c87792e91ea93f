"""Gold bank exposure and rotation (design/exposure.py, issue 18): an item whose answer has
been shown to ``gold.retire_after_reveals`` annotators is retired; a failed quiz reveals
nothing; the gold check, the gold list and the admin gold page show exposure and warn."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from cxrlabel.annotate.assignment import next_page
from cxrlabel.annotate.progress import gold_summary
from cxrlabel.annotate.schemas import AnswerIn
from cxrlabel.annotate.submission import submit_page
from cxrlabel.cli import app as cli_app
from cxrlabel.config import Settings
from cxrlabel.design import exposure
from cxrlabel.design.exposure import GOLD_RETIRED, bank_exposure, revealed_counts
from cxrlabel.design.goldcheck import check_gold
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import AuditEvent, GoldItem, Image, User, utcnow
from cxrlabel.web.app import create_app
from cxrlabel.web.deps import job_and_spec
from web_support import add_user, gold_answers, seed_job, signed_in_client


@pytest.fixture
def env(tmp_path: Path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    db = Database(url)
    monkeypatch.setattr(exposure, "SMALL_BANK_WORK_PAGES", 0)
    yield db, _seed_small_bank(db, tmp_path, retire_after_reveals=2), tmp_path, url
    db.dispose()


def _seed_small_bank(db: Database, data_dir: Path, retire_after_reveals: int):
    """A quiz of 3 from a bank of 4; with ``SMALL_BANK_WORK_PAGES`` 0 the bank's floor is the
    quiz alone (no work pages), so one item may be retired before the floor keeps the rest."""
    return seed_job(
        db,
        data_dir,
        n_work=8,
        n_gold=4,
        quiz_length=3,
        items_per_page=4,
        min_accuracy=0.6,
        retire_after_reveals=retire_after_reveals,
    )


def _quiz(db: Database, username: str, gold: dict, miss: set[str]) -> list[str]:
    """Take the quiz, missing the items in ``miss``; returns the quiz's public ids."""
    uid = add_user(db, username)
    with db.session() as s:
        job, spec = job_and_spec(s, "test-job")
        user = s.get(User, uid)
        page = next_page(s, job, spec, user, utcnow())
        pids = [i.image.public_id for i in page.items]
        answers = []
        for pid in pids:
            right = gold[pid][0]
            answer = ("NORMAL" if right == "PNEUMONIA" else "PNEUMONIA") if pid in miss else right
            answers.append(AnswerIn(image_public_id=pid, answer=answer, certainty="definitely"))
        submit_page(s, job, spec, user, page.public_id, f"c-{username}", answers, utcnow())
    return pids


def _quiz_with(db: Database, prefix: str, gold: dict, target: str) -> str:
    """New annotators take the quiz, all right, until one gets ``target``; that one misses it
    (and passes, 2 of 3). Returns its name."""
    for k in range(20):
        name = f"{prefix}-{k}"
        uid = add_user(db, name)
        with db.session() as s:
            job, spec = job_and_spec(s, "test-job")
            user = s.get(User, uid)
            page = next_page(s, job, spec, user, utcnow())
            pids = [i.image.public_id for i in page.items]
            answers = [
                AnswerIn(
                    image_public_id=pid,
                    certainty="definitely",
                    answer=(
                        gold[pid][0]
                        if pid != target
                        else ("NORMAL" if gold[pid][0] == "PNEUMONIA" else "PNEUMONIA")
                    ),
                )
                for pid in pids
            ]
            submit_page(s, job, spec, user, page.public_id, f"c-{name}", answers, utcnow())
        if target in pids:
            return name
    raise AssertionError("the target test question was never served")


def _image_id(db: Database, public_id: str) -> int:
    with db.session() as s:
        return s.scalar(select(Image.id).where(Image.public_id == public_id))


def test_item_is_retired_once_revealed_to_the_limit(env):
    db, seeded, _data_dir, _url = env
    gold = gold_answers(db, seeded.job_id)
    target = sorted(gold)[0]
    target_id = _image_id(db, target)
    _quiz(db, "fails-all", gold, set(gold))  # disqualified: told the score only
    with db.session() as s:
        job, spec = job_and_spec(s, "test-job")
        assert revealed_counts(s, job) == {}  # a failed quiz reveals nothing
    _quiz_with(db, "first", gold, target)  # passes 2/3, sees the answer of ``target``
    with db.session() as s:
        job, spec = job_and_spec(s, "test-job")
        assert revealed_counts(s, job) == {target_id: 1}
        assert s.scalar(select(GoldItem.active).where(GoldItem.image_id == target_id)) is True
    _quiz_with(db, "second", gold, target)  # the second reveal: retired
    with db.session() as s:
        job, spec = job_and_spec(s, "test-job")
        assert s.scalar(select(GoldItem.active).where(GoldItem.image_id == target_id)) is False
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == GOLD_RETIRED)).all()
        assert [e.payload["revealed_to"] for e in events] == [2]
        row = next(r for r in gold_summary(s, job) if r["public_id"] == target)
        assert row["revealed_to"] == 2 and row["active"] is False
        bank = bank_exposure(s, job, spec)
        assert (bank.active, bank.retired_revealed, bank.max_revealed) == (3, 1, 2)
        codes = {w.code for w in check_gold(s, job, spec).warnings}
        assert "retired_revealed" in codes
    later = _quiz(db, "third", gold, set())  # the retired item is not served again
    assert target not in later and len(later) == 3


def test_the_bank_floor_keeps_items_over_the_limit(env):
    """At its floor (here: one quiz) the bank keeps an over-exposed item rather than stop the
    job, and says so."""
    db, seeded, _data_dir, _url = env
    gold = gold_answers(db, seeded.job_id)
    first, second = sorted(gold)[:2]
    for target in (first, second):
        _quiz_with(db, f"a-{target[:4]}", gold, target)
        _quiz_with(db, f"b-{target[:4]}", gold, target)
    with db.session() as s:
        job, spec = job_and_spec(s, "test-job")
        active = {g.image_id: g.active for g in s.scalars(select(GoldItem))}
        assert sum(active.values()) == 3  # 4 - 1: the second would go below the floor
        assert not active[_image_id_in(s, first)] and active[_image_id_in(s, second)]
        bank = bank_exposure(s, job, spec)
        assert bank.kept_over_limit == 1
        assert "kept_over_limit" in {code for code, _m in bank.warnings()}


def _image_id_in(session, public_id: str) -> int:
    return session.scalar(select(Image.id).where(Image.public_id == public_id))


def test_retirement_off_with_zero(tmp_path, monkeypatch):
    monkeypatch.setattr(exposure, "SMALL_BANK_WORK_PAGES", 0)
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    db = Database(url)
    try:
        seeded = _seed_small_bank(db, tmp_path, retire_after_reveals=0)
        gold = gold_answers(db, seeded.job_id)
        target = sorted(gold)[0]
        target_id = _image_id(db, target)
        for name in ("one", "two", "three"):
            _quiz_with(db, name, gold, target)
        with db.session() as s:
            assert all(g.active for g in s.scalars(select(GoldItem)))
            job, _spec = job_and_spec(s, "test-job")
            assert revealed_counts(s, job) == {target_id: 3}
    finally:
        db.dispose()


def test_gold_check_list_and_admin_page_show_exposure(env):
    db, seeded, data_dir, url = env
    gold = gold_answers(db, seeded.job_id)
    target = sorted(gold)[0]
    _quiz_with(db, "first", gold, target)
    _quiz_with(db, "second", gold, target)
    runner = CliRunner(env={"COLUMNS": "250"})
    base = ["--data-dir", str(data_dir), "--db", url]
    checked = runner.invoke(cli_app, [*base, "gold", "check", "--job", "test-job"])
    assert checked.exit_code == 0, checked.output
    assert "exposure" in checked.output and "1 retired" in checked.output
    assert "small_bank" in checked.output and "retired_revealed" in checked.output
    listed = runner.invoke(cli_app, [*base, "gold", "list", "--job", "test-job"])
    assert listed.exit_code == 0 and "revealed" in listed.output
    app = create_app(Settings(data_dir=data_dir, db_url=url), db=db)
    add_user(db, "boss", "admin")
    client = signed_in_client(app, "boss")
    page = client.get("/admin/jobs/test-job/gold").text
    assert "Revealed to" in page and 'data-warning="small_bank"' in page
    assert "1 retired so far" in page
    api = client.get("/api/jobs/test-job/gold").json()
    assert sorted(r["revealed_to"] for r in api) == [0, 0, 0, 2]


def test_engine_refuses_every_contest_but_a_missed_one_the_same_way(env):
    """quality.commands.contest_gold: a correct gold answer, a work answer, another account's
    missed gold and an unknown id all get the one ``not_contestable`` refusal."""
    from cxrlabel.quality.commands import contest_gold
    from cxrlabel.quality.store import QualityError
    from cxrlabel.storage.models import Judgment

    db, seeded, _data_dir, _url = env
    gold = gold_answers(db, seeded.job_id)
    target = sorted(gold)[0]
    mine_name = _quiz_with(db, "mine", gold, target)
    theirs_name = _quiz_with(db, "theirs", gold, target)
    with db.session() as s:
        me = s.scalar(select(User).where(User.username == mine_name))
        them = s.scalar(select(User.id).where(User.username == theirs_name))
        mine = s.scalars(select(Judgment).where(Judgment.user_id == me.id)).all()
        missed = next(j.id for j in mine if j.gold_missed)
        correct = next(j.id for j in mine if j.is_gold and not j.gold_missed)
        other = s.scalar(
            select(Judgment.id).where(Judgment.user_id == them, Judgment.gold_missed.is_(True))
        )
    refusals = set()
    for judgment_id in (correct, other, 10**6):
        with db.session() as s:
            job, _spec = job_and_spec(s, "test-job")
            with pytest.raises(QualityError) as info:
                contest_gold(s, job, _spec, s.get(User, me.id), judgment_id, "I disagree", utcnow())
            refusals.add((info.value.code, info.value.status, info.value.message))
    assert len(refusals) == 1 and next(iter(refusals))[:2] == ("not_contestable", 404)
    with db.session() as s:
        job, _spec = job_and_spec(s, "test-job")
        assert contest_gold(s, job, _spec, s.get(User, me.id), missed, "I disagree", utcnow()).id


def test_reimport_keeps_retired_gold_retired(env):
    """Re-importing the exported bank (the usual way to edit reasons) must not bring back an
    item retired for exposure or switched off by an admin (e.g. after contests), and says so."""
    from cxrlabel.quality.commands import update_gold

    db, seeded, data_dir, url = env
    gold = gold_answers(db, seeded.job_id)
    exposed, switched_off = sorted(gold)[:2]
    _quiz_with(db, "first", gold, exposed)
    _quiz_with(db, "second", gold, exposed)  # the second reveal retires it
    admin_id = add_user(db, "boss", "admin")
    with db.session() as s:
        job, spec = job_and_spec(s, "test-job")
        gold_id = s.scalar(
            select(GoldItem.id).where(GoldItem.image_id == _image_id_in(s, switched_off))
        )
        update_gold(s, job, spec, s.get(User, admin_id), gold_id, now=utcnow(), active=False)
    runner = CliRunner(env={"COLUMNS": "250"})
    base = ["--data-dir", str(data_dir), "--db", url]
    bank = data_dir / "bank.csv"
    exported = runner.invoke(
        cli_app, [*base, "gold", "export", "--job", "test-job", "-o", str(bank)]
    )
    assert exported.exit_code == 0, exported.output
    imported = runner.invoke(cli_app, [*base, "gold", "import", str(bank), "--job", "test-job"])
    assert imported.exit_code == 0, imported.output
    assert "2 kept retired" in imported.output
    with db.session() as s:
        active = dict(s.execute(select(Image.public_id, GoldItem.active).join(GoldItem)).all())
    assert active == {pid: pid not in (exposed, switched_off) for pid in gold}
