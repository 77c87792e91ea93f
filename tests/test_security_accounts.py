"""Accounts hardening (issue 18): revocable server-side sessions, password change, disable and
enable (web and CLI), password policy, the login throttle under concurrency, and argon2 on its
own capped pool. Each test failed on the code before issue 18."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import anyio
import anyio.to_thread
import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, select, update
from typer.testing import CliRunner

from cxrlabel.annotate.accounts import AccountError, check_password_rules, common_passwords
from cxrlabel.cli import app as cli_app
from cxrlabel.config import Settings
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import UserSession, utcnow
from cxrlabel.web.app import create_app
from cxrlabel.web.passwords import PasswordPool, PasswordPoolBusy
from cxrlabel.web.throttle import LoginRateLimiter
from web_support import add_user, csrf_from_html, seed_job

PASSWORD = "correct horse battery"
NEW_PASSWORD = "purple elephant tuba"
ME = "/api/jobs/test-job/me"


@pytest.fixture
def web(db_url, tmp_path):
    db = Database(db_url)
    seed_job(db, tmp_path, n_work=8, n_gold=4, quiz_length=2, items_per_page=4)
    app = create_app(Settings(data_dir=tmp_path, db_url=db_url), db=db)
    yield app, db, tmp_path
    db.dispose()


def login(client: TestClient, username: str, password: str = PASSWORD):
    token = csrf_from_html(client.get("/login").text)
    return client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": token, "next": "/"},
        follow_redirects=False,
    )


def signed_in(app, username: str, address: str = "testclient") -> TestClient:
    client = TestClient(app, follow_redirects=False, client=(address, 50000))
    assert login(client, username).status_code == 303
    return client


def cookie_of(client: TestClient) -> str:
    return client.cookies.get("cxrlabel_session")


def replay(app, cookie: str) -> int:
    """Status of an API call from a fresh client that only carries ``cookie``."""
    other = TestClient(app, follow_redirects=False)
    return other.get(ME, headers={"Cookie": f"cxrlabel_session={cookie}"}).status_code


# --- sessions ------------------------------------------------------------------------------------


def test_cookie_replayed_after_logout_is_refused(web):
    app, db, _ = web
    add_user(db, "ann1")
    client = signed_in(app, "ann1")
    cookie = cookie_of(client)
    assert replay(app, cookie) == 200
    token = csrf_from_html(client.get("/account").text)
    assert client.post("/logout", data={"csrf_token": token}).status_code == 303
    assert replay(app, cookie) == 401  # before issue 18: 200 for 14 days
    with db.read_session() as s:
        assert s.scalar(select(UserSession.id)) is None


def test_password_change_ends_every_other_session(web):
    app, db, _ = web
    add_user(db, "ann1")
    here, elsewhere = signed_in(app, "ann1"), signed_in(app, "ann1")
    old_other = cookie_of(elsewhere)
    token = csrf_from_html(here.get("/account/password").text)
    form = {
        "csrf_token": token,
        "current": "wrong one",
        "password": NEW_PASSWORD,
        "password2": NEW_PASSWORD,
    }
    assert here.post("/account/password", data=form).status_code == 403
    weak = {**form, "current": PASSWORD, "password": "password", "password2": "password"}
    r = here.post("/account/password", data=weak)
    assert r.status_code == 422 and "common" in r.text
    r = here.post("/account/password", data={**form, "current": PASSWORD})
    assert r.status_code == 200 and "signed out everywhere else (1 other session)" in r.text
    assert here.get(ME).status_code == 200  # the browser that changed it stays signed in
    assert replay(app, old_other) == 401
    assert login(TestClient(app), "ann1", PASSWORD).status_code == 401
    assert login(TestClient(app), "ann1", NEW_PASSWORD).status_code == 303


def test_admin_disable_ends_sessions_and_enable_restores_sign_in(web):
    app, db, _ = web
    boss = add_user(db, "boss", role="admin")
    uid = add_user(db, "ann1")
    admin, victim = signed_in(app, "boss"), signed_in(app, "ann1")
    token = csrf_from_html(admin.get("/admin/users").text)
    r = admin.post(f"/api/users/{uid}/disable", headers={"X-CSRF-Token": token})
    assert r.status_code == 200 and r.json()["sessions_ended"] == 1
    assert victim.get(ME).status_code == 401
    assert login(TestClient(app), "ann1").status_code == 401
    r = admin.post(f"/admin/users/{uid}/enable", data={"csrf_token": token})
    assert r.status_code == 200 and "ann1: enabled" in r.text
    assert login(TestClient(app), "ann1").status_code == 303
    own = admin.post(f"/api/users/{boss}/disable", headers={"X-CSRF-Token": token})
    assert own.status_code == 400  # an admin cannot lock themselves out


def test_cli_passwd_disable_enable(web, tmp_path):
    app, db, data_dir = web
    add_user(db, "ann1")
    client = signed_in(app, "ann1")
    runner = CliRunner()
    base = ["--data-dir", str(data_dir), "--db", db.url]
    r = runner.invoke(cli_app, [*base, "user", "passwd", "ann1", "--password", "ann1ann1ann1"])
    assert r.exit_code == 2 and "username" in r.output
    r = runner.invoke(cli_app, [*base, "user", "passwd", "ann1", "--password", NEW_PASSWORD])
    assert r.exit_code == 0, r.output
    assert "1 session(s) ended" in r.output and client.get(ME).status_code == 401
    client = signed_in_with(app, "ann1", NEW_PASSWORD)
    r = runner.invoke(cli_app, [*base, "user", "disable", "ann1"])
    assert r.exit_code == 0 and "disabled; 1 session(s) ended" in r.output
    assert client.get(ME).status_code == 401
    assert login(TestClient(app), "ann1", NEW_PASSWORD).status_code == 401
    assert runner.invoke(cli_app, [*base, "user", "enable", "ann1"]).exit_code == 0
    assert login(TestClient(app), "ann1", NEW_PASSWORD).status_code == 303
    r = runner.invoke(cli_app, [*base, "user", "disable", "[red]nobody"])
    assert r.exit_code == 2 and "[red]nobody" in r.output


def signed_in_with(app, username: str, password: str) -> TestClient:
    client = TestClient(app, follow_redirects=False)
    assert login(client, username, password).status_code == 303
    return client


def test_idle_and_absolute_timeouts_from_settings(db_url, tmp_path):
    db = Database(db_url)
    seed_job(db, tmp_path, n_work=8, n_gold=4, quiz_length=2, items_per_page=4)
    settings = Settings(
        data_dir=tmp_path, db_url=db_url, session_idle_minutes=30, session_max_hours=24
    )
    app = create_app(settings, db=db)
    try:
        add_user(db, "ann1")
        client = signed_in(app, "ann1")
        now = utcnow()

        def age(created: timedelta, seen: timedelta) -> int:
            with db.session() as s:
                s.execute(
                    update(UserSession).values(created_at=now - created, last_seen_at=now - seen)
                )
            return client.get(ME).status_code

        assert age(timedelta(hours=1), timedelta(minutes=29)) == 200
        with db.read_session() as s:  # that request touched last_seen_at (older than a minute)
            seen = s.scalar(select(UserSession.last_seen_at))
        assert abs((seen.replace(tzinfo=now.tzinfo) - utcnow()).total_seconds()) < 60
        assert age(timedelta(hours=1), timedelta(minutes=31)) == 401  # idle
        assert age(timedelta(hours=25), timedelta(seconds=1)) == 401  # absolute
        signed_in(app, "ann1")  # a sign-in purges the expired rows
        with db.read_session() as s:
            assert len(s.scalars(select(UserSession.id)).all()) == 1
    finally:
        db.dispose()


def test_signed_in_request_costs_one_session_read_and_no_write(web):
    """The annotation loop's per-request cost: one indexed read of user_sessions, and a write
    (``last_seen_at``) at most once a minute."""
    app, db, _ = web
    add_user(db, "ann1")
    client = signed_in(app, "ann1")
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        if "user_sessions" in statement:
            statements.append(statement.split()[0].upper())

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        assert client.get(ME).status_code == 200
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    assert statements == ["SELECT"]


# --- password policy -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "password",
    [
        "password",
        " " * 8,
        "\t" * 12,
        "ann-carol",
        "my-ann-carol-pw",
        "Baseball1",
        "1qaz2wsx",
        "short",
    ],
)
def test_password_policy_refuses(password):
    with pytest.raises(AccountError) as exc:
        check_password_rules(password, "ann-carol")
    assert exc.value.code == "weak_password"


def test_password_policy_accepts_a_passphrase_and_ships_the_list_offline():
    check_password_rules(PASSWORD, "ann-carol")
    assert len(common_passwords()) >= 9000 and "baseball1" in common_passwords()


def test_weak_password_refused_at_sign_up(web):
    from cxrlabel.annotate.accounts import create_invite

    app, db, _ = web
    with db.session() as s:
        _invite, token = create_invite(s, max_uses=5, now=utcnow())
    client = TestClient(app, follow_redirects=False)
    for pw in ("password", " " * 8, "newbie42newbie42"):
        form = {
            "csrf_token": csrf_from_html(client.get(f"/join/{token}").text),
            "username": "newbie42",
            "password": pw,
            "password2": pw,
        }
        r = client.post(f"/join/{token}", data=form)
        assert r.status_code == 422, (pw, r.status_code)


# --- login throttle ------------------------------------------------------------------------------


def test_throttle_is_atomic_under_concurrent_guesses(web):
    """49 simultaneous wrong guesses against a budget of 10: exactly 10 are checked (401), the
    rest refused (429). Before issue 18 the check and the count were separate steps and 49
    were let through."""
    app, db, _ = web
    add_user(db, "ann1")
    app.state.login_limiter = LoginRateLimiter(db, max_failures=10, window_s=900)

    async def storm() -> list[int]:
        transport = httpx.ASGITransport(app=app, client=("10.9.9.9", 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            token = csrf_from_html((await c.get("/login")).text)
            form = {"username": "ann1", "password": "wrong guess!", "csrf_token": token}
            replies = await asyncio.gather(*(c.post("/login", data=form) for _ in range(49)))
        return [r.status_code for r in replies]

    codes = asyncio.run(storm())
    assert codes.count(401) == 10 and codes.count(429) == 39


def test_throttle_locks_out_the_attacker_not_the_user(web):
    app, db, _ = web
    add_user(db, "ann1")
    app.state.login_limiter = LoginRateLimiter(db, max_failures=3, window_s=900)
    attacker = TestClient(app, follow_redirects=False, client=("203.0.113.66", 1234))
    for _ in range(3):
        assert login(attacker, "ann1", "guess guess").status_code == 401
    r = login(attacker, "ann1")  # even the right password, from the attacker's address
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    owner = TestClient(app, follow_redirects=False, client=("198.51.100.7", 1234))
    assert login(owner, "ann1").status_code == 303  # before issue 18: 429, locked out


def test_cli_unthrottle_lifts_a_lockout_and_only_the_one_named(web):
    """A ward behind one NAT address can reach the per-address budget; an administrator
    lifts it from the command line instead of everyone waiting 15 minutes."""
    app, db, data_dir = web
    for name in ("ann1", "ann2"):
        add_user(db, name)
    app.state.login_limiter = LoginRateLimiter(db, max_failures=3, ip_max_failures=5)
    ward = TestClient(app, follow_redirects=False, client=("10.1.1.1", 1234))
    for name in ("ann1", "ann1", "ann1", "nobody", "nobody"):
        assert login(ward, name, "guess guess").status_code == 401
    assert login(ward, "ann2").status_code == 429  # the address's budget: every account
    runner = CliRunner()
    base = ["--data-dir", str(data_dir), "--db", db.url]
    for bad, says in (
        ([], "--address"),
        (["--username", "ann1"], "needs --address"),
        (["--all", "--address", "10.1.1.1"], "--all"),
    ):
        r = runner.invoke(cli_app, [*base, "user", "unthrottle", *bad])
        assert r.exit_code == 2 and says in r.output, r.output
    assert login(ward, "ann2").status_code == 429  # a refused command lifted nothing
    r = runner.invoke(cli_app, [*base, "user", "unthrottle", "--address", "10.1.1.2"])
    assert r.exit_code == 0 and "10.1.1.2: 0 counted" in r.output  # another address: nothing
    r = runner.invoke(cli_app, [*base, "user", "unthrottle", "--address", "10.1.1.1"])
    assert r.exit_code == 0 and "10.1.1.1: 5 counted" in r.output, r.output  # a 429 is not one
    assert login(ward, "ann1").status_code == 429  # ann1's own budget from there still holds
    assert login(ward, "ann2").status_code == 303
    r = runner.invoke(
        cli_app, [*base, "user", "unthrottle", "--address", "10.1.1.1", "--username", "ANN1"]
    )
    assert r.exit_code == 0 and "10.1.1.1 / ANN1: 3 counted" in r.output
    assert login(TestClient(app, client=("10.1.1.1", 1)), "ann1").status_code == 303
    for _ in range(3):
        login(TestClient(app, client=("10.9.9.9", 1)), "ann1", "guess guess")
    r = runner.invoke(cli_app, [*base, "user", "unthrottle", "--all"])
    # 3 pair + 3 address failures from 10.9.9.9, and the 2 guesses at "nobody" left above
    assert r.exit_code == 0 and "every address: 8 counted" in r.output, r.output
    assert login(TestClient(app, client=("10.9.9.9", 1)), "ann1").status_code == 303


def test_throttle_caps_one_address_trying_many_usernames(db):
    limiter = LoginRateLimiter(db, max_failures=3, window_s=900, ip_max_failures=5)
    for i in range(5):
        keys = limiter.login_keys("10.0.0.1", f"user{i}")
        assert limiter.begin(keys) == 0
        limiter.finish(keys, failed=True)
    assert limiter.begin(limiter.login_keys("10.0.0.1", "user9")) > 0
    assert limiter.begin(limiter.login_keys("10.0.0.2", "user9")) == 0


def test_throttle_is_one_budget_for_every_worker_process(db):
    """Two workers (two engines on one database, as `serve --workers 2` has): failures on
    either count for both. Before, the budget lived in each process's memory, so N workers
    gave an attacker N budgets."""
    second = Database(db.url)
    try:
        workers = [LoginRateLimiter(db, max_failures=4), LoginRateLimiter(second, max_failures=4)]
        keys = workers[0].login_keys("203.0.113.9", "Ann1")
        for turn in range(4):
            worker = workers[turn % 2]
            assert worker.begin(keys) == 0
            worker.finish(keys, failed=True)
        assert workers[0].begin(keys) > 0 and workers[1].begin(keys) > 0
        # The username is matched case-blind, and another address is not locked out.
        assert workers[1].begin(workers[1].login_keys("203.0.113.9", "ANN1")) > 0
        assert workers[1].begin(workers[1].login_keys("198.51.100.2", "ann1")) == 0
    finally:
        second.dispose()


def test_throttle_reserves_atomically_across_workers(db):
    """40 simultaneous guesses split over two workers against a budget of 10: exactly 10 are
    let through (on PostgreSQL the keys' advisory locks order them)."""
    second = Database(db.url)
    try:
        workers = [LoginRateLimiter(db, max_failures=10), LoginRateLimiter(second, max_failures=10)]
        keys = workers[0].login_keys("203.0.113.10", "ann1")
        start = threading.Barrier(40)

        def guess(i: int) -> int:
            start.wait(10)
            return workers[i % 2].begin(keys)

        with ThreadPoolExecutor(max_workers=40) as pool:
            waits = list(pool.map(guess, range(40)))
        assert waits.count(0) == 10 and all(w > 0 for w in waits if w)
    finally:
        second.dispose()


def test_throttle_window_expiry_stale_attempts_and_no_names_stored(db):
    from cxrlabel.storage.models import LoginAttempt
    from cxrlabel.web.throttle import PENDING_TTL_S

    limiter = LoginRateLimiter(db, max_failures=2, window_s=600)
    keys = limiter.login_keys("192.0.2.77", "secret-username")
    t0 = 1_800_000_000.0
    for i in range(2):
        assert limiter.begin(keys, now=t0 + i) == 0
        limiter.finish(keys, failed=True, now=t0 + i)
    wait = limiter.begin(keys, now=t0 + 10)
    assert 590 <= wait <= 592  # until the first failure leaves the window
    assert limiter.begin(keys, now=t0 + 602) == 0  # one failure has left the window
    # That attempt's worker died before finishing: after the TTL it no longer counts.
    later = t0 + 602 + PENDING_TTL_S + 1
    assert limiter.begin(keys, now=later) == 0
    limiter.finish(keys, failed=False, now=later)  # a success clears the address+username
    assert limiter.retry_after(keys, now=later) == 0
    with db.read_session() as s:
        stored = s.scalars(select(LoginAttempt.key_sha256)).all()
    assert stored and all(len(k) == 64 for k in stored)
    assert not any("192.0.2.77" in k or "secret" in k for k in stored)


# --- argon2 pool ---------------------------------------------------------------------------------


def test_password_pool_caps_hashing_and_leaves_request_threads_free():
    """With every hashing slot busy and more checks queued, the request thread pool (FastAPI's
    sync routes) has all its threads free; beyond the queue cap a check is refused at once."""
    pool = PasswordPool(workers=2, max_waiting=3)
    release, running, peak = threading.Event(), [0], [0]
    lock = threading.Lock()

    def slow_hash() -> bool:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        release.wait(10)
        with lock:
            running[0] -= 1
        return True

    async def main() -> tuple[int, bool, list[bool]]:
        async with anyio.create_task_group() as tg:
            results: list[bool] = []

            async def one() -> None:
                results.append(await pool.run(slow_hash))

            for _ in range(5):
                tg.start_soon(one)
            while pool._pending < 5:
                await anyio.sleep(0.01)
            borrowed = anyio.to_thread.current_default_thread_limiter().borrowed_tokens
            try:
                await pool.run(slow_hash)
                refused = False
            except PasswordPoolBusy:
                refused = True
            release.set()
        return borrowed, refused, results

    borrowed, refused, results = anyio.run(main)
    assert borrowed == 0 and refused and results == [True] * 5 and peak[0] == 2


@pytest.mark.parametrize("second", ["nora", "Nora"], ids=["same", "case"])
def test_an_account_created_while_another_is_uncommitted_sees_it(db, second):
    """Creation A has checked "nora" is free and inserted it but not committed; creation B of
    the same name (or the same up to case) runs meanwhile. B must be refused as taken once A
    commits. Before the account lock, on PostgreSQL, B found the name free: "Nora" became a
    second account beside "nora", and an identical name failed on the unique index (500)."""
    from cxrlabel.annotate.accounts import create_user

    password = "plum orbit sailing 42"
    first = db.sessionmaker()
    first.begin()
    create_user(first, "nora", password, "annotator", password_hash="x")  # not committed yet
    outcome: dict[str, object] = {}

    def second_creation() -> None:
        try:
            with db.session() as s:
                outcome["user"] = create_user(s, second, password, "annotator", password_hash="y")
        except Exception as exc:  # the test reports what it was
            outcome["error"] = exc

    worker = threading.Thread(target=second_creation)
    worker.start()
    worker.join(1.0)  # it waits for the first creation (the account lock / SQLite's writer)
    assert worker.is_alive(), outcome
    first.commit()
    first.close()
    worker.join(30)
    error = outcome.get("error")
    assert isinstance(error, AccountError) and error.code == "username_taken", outcome
    with db.read_session() as s:
        from cxrlabel.storage.models import User

        assert len(s.scalars(select(User).where(User.username.ilike("nora"))).all()) == 1
