"""Invite sign-ups: per-link and per-network hourly limits, and the duplicate-account signals
the admin sees (annotate/signups.py, issue 18: one multi-use link gave unlimited accounts)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from cxrlabel.annotate import signups
from cxrlabel.annotate.accounts import create_invite
from cxrlabel.annotate.assignment import next_page
from cxrlabel.annotate.schemas import AnswerIn
from cxrlabel.annotate.submission import submit_page
from cxrlabel.cli import app as cli_app
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import Job, Signup, User, utcnow
from cxrlabel.web.deps import job_and_spec
from web_support import (
    add_user,
    csrf_from_html,
    gold_answers,
    signed_in_client,
    web_app_with_small_job,
)

PASSWORD = "plum orbit sailing 42"


@pytest.fixture
def env(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    db = Database(url)
    app, seeded = web_app_with_small_job(db, tmp_path, url)
    yield app, db, seeded, tmp_path
    db.dispose()


def _invite(db: Database, uses: int = 100) -> str:
    with db.session() as s:
        job = s.scalar(select(Job))
        _invite_row, token = create_invite(s, max_uses=uses, job=job, now=utcnow())
    return token


def _join(client: TestClient, token: str, username: str):
    html = client.get(f"/join/{token}").text
    csrf = csrf_from_html(html)
    return client.post(
        f"/join/{token}",
        data={
            "username": username,
            "password": PASSWORD,
            "password2": PASSWORD,
            "csrf_token": csrf,
        },
        follow_redirects=False,
    )


def _users(db: Database) -> int:
    with db.session() as s:
        return s.scalar(select(func.count(User.id)))


def test_network_prefixes() -> None:
    assert signups.network_of("203.0.113.77") == "203.0.113.0/24"
    assert signups.network_of("::ffff:203.0.113.9") == "203.0.113.0/24"
    assert signups.network_of("2001:db8:1:2::5") == "2001:db8:1::/48"
    assert signups.network_of("testclient") == "unknown"
    assert signups.network_of(None) == "unknown"
    assert signups.network_of("127.0.0.1") == "127.0.0.0/24"


def _from(app, address: str) -> TestClient:
    return TestClient(app, client=(address, 50000))


def test_one_network_gets_a_limited_number_of_accounts_per_hour(env, monkeypatch):
    app, db, _seeded, _ = env
    monkeypatch.setenv("CXRLABEL_SIGNUPS_PER_NETWORK_HOUR", "3")
    token = _invite(db)
    before = _users(db)
    for k in range(3):
        r = _join(_from(app, f"203.0.113.{k + 1}"), token, f"new-{k}")
        assert r.status_code == 303, r.text
    refused = _join(_from(app, "203.0.113.99"), token, "new-3")
    assert refused.status_code == 429 and "Too many accounts" in refused.text
    assert _users(db) == before + 3  # the refused sign-up created nothing
    assert _join(_from(app, "198.51.100.7"), token, "elsewhere").status_code == 303
    # no client addresses (loopback, unknown): no per-network limit, it would be everyone's
    for k in range(4):
        assert _join(TestClient(app), token, f"local-{k}").status_code == 303
    with db.session() as s:  # an hour later the network may sign up again
        for row in s.scalars(select(Signup)):
            row.created_at = utcnow() - signups.WINDOW
    assert _join(_from(app, "203.0.113.50"), token, "new-4").status_code == 303


def test_one_link_gets_a_limited_number_of_accounts_per_hour(env, monkeypatch):
    app, db, _seeded, _ = env
    monkeypatch.setenv("CXRLABEL_SIGNUPS_PER_INVITE_HOUR", "2")
    first, second = _invite(db), _invite(db)
    assert _join(TestClient(app), first, "a-0").status_code == 303
    assert _join(TestClient(app), first, "a-1").status_code == 303
    assert _join(TestClient(app), first, "a-2").status_code == 429
    assert _join(TestClient(app), second, "b-0").status_code == 303  # per link


def test_accounts_from_one_browser_are_listed_for_the_admin(env, tmp_path):
    app, db, _seeded, data_dir = env
    token = _invite(db)
    browser = TestClient(app)  # one browser: its device cookie survives sign-outs
    assert _join(browser, token, "twin-1").status_code == 303
    browser.cookies.delete("cxrlabel_session")
    assert _join(browser, token, "twin-2").status_code == 303
    assert _join(TestClient(app), token, "other-1").status_code == 303
    with db.session() as s:
        found = signups.duplicate_signals(s)
    device = [sig for sig in found if sig.kind == "same_device"]
    assert [set(sig.usernames) for sig in device] == [{"twin-1", "twin-2"}]
    # the admin page lists them ...
    add_user(db, "boss", "admin")
    admin = signed_in_client(app, "boss")
    page = admin.get("/admin/invites").text
    assert "same device" in page and "twin-1, twin-2" in page
    # ... and so does the CLI
    result = CliRunner().invoke(
        cli_app, ["--data-dir", str(data_dir), "--db", db.url, "invite", "signals"]
    )
    assert result.exit_code == 0, result.output
    assert "same_device" in result.output and "twin-1, twin-2" in result.output


def _work(db: Database, username: str, gold: dict, certainty: str, pages: int) -> None:
    uid = add_user(db, username)
    for _ in range(pages):
        with db.session() as s:
            job, spec = job_and_spec(s, "test-job")
            user = s.get(User, uid)
            page = next_page(s, job, spec, user, utcnow())
            if page is None:
                return
            answers = [
                AnswerIn(
                    image_public_id=i.image.public_id,
                    answer=gold.get(i.image.public_id, ["NORMAL"])[0],
                    certainty=certainty,
                )
                for i in page.items
            ]
            submit_page(
                s, job, spec, user, page.public_id, f"c-{page.public_id}", answers, utcnow()
            )


def test_near_identical_answer_patterns_are_a_signal(env, monkeypatch):
    app, db, seeded, _ = env
    monkeypatch.setattr(signups, "SAME_ANSWERS_MIN_COMMON", 4)
    gold = gold_answers(db, seeded.job_id)
    _work(db, "copy-a", gold, "definitely", 4)
    _work(db, "copy-b", gold, "definitely", 4)
    _work(db, "honest", gold, "probably", 4)  # same labels, its own certainty
    with db.session() as s:
        found = [sig for sig in signups.duplicate_signals(s) if sig.kind == "same_answers"]
    assert [set(sig.usernames) for sig in found] == [{"copy-a", "copy-b"}]


@pytest.mark.parametrize("names", [("nora", "nora"), ("Nora", "nora")], ids=["same", "case"])
def test_two_sign_ups_taking_one_username_at_the_same_instant_make_one_account(
    tmp_path: Path, db_url: str, names: tuple[str, str]
) -> None:
    """Two people on two invite links pick the same username (or the same up to case) and
    submit at the same instant: one account is made, the other is told the name is taken
    (409). On PostgreSQL both used to pass the "is it taken?" check: a second account "Nora"
    beside "nora", or a unique-constraint error (500) for the identical name."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    db = Database(db_url)
    try:
        app, _seeded = web_app_with_small_job(db, tmp_path, db_url)
        tokens = [_invite(db), _invite(db)]
        clients = [_from(app, f"198.51.{i}.7") for i in (1, 2)]
        forms = []
        for client, token, name in zip(clients, tokens, names, strict=True):
            csrf = csrf_from_html(client.get(f"/join/{token}").text)
            data = {"username": name, "password": PASSWORD, "password2": PASSWORD}
            forms.append((client, token, data | {"csrf_token": csrf}))
        before = _users(db)
        start = threading.Barrier(2)

        def join(form):
            client, token, data = form
            start.wait(10)
            return client.post(f"/join/{token}", data=data, follow_redirects=False)

        with ThreadPoolExecutor(max_workers=2) as pool:
            replies = list(pool.map(join, forms))
        codes = sorted(r.status_code for r in replies)
        assert codes == [303, 409], [(r.status_code, r.text[-300:]) for r in replies]
        refused = next(r for r in replies if r.status_code == 409)
        assert "already taken" in refused.text
        assert _users(db) == before + 1
        with db.session() as s:
            assert len(s.scalars(select(User).where(User.username.ilike("nora"))).all()) == 1
    finally:
        db.dispose()
