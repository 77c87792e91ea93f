"""Where things live: one place that resolves the data dir, database URL and shared data."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DATA_DIR = "./cxrlabel-data"
DEFAULT_JOB = "pneumonia-pediatric"


def shared_data_dir() -> Path:
    """The read-only shared data (env ``CXRLABEL_SHARED_DATA``, default ``../shared/data``)."""
    return Path(os.environ.get("CXRLABEL_SHARED_DATA", "../shared/data")).resolve()


def bundled_jobs_dir() -> Path:
    """Job files shipped inside the package (copies of the repo's ``jobs/``)."""
    return Path(__file__).parent / "jobs"


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    db_url: str | None = None
    # Sign-in sessions (annotate/sessions.py): a session ends after this long without a
    # request, and in any case this long after sign-in.
    session_idle_minutes: float = 8 * 60
    session_max_hours: float = 7 * 24
    # Sign-in with the hospital's OpenID Connect provider (web/oidc.py); None: off.
    oidc: OidcSettings | None = None

    @property
    def database_url(self) -> str:
        if self.db_url:
            return self.db_url
        return f"sqlite:///{(self.data_dir / 'cxrlabel.sqlite3').resolve()}"

    @property
    def renditions_dir(self) -> Path:
        return self.data_dir / "renditions"

    @property
    def exports_dir(self) -> Path:
        return self.data_dir / "exports"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def from_env(cls, data_dir: str | Path | None = None, db_url: str | None = None) -> Settings:
        data = Path(data_dir or os.environ.get("CXRLABEL_DATA_DIR", DEFAULT_DATA_DIR))
        return cls(
            data_dir=data,
            db_url=db_url or os.environ.get("CXRLABEL_DB") or None,
            session_idle_minutes=_env_float("CXRLABEL_SESSION_IDLE_MINUTES", 8 * 60),
            session_max_hours=_env_float("CXRLABEL_SESSION_MAX_HOURS", 7 * 24),
            oidc=OidcSettings.from_env(),
        )


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of minutes/hours, not {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be a positive number, not {raw!r}")
    return value


OIDC_CALLBACK_PATH = "/auth/oidc/callback"
OIDC_PROVISION_MODES = ("auto", "existing")


@dataclass(frozen=True)
class OidcSettings:
    """OpenID Connect sign-in (authorization code + PKCE). ``roles`` maps a value of the
    ``role_claim`` claim (e.g. a group) to a cxrlabel role; a user with no mapped value is
    refused. ``provision``: ``auto`` creates unknown users, ``existing`` only signs in users an
    admin created (same username) or signed in before."""

    issuer: str
    client_id: str
    client_secret: str
    redirect_uri: str
    roles: dict[str, str] = field(default_factory=dict)
    role_claim: str = "groups"
    scopes: str = "openid email profile groups"
    username_claim: str = "preferred_username"
    provision: str = "auto"
    name: str = "the hospital's sign-in"
    # Sign-out also ends the provider's session (OpenID Connect RP-initiated logout) when the
    # provider offers an end-session endpoint: on a shared ward workstation the next person
    # must not be signed in as the last one by "Sign in with ...". The provider sends the
    # browser back to ``post_logout_redirect_uri`` (default: this site's /login; register it
    # with the provider).
    end_provider_session: bool = True
    post_logout_redirect_uri: str = ""

    def __post_init__(self) -> None:
        from urllib.parse import urlsplit

        from cxrlabel.vocab import Role

        if not self.issuer.startswith(("https://", "http://")):
            raise ValueError(f"CXRLABEL_OIDC_ISSUER must be an http(s) URL, not {self.issuer!r}")
        if urlsplit(self.redirect_uri).path != OIDC_CALLBACK_PATH:
            raise ValueError(
                "CXRLABEL_OIDC_REDIRECT_URI must end in "
                f"{OIDC_CALLBACK_PATH}, not {self.redirect_uri!r}"
            )
        if not self.post_logout_redirect_uri:
            parts = urlsplit(self.redirect_uri)
            object.__setattr__(  # frozen: the derived default is set once, here
                self, "post_logout_redirect_uri", f"{parts.scheme}://{parts.netloc}/login"
            )
        elif not self.post_logout_redirect_uri.startswith(("https://", "http://")):
            raise ValueError(
                "CXRLABEL_OIDC_POST_LOGOUT_REDIRECT_URI must be an http(s) URL, "
                f"not {self.post_logout_redirect_uri!r}"
            )
        if self.provision not in OIDC_PROVISION_MODES:
            raise ValueError(
                f"CXRLABEL_OIDC_PROVISION must be one of {OIDC_PROVISION_MODES}, "
                f"not {self.provision!r}"
            )
        if "openid" not in self.scopes.split():
            raise ValueError("CXRLABEL_OIDC_SCOPES must include 'openid'")
        bad = {v for v in self.roles.values() if v not in Role.ALL}
        if bad or not self.roles:
            raise ValueError(
                "CXRLABEL_OIDC_ROLES must map claim values to roles "
                f"{Role.ALL}, like 'radiology=expert,crowd=annotator'"
            )

    @classmethod
    def from_env(cls) -> OidcSettings | None:
        """From ``CXRLABEL_OIDC_*``; None when ``CXRLABEL_OIDC_ISSUER`` is unset."""
        issuer = os.environ.get("CXRLABEL_OIDC_ISSUER", "").strip()
        if not issuer:
            return None
        missing = [
            n
            for n in ("CLIENT_ID", "CLIENT_SECRET", "REDIRECT_URI", "ROLES")
            if not os.environ.get(f"CXRLABEL_OIDC_{n}", "").strip()
        ]
        if missing:
            names = ", ".join(f"CXRLABEL_OIDC_{n}" for n in missing)
            raise ValueError(f"CXRLABEL_OIDC_ISSUER is set, so {names} must be set too")
        optional = {
            key: os.environ[f"CXRLABEL_OIDC_{key.upper()}"].strip()
            for key in (
                "role_claim",
                "scopes",
                "username_claim",
                "provision",
                "name",
                "post_logout_redirect_uri",
            )
            if os.environ.get(f"CXRLABEL_OIDC_{key.upper()}", "").strip()
        }
        end_provider = os.environ.get("CXRLABEL_OIDC_END_PROVIDER_SESSION", "true").strip()
        if end_provider.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(
                f"CXRLABEL_OIDC_END_PROVIDER_SESSION must be true or false, not {end_provider!r}"
            )
        return cls(
            issuer=issuer,
            client_id=os.environ["CXRLABEL_OIDC_CLIENT_ID"].strip(),
            client_secret=os.environ["CXRLABEL_OIDC_CLIENT_SECRET"].strip(),
            redirect_uri=os.environ["CXRLABEL_OIDC_REDIRECT_URI"].strip(),
            roles=parse_role_map(os.environ["CXRLABEL_OIDC_ROLES"]),
            end_provider_session=end_provider.lower() in ("true", "1", "yes"),
            **optional,
        )


def parse_role_map(text: str) -> dict[str, str]:
    """``"radiology=expert, crowd=annotator"`` -> ``{"radiology": "expert", ...}``."""
    mapping: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        value, sep, role = part.rpartition("=")
        if not sep or not value.strip() or not role.strip():
            raise ValueError(f"CXRLABEL_OIDC_ROLES: {part!r} is not 'claim value=role'")
        mapping[value.strip()] = role.strip()
    return mapping
