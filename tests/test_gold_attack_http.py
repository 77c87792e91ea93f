"""The gold-harvesting attack of issue 18, over HTTP against a real uvicorn server on loopback.

Before: the image id and the ETag (sha256 of the bytes) were the same for every account and the
missed-gold feedback returned the id with the accepted answer, so throwaway accounts that failed
the quiz on purpose pooled the whole gold bank; a further account then recognised every hidden
test question, answered all work opposite to the truth and ended active with trust 0.94.

Here several throwaway accounts attack (fail the quiz; then pass it and miss every hidden test
question on work pages), pooling ids, ETags, the bytes' sha256 and every revealed answer. What
must hold: ids and ETags never correlate across accounts, the feedback gives no id another
account can use, a failed quiz reveals no answer, every revealed item is retired (reveal limit
1 here), so the cheater recognises no test question, misses them while lying on the work, and
is removed with every work answer tainted.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from cxrlabel.annotate.accounts import issue_api_token
from cxrlabel.config import Settings
from cxrlabel.design.exposure import GOLD_RETIRED
from cxrlabel.sim.http_attack import HttpAccount, cheat, harvest
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import (
    AnnotatorState,
    AuditEvent,
    GoldItem,
    Image,
    Judgment,
    User,
)
from cxrlabel.web.app import create_app
from live_server import LiveServer
from web_support import add_user, seed_job

LABELS = ["NORMAL", "PNEUMONIA"]


@pytest.fixture
def server(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    db = Database(url)
    seeded = seed_job(
        db,
        tmp_path,
        n_work=80,
        n_gold=40,
        quiz_length=4,
        items_per_page=4,
        gold_per_page=1,
        min_accuracy=0.75,
        jmin=2,
        jmax=3,
        retire_after_reveals=1,
    )
    app = create_app(Settings(data_dir=tmp_path, db_url=url), db=db)
    with LiveServer(app) as base_url:
        yield base_url, db, seeded, tmp_path
    db.dispose()


def _truth(db: Database, data_dir: Path, gold_ids: list[int]) -> dict[str, str]:
    """Content sha256 -> label, for every image (gold: its answer; work: the seed's parity)."""
    out = {}
    with db.session() as s:
        gold = dict(s.execute(select(GoldItem.image_id, GoldItem.accepted_answers)).all())
        for image_id, rel in s.execute(select(Image.id, Image.rendition_path)):
            sha = hashlib.sha256((data_dir / rel).read_bytes()).hexdigest()
            index = int(rel.rsplit("-", 1)[1].split(".")[0])
            out[sha] = gold[image_id][0] if image_id in gold else LABELS[index % 2]
    return out


def _accounts(db: Database, base: str, prefix: str, n: int) -> list[HttpAccount]:
    out = []
    for k in range(n):
        uid = add_user(db, f"{prefix}-{k}")
        with db.session() as s:
            token = issue_api_token(s, s.get(User, uid))
        out.append(HttpAccount(base, "test-job", f"{prefix}-{k}", token))
    return out


def test_harvesting_accounts_cannot_recover_the_gold_bank(server):
    base, db, seeded, data_dir = server
    truth = _truth(db, data_dir, seeded.gold_ids)

    # 1. Throwaway accounts fail the quiz on purpose: told their score, not the answers.
    quitters = _accounts(db, base, "quitter", 4)
    pooled = harvest(quitters, truth, LABELS, "fail_quiz")
    assert [log.final_status for log in pooled.logs] == ["disqualified"] * 4
    assert all(len(log.items) >= 4 for log in pooled.logs)  # they did see their quizzes
    assert pooled.known == {}, "a failed quiz revealed accepted answers"

    # 2. The attacker adapts: pass the quiz honestly, then miss every hidden test question.
    missers = _accounts(db, base, "misser", 4)
    more = harvest(missers, truth, LABELS, "miss_on_work", max_pages=6)
    assert all(log.pages >= 2 for log in more.logs)  # they got past the quiz to work pages
    revealed = more.revealed_shas()
    assert revealed, "the feedback must still explain a miss (the scan can fail)"
    for log in more.logs:
        pooled.add(log)

    # The feedback's id names the image for that account only.
    owner, other = missers[0], missers[1]
    shown = next(i for i in owner.log.items if i.content_sha256 in owner.log.revealed)
    assert owner.client.get(f"/img/{shown.image_id}").status_code == 200
    assert other.client.get(f"/img/{shown.image_id}").status_code == 404

    # Ids and ETags never correlate across accounts, though the same images were shown.
    by_content: dict[str, set[str]] = defaultdict(set)
    for log in pooled.logs:
        for item in log.items:
            by_content[item.content_sha256].add(log.name)
    shared = [sha for sha, names in by_content.items() if len(names) > 1]
    assert shared, "no image was shown to two accounts: the correlation check would be empty"
    logs = pooled.logs
    for i, a in enumerate(logs):
        for b in logs[i + 1 :]:
            assert not a.ids() & b.ids(), (a.name, b.name)
            assert not a.etags() & b.etags(), (a.name, b.name)

    # Every revealed test question is retired (limit 1): no new page will carry it.
    with db.session() as s:
        sha_of = {
            hashlib.sha256((data_dir / rel).read_bytes()).hexdigest(): image_id
            for image_id, rel in s.execute(select(Image.id, Image.rendition_path))
        }
        active = {g.image_id: g.active for g in s.scalars(select(GoldItem))}
        assert all(not active[sha_of[sha]] for sha in revealed)
        retired_events = s.scalars(
            select(AuditEvent).where(AuditEvent.action == GOLD_RETIRED)
        ).all()
        assert len(retired_events) == len(revealed)
        assert sum(active.values()) == len(active) - len(revealed)

    # 3. The cheater: honest on the quiz, harvested answers on what it recognises, lies on
    #    the rest. It recognises nothing, misses the hidden test questions and is removed.
    honest = _accounts(db, base, "honest", 3)
    for account in honest[:2]:  # the crowd around the cheater: its peers on work images
        account.work(lambda item, _quiz: truth[item.content_sha256], max_pages=4)
    cheater = _accounts(db, base, "cheater", 1)[0]
    log = cheat(cheater, pooled, truth, LABELS)
    honest[2].work(lambda item, _quiz: truth[item.content_sha256])
    assert log.pages >= 2, "the cheater got through the quiz to work pages"
    assert log.recognised == []
    assert log.final_status == "removed"
    with db.session() as s:
        uid = s.scalar(select(User.id).where(User.username == "cheater-0"))
        state = s.scalar(select(AnnotatorState).where(AnnotatorState.user_id == uid))
        work = s.scalars(
            select(Judgment).where(Judgment.user_id == uid, Judgment.is_gold.is_(False))
        ).all()
        assert state.status == "removed" and state.gold_missed >= 1
        assert work and all(j.tainted for j in work)
        # ... and its wrong answers count for nothing: every work answer was a lie.
        assert all(j.answer != truth_label for j, truth_label in _labels(work, s, data_dir, truth))
    for account in quitters + missers + honest + [cheater]:
        account.close()


def _labels(judgments, session, data_dir: Path, truth: dict[str, str]):
    rel = dict(session.execute(select(Image.id, Image.rendition_path)).all())
    for j in judgments:
        sha = hashlib.sha256((data_dir / rel[j.image_id]).read_bytes()).hexdigest()
        yield j, truth[sha]


def test_contest_refusals_are_indistinguishable(server):
    """Only one's own missed test question can be contested; everything else (unknown id,
    someone else's missed gold, a work answer, a correct gold answer) gets one response."""
    base, db, seeded, data_dir = server
    truth = _truth(db, data_dir, seeded.gold_ids)
    a, b = _accounts(db, base, "contester", 2)
    answered: dict[str, list] = {"a": [], "b": []}
    for name, account in (("a", a), ("b", b)):
        for _ in range(2):  # the quiz right, then a work page all wrong (its gold missed)
            page = account.next_page()
            assert page is not None
            seen = {i["image_public_id"]: account.fetch(i) for i in page["items"]}
            answers = {pid: truth[item.content_sha256] for pid, item in seen.items()}
            if page["kind"] == "work":
                answers = {
                    pid: "PNEUMONIA" if a == "NORMAL" else "NORMAL" for pid, a in answers.items()
                }
            answered[name].append(account.submit(page, answers))
    missed_a = [m for r in answered["a"] for m in r["missed_gold"]]
    missed_b = [m for r in answered["b"] for m in r["missed_gold"]]
    assert missed_a and missed_b, "each account missed a test question (the check can fail)"
    with db.session() as s:
        uid_a = s.scalar(select(User.id).where(User.username == "contester-0"))
        ids = list(
            s.scalars(select(Judgment.id).where(Judgment.user_id == uid_a).order_by(Judgment.id))
        )
    refusals = [
        "0",
        "1",
        str(ids[0]),
        str(ids[-1]),  # sequential database ids (the old oracle)
        "x" * 22,
        "",  # made up
        missed_b[0]["judgment_id"],  # another account's missed gold
        missed_a[0]["image_public_id"],  # an image id, not an answer id
    ]
    bodies = set()
    for answer_id in refusals:
        r = a.client.post(
            "/api/jobs/test-job/contests", json={"judgment_id": answer_id, "reason": "I disagree"}
        )
        bodies.add((r.status_code, r.text))
    assert len(bodies) == 1, bodies
    status, text = bodies.pop()
    assert status == 404 and "not_contestable" in text
    ok = a.client.post(
        "/api/jobs/test-job/contests",
        json={"judgment_id": missed_a[0]["judgment_id"], "reason": "I disagree"},
    )
    assert ok.status_code == 201, ok.text
    # Answer ids are opaque: no digits-only ids, no order.
    assert not any(m["judgment_id"].isdigit() for m in missed_a + missed_b)
    a.close()
    b.close()


def test_etag_and_ids_differ_per_account_for_one_image(server):
    """The same image shown to two accounts: different id, different ETag, same bytes; each
    account's ETag still gives it a 304."""
    base, db, seeded, data_dir = server
    accounts = _accounts(db, base, "viewer", 6)
    seen: dict[str, list[tuple[HttpAccount, dict]]] = defaultdict(list)
    for account in accounts:
        page = account.next_page()
        for item in page["items"]:
            got = account.fetch(item)
            seen[got.content_sha256].append((account, item))
    twice = [v for v in seen.values() if len(v) > 1]
    assert twice, "no quiz image was shown to two of six accounts (40 gold, 4 each)"
    (acc1, item1), (acc2, item2) = twice[0][:2]
    r1, r2 = httpx.get(base + item1["image_url"]), httpx.get(base + item2["image_url"])
    assert r1.content == r2.content
    assert item1["image_public_id"] != item2["image_public_id"]
    assert r1.headers["etag"] != r2.headers["etag"]
    again = httpx.get(base + item1["image_url"], headers={"If-None-Match": r1.headers["etag"]})
    assert again.status_code == 304
    for account in accounts:
        account.close()


def test_cheater_perfect_on_gold_is_removed_by_peer_agreement(server):
    """The residual risk: an account that recognises the test questions some other way (the
    same image recurring across many accounts, pixels of an item not yet retired) is perfect
    on gold and lies on the work. Gold alone cannot catch it; agreement with peers on work
    items must (the skill estimate and harm rule of issue 17, quality/skill.py)."""
    base, db, seeded, data_dir = server
    truth = _truth(db, data_dir, seeded.gold_ids)
    with db.session() as s:
        rel = dict(s.execute(select(Image.id, Image.rendition_path)).all())
    gold_shas = {
        hashlib.sha256((data_dir / rel[i]).read_bytes()).hexdigest() for i in seeded.gold_ids
    }

    def honest_answer(item, _quiz: bool) -> str:
        return truth[item.content_sha256]

    honest = _accounts(db, base, "honest", 3)
    for account in honest[:2]:  # peers first: a few pages each, work left for the cheater
        account.work(honest_answer, max_pages=4)
    cheater = _accounts(db, base, "oracle-cheater", 1)[0]

    def choose(item, is_quiz: bool) -> str:
        label = truth[item.content_sha256]
        if is_quiz or item.content_sha256 in gold_shas:
            return label  # recognised: perfect on every test question
        return "PNEUMONIA" if label == "NORMAL" else "NORMAL"

    cheater.work(choose, max_pages=14)  # enough work for 30+ peer pairs
    honest[2].work(honest_answer)  # more peers on the cheater's images
    assert cheater.log.pages >= 2
    with db.session() as s:
        uid = s.scalar(select(User.id).where(User.username == "oracle-cheater-0"))
        state = s.scalar(select(AnnotatorState).where(AnnotatorState.user_id == uid))
        assert state.gold_missed == 0  # gold could not catch it
        assert state.status == "removed"
        work = s.scalars(
            select(Judgment).where(Judgment.user_id == uid, Judgment.is_gold.is_(False))
        ).all()
        assert work and all(j.tainted for j in work)
    for account in [*honest, cheater]:
        account.close()
