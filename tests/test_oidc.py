"""Sign-in with the hospital's OpenID Connect provider (issue 18), against a real provider: npm
``oidc-provider`` v9 started by the test on a loopback port (tests/oidc_support.py), and the
app served by uvicorn on another. Covers the full flow (httpx and real Chromium), role mapping
from the ``groups`` claim, auto-provisioning and "must exist" mode, and the refusals: wrong
state, injected code (PKCE), tampered / foreign / expired ID token, wrong nonce or audience,
unmapped groups, disabled account; sign-out and disabling end the session."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from cxrlabel.annotate.accounts import set_active
from cxrlabel.annotate.identities import (
    NO_PASSWORD,
    SignInRefused,
    role_from_claims,
    sign_in_identity,
)
from cxrlabel.cli import app as cli_app
from cxrlabel.config import OidcSettings, Settings, parse_role_map
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import User, UserIdentity, UserSession
from cxrlabel.web.app import create_app
from cxrlabel.web.oidc import Flow, OidcClient, OidcError
from live_server import LiveServer
from oidc_support import CLIENT_ID, CLIENT_SECRET, free_port, running_provider
from web_support import PASSWORD, add_user, csrf_from_html

ROLES = {"crowd": "annotator", "radiology": "expert", "cxr-admins": "admin"}
PROVIDER_NAME = "Hospital SSO"


@dataclass
class Site:
    url: str
    app: object
    db: Database
    settings: OidcSettings
    groups_file: Path

    def set_groups(self, login: str, *groups: str) -> None:
        """What the provider says ``login``'s groups are from now on."""
        current = json.loads(self.groups_file.read_text())
        self.groups_file.write_text(json.dumps({**current, login: list(groups)}))

    def set_oidc(self, **changes: object) -> None:
        self.app.state.oidc = OidcClient(replace(self.settings, **changes))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    """The app on a free port, signing in through a real provider started for it."""
    data_dir = tmp_path_factory.mktemp("oidc-site")
    port = free_port()
    redirect_uri = f"http://127.0.0.1:{port}/auth/oidc/callback"
    groups_file = data_dir / "groups.json"
    with running_provider(redirect_uri, groups_file) as issuer:
        oidc = OidcSettings(
            issuer=issuer,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            redirect_uri=redirect_uri,
            roles=ROLES,
            name=PROVIDER_NAME,
        )
        db_url = f"sqlite:///{data_dir / 'oidc.sqlite3'}"
        db = Database(db_url)
        app = create_app(Settings(data_dir=data_dir, db_url=db_url, oidc=oidc), db=db)
        with LiveServer(app, port) as base_url:
            yield Site(base_url, app, db, oidc, groups_file)
        db.dispose()


@pytest.fixture(autouse=True)
def default_oidc(request: pytest.FixtureRequest):
    """Each test starts from the module's settings (some switch the provisioning mode)."""
    yield
    if "site" in request.fixturenames:
        site = request.getfixturevalue("site")
        site.app.state.oidc = OidcClient(site.settings)


# --- driving the provider's development login pages -----------------------------------------


def _form_action(response: httpx.Response) -> str:
    action = re.search(r'<form[^>]*action="([^"]+)"', response.text).group(1)
    return urljoin(str(response.url), action.replace("&amp;", "&"))


def walk(
    client: httpx.Client, response: httpx.Response, login: str, stop_at: str | None = None
) -> httpx.Response:
    """Follow redirects and fill the provider's login (any password) and consent forms until
    a page outside them; with ``stop_at``, stop at the redirect to that URL prefix instead
    (the response whose ``Location`` is the callback, not followed)."""
    for _ in range(20):
        if response.is_redirect:
            location = urljoin(str(response.url), response.headers["location"])
            if stop_at and location.startswith(stop_at):
                return response
            response = client.get(location)
        elif 'name="login"' in response.text:
            response = client.post(
                _form_action(response),
                data={"prompt": "login", "login": login, "password": "any password"},
            )
        elif 'name="prompt" value="consent"' in response.text:
            response = client.post(_form_action(response), data={"prompt": "consent"})
        else:
            return response
    raise AssertionError("too many steps at the provider")


def oidc_sign_in(
    site: Site, login: str, *groups: str, client: httpx.Client | None = None
) -> tuple[httpx.Client, httpx.Response]:
    """Click "Sign in with ..." on the login page and go through the provider as ``login``
    (whom the provider puts in ``groups``)."""
    site.set_groups(login, *groups)
    client = client or httpx.Client(follow_redirects=False, timeout=30)
    page = client.get(f"{site.url}/login?next=/account")
    link = re.search(r'href="(/auth/oidc/login[^"]*)"', page.text).group(1)
    response = walk(client, client.get(site.url + link.replace("&amp;", "&")), login)
    return client, response


def session_rows(site: Site, username: str) -> int:
    with site.db.read_session() as s:
        user = s.scalar(select(User).where(User.username == username))
        return len(s.scalars(select(UserSession).where(UserSession.user_id == user.id)).all())


def replay_status(site: Site, cookie: str) -> int:
    """What a fresh client carrying only ``cookie`` gets from a signed-in page."""
    with httpx.Client(follow_redirects=False) as other:
        other.cookies.set("cxrlabel_session", cookie)
        return other.get(f"{site.url}/account").status_code


def offline_settings() -> OidcSettings:
    """Settings for tests that call the provisioning code without a provider."""
    return OidcSettings(
        issuer="https://login.hospital.example",
        client_id="c",
        client_secret="s",
        redirect_uri="https://x.example/auth/oidc/callback",
        roles=ROLES,
    )


# --- settings and role mapping (no provider needed) ---------------------------------------------


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("CXRLABEL_OIDC_ISSUER", "https://login.hospital.example")
    monkeypatch.setenv("CXRLABEL_OIDC_CLIENT_ID", "cxrlabel")
    monkeypatch.setenv("CXRLABEL_OIDC_CLIENT_SECRET", "s3cret")
    monkeypatch.setenv(
        "CXRLABEL_OIDC_REDIRECT_URI", "https://label.hospital.example/auth/oidc/callback"
    )
    monkeypatch.setenv("CXRLABEL_OIDC_ROLES", "Radiology=expert, crowd=annotator")
    monkeypatch.setenv("CXRLABEL_OIDC_PROVISION", "existing")
    monkeypatch.setenv("CXRLABEL_OIDC_NAME", "St. Elsewhere login")
    oidc = Settings.from_env(tmp_path).oidc
    assert oidc.roles == {"Radiology": "expert", "crowd": "annotator"}
    assert (oidc.provision, oidc.name, oidc.role_claim) == (
        "existing",
        "St. Elsewhere login",
        "groups",
    )
    monkeypatch.setenv("CXRLABEL_OIDC_ROLES", "crowd=superuser")
    with pytest.raises(ValueError, match="CXRLABEL_OIDC_ROLES"):
        Settings.from_env(tmp_path)
    monkeypatch.setenv("CXRLABEL_OIDC_ROLES", "crowd=annotator")
    monkeypatch.setenv("CXRLABEL_OIDC_REDIRECT_URI", "https://label.hospital.example/cb")
    with pytest.raises(ValueError, match="/auth/oidc/callback"):
        Settings.from_env(tmp_path)
    monkeypatch.delenv("CXRLABEL_OIDC_CLIENT_SECRET")
    with pytest.raises(ValueError, match="CXRLABEL_OIDC_CLIENT_SECRET"):
        Settings.from_env(tmp_path)
    monkeypatch.delenv("CXRLABEL_OIDC_ISSUER")
    assert Settings.from_env(tmp_path).oidc is None
    with pytest.raises(ValueError, match="not 'claim value=role'"):
        parse_role_map("crowd")


def test_cli_reports_a_bad_oidc_setting_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.setenv("CXRLABEL_OIDC_ISSUER", "https://login.hospital.example")
    result = CliRunner().invoke(cli_app, ["--data-dir", str(tmp_path), "serve"])
    assert result.exit_code == 2
    assert "CXRLABEL_OIDC_CLIENT_ID" in result.output and "Traceback" not in result.output


def test_role_from_claims_takes_the_highest_mapped_value():
    assert role_from_claims({"groups": ["crowd", "radiology", "x"]}, "groups", ROLES) == "expert"
    assert role_from_claims({"groups": "cxr-admins"}, "groups", ROLES) == "admin"
    assert role_from_claims({"groups": ["visitors"]}, "groups", ROLES) is None
    assert role_from_claims({"groups": {"crowd": 1}}, "groups", ROLES) is None
    assert role_from_claims({}, "groups", ROLES) is None


def test_not_configured_no_button_and_404(tmp_path: Path):
    db_url = f"sqlite:///{tmp_path / 'plain.sqlite3'}"
    db = Database(db_url)
    try:
        client = TestClient(create_app(Settings(data_dir=tmp_path, db_url=db_url), db=db))
        assert "Sign in with" not in client.get("/login").text
        assert client.get("/auth/oidc/login", follow_redirects=False).status_code == 404
    finally:
        db.dispose()


def test_session_keeps_the_id_token_for_sign_out_on_each_database(db: Database):
    """The new column (migration 0011) on SQLite and PostgreSQL: an OpenID Connect session
    hands its ID token back when it ends, a password session none, an unknown token none."""
    from cxrlabel.annotate.sessions import end_session, start_session
    from cxrlabel.storage.models import utcnow

    user_id = add_user(db, "rosa", "annotator")
    token_like = "eyJhbGciOiJSUzI1NiJ9." + "x" * 1500  # real ID tokens run to kilobytes
    with db.session() as s:
        via_provider = start_session(s, user_id, utcnow(), token_like)
        via_password = start_session(s, user_id, utcnow())
    with db.session() as s:
        assert end_session(s, via_provider) == token_like
        assert end_session(s, via_password) is None
        assert end_session(s, via_provider) is None  # already ended: a replayed sign-out
        assert end_session(s, "no such token") is None
    with db.read_session() as s:
        assert s.scalars(select(UserSession).where(UserSession.user_id == user_id)).all() == []


def test_a_first_sign_in_in_two_tabs_binds_one_account_on_each_database(db: Database):
    """The same provider account's first sign-in, twice at once (two tabs): the second waits
    for the first's account creation and signs in to that account. Before the account lock,
    on PostgreSQL, it also found no binding and failed on the unique (issuer, subject)."""
    import threading

    oidc = offline_settings()
    claims = {"sub": "tab-sub", "preferred_username": "tabby", "groups": ["crowd"]}
    first = db.sessionmaker()
    first.begin()
    made = sign_in_identity(first, oidc, claims)  # created and bound, not committed yet
    outcome: dict[str, object] = {}

    def second_tab() -> None:
        try:
            with db.session() as s:
                outcome["user_id"] = sign_in_identity(s, oidc, claims).id
        except Exception as exc:  # the test reports what it was
            outcome["error"] = exc

    worker = threading.Thread(target=second_tab)
    worker.start()
    worker.join(1.0)
    assert worker.is_alive(), outcome  # waiting for the first creation
    first.commit()
    made_id = made.id
    first.close()
    worker.join(30)
    assert outcome == {"user_id": made_id}
    with db.read_session() as s:
        assert (
            len(s.scalars(select(UserIdentity).where(UserIdentity.subject == "tab-sub")).all()) == 1
        )
        assert len(s.scalars(select(User).where(User.username.like("tabby%"))).all()) == 1


def test_post_logout_redirect_defaults_to_the_sites_login_page():
    base = {
        "issuer": "https://login.hospital.example",
        "client_id": "c",
        "client_secret": "s",
        "redirect_uri": "https://cxr.hospital.example/auth/oidc/callback",
        "roles": ROLES,
    }
    assert OidcSettings(**base).post_logout_redirect_uri == "https://cxr.hospital.example/login"
    assert OidcSettings(**base).end_provider_session is True
    custom = OidcSettings(**base, post_logout_redirect_uri="https://cxr.hospital.example/bye")
    assert custom.post_logout_redirect_uri == "https://cxr.hospital.example/bye"
    with pytest.raises(ValueError, match="POST_LOGOUT_REDIRECT_URI"):
        OidcSettings(**base, post_logout_redirect_uri="/login")


def test_end_provider_session_setting_from_env(monkeypatch: pytest.MonkeyPatch):
    for key, value in {
        "ISSUER": "https://login.hospital.example",
        "CLIENT_ID": "cxrlabel",
        "CLIENT_SECRET": "s3cret",
        "REDIRECT_URI": "https://cxr.hospital.example/auth/oidc/callback",
        "ROLES": "crowd=annotator",
    }.items():
        monkeypatch.setenv(f"CXRLABEL_OIDC_{key}", value)
    assert OidcSettings.from_env().end_provider_session is True
    monkeypatch.setenv("CXRLABEL_OIDC_END_PROVIDER_SESSION", "false")
    monkeypatch.setenv("CXRLABEL_OIDC_POST_LOGOUT_REDIRECT_URI", "https://cxr.hospital.example/")
    settings = OidcSettings.from_env()
    assert settings.end_provider_session is False
    assert settings.post_logout_redirect_uri == "https://cxr.hospital.example/"
    monkeypatch.setenv("CXRLABEL_OIDC_END_PROVIDER_SESSION", "sometimes")
    with pytest.raises(ValueError, match="true or false"):
        OidcSettings.from_env()


def test_sign_in_identity_on_each_database(db: Database):
    """Provisioning and refusals against SQLite and PostgreSQL (the new table and its unique
    issuer + subject), without a provider: the claims are what a verified ID token gives."""
    oidc = offline_settings()
    with db.session() as s:
        user = sign_in_identity(
            s, oidc, {"sub": "u-1", "preferred_username": "olga", "groups": ["crowd"]}
        )
        assert (user.username, user.role, user.password_hash) == ("olga", "annotator", NO_PASSWORD)
        again = sign_in_identity(
            s, oidc, {"sub": "u-1", "preferred_username": "renamed", "groups": ["cxr-admins"]}
        )
        assert (again.id, again.role) == (user.id, "admin")
        with pytest.raises(SignInRefused, match="not in a group"):
            sign_in_identity(s, oidc, {"sub": "u-2", "groups": ["visitors"]})
        odd = sign_in_identity(
            s, oidc, {"sub": "u-3", "preferred_username": "p@q r", "groups": ["crowd"]}
        )
        assert odd.username == "p_q_r"
        with pytest.raises(SignInRefused, match="unusable account id"):
            sign_in_identity(s, oidc, {"sub": "x" * 256, "groups": ["crowd"]})
    existing = replace(oidc, provision="existing")
    with db.session() as s, pytest.raises(SignInRefused, match="no cxrlabel account"):
        sign_in_identity(
            s, existing, {"sub": "u-4", "preferred_username": "pat", "groups": ["crowd"]}
        )
    with db.read_session() as s:
        assert s.scalar(select(User).where(User.username == "pat")) is None


# --- the full flow over HTTP ------------------------------------------------------------------


def test_full_flow_signs_in_with_mapped_role_and_logout_ends_session(site: Site):
    client, page = oidc_sign_in(site, "alice", "crowd")
    assert page.status_code == 200, (page.url, page.text[:3000])
    assert str(page.url) == f"{site.url}/account"
    assert "alice" in page.text
    assert f"You sign in through {PROVIDER_NAME}" in page.text
    assert "Change your password" not in page.text  # a provisioned account has no password
    assert "cxrlabel_oidc" not in client.cookies  # the flow cookie is single-use
    with site.db.read_session() as s:
        alice = s.scalar(select(User).where(User.username == "alice"))
        identity = s.scalar(select(UserIdentity).where(UserIdentity.user_id == alice.id))
    assert alice.role == "annotator" and alice.active
    assert (identity.issuer, identity.subject) == (site.settings.issuer, "alice")
    assert session_rows(site, "alice") == 1
    cookie = client.cookies["cxrlabel_session"]
    assert replay_status(site, cookie) == 200

    csrf = csrf_from_html(page.text)
    signed_out = client.post(f"{site.url}/logout", data={"csrf_token": csrf})
    assert signed_out.status_code == 200  # the page that passes on to the provider's sign-out
    assert session_rows(site, "alice") == 0
    assert replay_status(site, cookie) == 303  # to /login: the replayed cookie signs nobody in


def provider_logout_link(page: httpx.Response) -> str:
    """The provider end-session URL that the sign-out page refreshes to (and links)."""
    refresh = re.search(r'http-equiv="refresh" content="0; url=([^"]+)"', page.text).group(1)
    link = re.search(r'class="button primary" href="([^"]+)"', page.text).group(1)
    assert refresh == link
    return link.replace("&amp;", "&")


def confirm_provider_logout(client: httpx.Client, url: str) -> httpx.Response:
    """Open the provider's end-session URL and answer "Yes, sign me out"; returns the
    provider's redirect back (not followed)."""
    confirm = client.get(url)
    assert confirm.status_code == 200 and 'name="logout"' in confirm.text, confirm.text[:2000]
    xsrf = re.search(r'name="xsrf" value="([^"]+)"', confirm.text).group(1)
    return client.post(_form_action(confirm), data={"xsrf": xsrf, "logout": "yes"})


def provider_asks_who_it_is(site: Site, client: httpx.Client) -> bool:
    """Start "Sign in with ..." in ``client``'s browser: does the provider show its login form
    (True), or send the browser straight back to the callback as someone (False)?"""
    response = client.get(f"{site.url}/auth/oidc/login?next=/account")
    for _ in range(10):
        if not response.is_redirect:
            return 'name="login"' in response.text
        location = urljoin(str(response.url), response.headers["location"])
        if location.startswith(f"{site.url}/auth/oidc/callback"):
            return False
        response = client.get(location)
    raise AssertionError("too many steps at the provider")


def test_sign_out_ends_the_provider_session_too(site: Site):
    """A shared ward workstation: after sign-out, the next "Sign in with ..." must ask who is
    there, not sign the last person straight back in."""
    client, page = oidc_sign_in(site, "nina", "crowd")
    assert str(page.url) == f"{site.url}/account"
    assert provider_asks_who_it_is(site, httpx.Client(follow_redirects=False))  # another browser
    assert not provider_asks_who_it_is(site, client)  # this one: the provider knows nina
    signed_out = client.post(f"{site.url}/logout", data={"csrf_token": csrf_from_html(page.text)})
    assert signed_out.status_code == 200
    assert "Signed out of cxrlabel" in signed_out.text
    assert f"Sign out of {PROVIDER_NAME}" in signed_out.text
    url = provider_logout_link(signed_out)
    query = parse_qs(urlsplit(url).query)
    assert url.startswith(site.app.state.oidc.metadata()["end_session_endpoint"])
    assert query["post_logout_redirect_uri"] == [f"{site.url}/login"]
    assert query["client_id"] == [CLIENT_ID]
    # The hint is the ID token this sign-in received.
    hint = jwt.decode(query["id_token_hint"][0], options={"verify_signature": False})
    assert hint["sub"] == "nina" and hint["aud"] == CLIENT_ID
    assert session_rows(site, "nina") == 0  # ours ended before the provider is asked
    back = confirm_provider_logout(client, url)
    assert back.is_redirect and back.headers["location"] == f"{site.url}/login"
    assert provider_asks_who_it_is(site, client)


def test_without_provider_sign_out_the_next_person_is_signed_in_as_the_last(site: Site):
    """What the provider sign-out prevents (and the switch to turn it off, for hospitals that
    want the provider's single sign-on to outlive one application)."""
    site.set_oidc(end_provider_session=False)
    client, page = oidc_sign_in(site, "olga", "crowd")
    signed_out = client.post(f"{site.url}/logout", data={"csrf_token": csrf_from_html(page.text)})
    assert signed_out.status_code == 303 and signed_out.headers["location"] == "/login"
    assert session_rows(site, "olga") == 0
    assert not provider_asks_who_it_is(site, client)


def test_sign_out_when_the_provider_is_down_still_ends_our_session(site: Site):
    client, page = oidc_sign_in(site, "pia", "crowd")
    cookie = client.cookies["cxrlabel_session"]
    site.set_oidc(issuer=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    signed_out = client.post(f"{site.url}/logout", data={"csrf_token": csrf_from_html(page.text)})
    assert signed_out.status_code == 303 and signed_out.headers["location"] == "/login"
    assert session_rows(site, "pia") == 0
    assert replay_status(site, cookie) == 303


def test_password_sessions_sign_out_here_only(site: Site):
    add_user(site.db, "quinn", "annotator")
    with httpx.Client(follow_redirects=False) as client:
        login = client.get(f"{site.url}/login")
        signed_in = client.post(
            f"{site.url}/login",
            data={
                "username": "quinn",
                "password": PASSWORD,
                "csrf_token": csrf_from_html(login.text),
            },
        )
        assert signed_in.status_code == 303, signed_in.text[:500]
        account = client.get(f"{site.url}/account")
        signed_out = client.post(
            f"{site.url}/logout", data={"csrf_token": csrf_from_html(account.text)}
        )
    assert signed_out.status_code == 303 and signed_out.headers["location"] == "/login"
    assert session_rows(site, "quinn") == 0


def test_login_page_offers_the_provider(site: Site):
    page = httpx.get(f"{site.url}/login?next=/jobs/x")
    assert f"Sign in with {PROVIDER_NAME}" in page.text
    assert 'href="/auth/oidc/login?next=/jobs/x"' in page.text


def test_role_follows_the_groups_at_each_sign_in(site: Site):
    oidc_sign_in(site, "carol", "crowd", "radiology")
    with site.db.read_session() as s:
        assert s.scalar(select(User.role).where(User.username == "carol")) == "expert"
    oidc_sign_in(site, "carol", "crowd")  # removed from radiology at the provider
    with site.db.read_session() as s:
        assert s.scalar(select(User.role).where(User.username == "carol")) == "annotator"
        assert len(s.scalars(select(User).where(User.username.like("carol%"))).all()) == 1


def test_unmapped_groups_are_refused_with_a_clear_page(site: Site):
    client, page = oidc_sign_in(site, "dave", "visitors")
    assert page.status_code == 403
    assert "not in a group that may use cxrlabel" in page.text
    assert (
        "cxrlabel_session" not in client.cookies
        or replay_status(site, client.cookies["cxrlabel_session"]) == 303
    )
    with site.db.read_session() as s:
        assert s.scalar(select(User).where(User.username == "dave")) is None


def test_existing_mode_links_admin_created_user_and_refuses_unknown(site: Site):
    site.set_oidc(provision="existing")
    _, page = oidc_sign_in(site, "frank", "crowd")
    assert page.status_code == 403 and "no cxrlabel account for you" in page.text
    erin_id = add_user(site.db, "erin", role="annotator")
    _, page = oidc_sign_in(site, "erin", "radiology")
    assert page.status_code == 200 and str(page.url).endswith("/account")
    with site.db.read_session() as s:
        erin = s.get(User, erin_id)
        assert erin.role == "expert"
        assert (
            s.scalar(select(UserIdentity.subject).where(UserIdentity.user_id == erin_id)) == "erin"
        )
        assert s.scalar(select(User).where(User.username == "frank")) is None


def test_auto_mode_never_takes_over_a_linked_username(site: Site):
    """A second provider account claiming the same preferred_username gets its own user."""
    oidc_sign_in(site, "gina", "crowd")
    with site.db.session() as s:  # pretend gina's provider account was renamed
        s.execute(
            UserIdentity.__table__.update()
            .where(UserIdentity.subject == "gina")
            .values(subject="gina-old")
        )
    oidc_sign_in(site, "gina", "crowd")
    with site.db.read_session() as s:
        names = sorted(s.scalars(select(User.username).where(User.username.like("gina%"))))
    assert len(names) == 2 and names[0] == "gina" and names[1].startswith("gina-")


def test_disabling_ends_the_session_and_refuses_sign_in(site: Site):
    client, page = oidc_sign_in(site, "hank", "crowd")
    cookie = client.cookies["cxrlabel_session"]
    with site.db.session() as s:
        set_active(s, s.scalar(select(User).where(User.username == "hank")), False)
    assert replay_status(site, cookie) == 303
    _, page = oidc_sign_in(site, "hank", "crowd")
    assert page.status_code == 403 and "disabled" in page.text


# --- refusals: state, injected code ---------------------------------------------------------------


def _to_callback(site: Site, login: str, *groups: str) -> tuple[httpx.Client, str]:
    """Go through the provider and stop at the redirect to the callback: (client, its URL)."""
    site.set_groups(login, *groups)
    client = httpx.Client(follow_redirects=False, timeout=30)
    start = client.get(f"{site.url}/auth/oidc/login?next=/account")
    last = walk(client, start, login, stop_at=site.settings.redirect_uri)
    return client, urljoin(str(last.url), last.headers["location"])


def _with_query(url: str, **params: str) -> str:
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()} | params
    return f"{site_base(url)}/auth/oidc/callback?" + "&".join(f"{k}={v}" for k, v in query.items())


def site_base(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def test_wrong_state_is_refused(site: Site):
    client, callback = _to_callback(site, "ivan", "crowd")
    page = client.get(_with_query(callback, state="forged-state"))
    assert page.status_code == 400 and "does not belong to this browser" in page.text
    assert client.get(f"{site.url}/account").status_code == 303  # not signed in
    # The flow is over: even the right state no longer works from this browser.
    assert client.get(callback).status_code == 400
    # A callback with no flow cookie at all (another browser) is refused too.
    assert httpx.get(callback).status_code == 400
    with site.db.read_session() as s:
        assert s.scalar(select(User).where(User.username == "ivan")) is None


def test_provider_refusal_is_shown_and_signs_nobody_in(site: Site):
    """The person pressed cancel at the provider: its error comes back with our state."""
    client, callback = _to_callback(site, "lena", "crowd")
    page = client.get(
        _with_query(callback, code="", error="access_denied", error_description="<b>cancelled</b>")
    )
    assert page.status_code == 403
    assert "did not sign you in: &lt;b&gt;cancelled&lt;/b&gt;" in page.text
    assert client.get(f"{site.url}/account").status_code == 303


def test_code_injected_into_another_browser_is_refused(site: Site):
    """An attacker's code, replayed into a victim's sign-in (even with the victim's state):
    the PKCE verifier of the victim's flow does not match, so the provider refuses it."""
    _, attacker_callback = _to_callback(site, "mallory", "cxr-admins")
    victim, victim_callback = _to_callback(site, "victor", "crowd")
    attacker_code = parse_qs(urlsplit(attacker_callback).query)["code"][0]
    page = victim.get(_with_query(victim_callback, code=attacker_code))
    assert page.status_code == 403 and "Sign-in failed" in page.text
    with site.db.read_session() as s:
        assert s.scalar(select(User).where(User.username == "mallory")) is None


# --- the ID token checks, on real tokens from the provider ---------------------------------


def _real_tokens(site: Site, login: str, *groups: str) -> tuple[OidcClient, Flow, dict]:
    """A flow run by the test itself: the provider's token response for it."""
    site.set_groups(login, *groups)
    client = OidcClient(site.settings)
    flow = Flow.start("/")
    browser = httpx.Client(follow_redirects=False, timeout=30)
    last = walk(
        browser,
        browser.get(client.authorization_url(flow)),
        login,
        stop_at=site.settings.redirect_uri,
    )
    code = parse_qs(urlsplit(last.headers["location"]).query)["code"][0]
    return client, flow, client._exchange(flow, code)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _with_payload(token: str, **changes: object) -> str:
    """The token with changed claims and its original signature (so: not genuine)."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return ".".join([header, _b64(json.dumps(claims | changes).encode()), signature])


def test_id_token_signature_issuer_audience_expiry_and_nonce(site: Site):
    client, flow, tokens = _real_tokens(site, "judy", "crowd")
    token = tokens["id_token"]
    claims = client.verify_id_token(token, flow.nonce)
    assert claims["sub"] == "judy" and claims["aud"] == CLIENT_ID

    def refused(id_token: str, nonce: str = flow.nonce, now: float | None = None) -> str:
        with pytest.raises(OidcError) as caught:
            client.verify_id_token(id_token, nonce, now=now)
        return caught.value.detail

    assert "Signature" in refused(_with_payload(token, sub="admin"))
    assert "nonce" in refused(token, nonce=Flow.start("/").nonce)
    assert "expired" in refused(token, now=claims["exp"] + 3600)
    assert "future" in refused(token, now=claims["iat"] - 3600)
    # Genuine signature, wrong audience: a token the provider issued to another client.
    other = OidcClient(replace(site.settings, client_id="another-app"))
    with pytest.raises(OidcError, match="(?i)audience"):
        other.verify_id_token(token, flow.nonce)
    # Signed by someone else's key, claiming the provider's kid; and alg "none".
    forged_claims = {**claims, "sub": "admin"}
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = jwt.get_unverified_header(token)["kid"]
    assert "Signature" in refused(jwt.encode(forged_claims, key, "RS256", headers={"kid": kid}))
    unsigned = jwt.encode(forged_claims, None, algorithm="none")
    assert "not allowed" in refused(unsigned)
    assert "not allowed" in refused(jwt.encode(forged_claims, CLIENT_SECRET, "HS256"))


# --- real Chromium --------------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.parametrize(
    "viewport",
    [{"width": 1366, "height": 900}, {"width": 390, "height": 844}],
    ids=["desktop", "phone"],
)
def test_chromium_sign_out_ends_the_provider_session(
    site: Site, browser, artifacts_dir: Path, viewport: dict
):
    """As a person at a shared workstation: sign in, press Sign out, confirm at the provider,
    and the next "Sign in with ..." asks for a login instead of signing them back in."""
    size = "desktop" if viewport["width"] > 800 else "phone"
    login = f"sam-{size}"
    site.set_groups(login, "crowd")
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    try:
        page.goto(f"{site.url}/login?next=/account")
        page.get_by_role("link", name=f"Sign in with {PROVIDER_NAME}").click()
        page.locator('input[name="login"]').fill(login)
        page.locator('input[name="password"]').fill("any password")
        page.get_by_role("button", name="Sign-in").click()
        page.get_by_role("button", name="Continue").click()
        page.wait_for_url(f"{site.url}/account")
        sign_out = page.get_by_role("button", name="Sign out")
        box = sign_out.bounding_box()
        assert sign_out.is_visible() and box["width"] > 20 and box["height"] > 10
        assert box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"]
        sign_out.click()
        confirm = page.get_by_role("button", name="Yes, sign me out")
        confirm.wait_for()
        page.screenshot(path=str(artifacts_dir / f"oidc_provider_sign_out_{size}.png"))
        assert session_rows(site, login) == 0
        confirm.click()
        page.wait_for_url(f"{site.url}/login")
        assert page.get_by_role("link", name=f"Sign in with {PROVIDER_NAME}").is_visible()
        page.get_by_role("link", name=f"Sign in with {PROVIDER_NAME}").click()
        who = page.locator('input[name="login"]')
        who.wait_for()
        assert who.is_visible() and who.bounding_box()["width"] > 100
        page.screenshot(path=str(artifacts_dir / f"oidc_asked_again_{size}.png"))
    finally:
        context.close()


@pytest.mark.browser
def test_chromium_signs_in_through_the_provider(site: Site, browser, artifacts_dir: Path):
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"{site.url}/login?next=/account")
        page.screenshot(path=str(artifacts_dir / "oidc_login_page_desktop.png"))
        page.get_by_role("link", name=f"Sign in with {PROVIDER_NAME}").click()
        site.set_groups("kate", "radiology")
        page.locator('input[name="login"]').fill("kate")
        page.locator('input[name="password"]').fill("any password")
        page.get_by_role("button", name="Sign-in").click()
        page.get_by_role("button", name="Continue").click()
        page.wait_for_url(f"{site.url}/account")
        assert "kate" in page.content()
        page.screenshot(path=str(artifacts_dir / "oidc_signed_in_desktop.png"), full_page=True)
        cookies = {c["name"]: c for c in context.cookies(site.url)}
        assert cookies["cxrlabel_session"]["httpOnly"]
        assert "cxrlabel_oidc" not in cookies
        with site.db.read_session() as s:
            assert s.scalar(select(User.role).where(User.username == "kate")) == "expert"
    finally:
        context.close()
