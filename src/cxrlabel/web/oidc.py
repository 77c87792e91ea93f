"""OpenID Connect relying party: authorization code flow with PKCE (S256), state and nonce.

``OidcClient`` reads the provider's discovery document and JWKS (cached; the JWKS is fetched
again once when an ID token names a key it does not know, so key rotation needs no restart),
builds the authorization URL, exchanges the code and verifies the ID token with PyJWT:
signature against the provider's keys (asymmetric algorithms only: never ``none`` or HMAC),
issuer, audience, expiry, issued-at, ``azp`` and the nonce. Claims the ID token lacks (e.g.
``groups`` from a provider that puts scope claims only in userinfo) are read from the userinfo
endpoint, whose ``sub`` must match.

Sign-out sends the browser to the provider's end-session endpoint with the ID token as
``id_token_hint`` (``end_session_url``), so the provider's session ends with ours.

The browser's half of the flow (state, nonce, PKCE verifier, where to go afterwards) travels
in a short-lived signed cookie (``FlowCookie``) scoped to ``/auth/oidc``, so nothing is stored
server-side before the person is signed in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt

from cxrlabel.config import OidcSettings

# Asymmetric only: an HMAC algorithm would let anyone holding the client secret (or a
# confused-key attack with the public key) mint tokens; "none" is never accepted.
ALLOWED_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
CLOCK_SKEW_S = 60
FLOW_TTL_S = 600  # the person has ten minutes at the provider's login page
METADATA_TTL_S = 3600
FLOW_COOKIE = "cxrlabel_oidc"
FLOW_COOKIE_PATH = "/auth/oidc"


@dataclass(frozen=True)
class ProviderSignIn:
    """A verified sign-in: the claims, and the ID token itself (sign-out hands it back to the
    provider as ``id_token_hint``)."""

    claims: dict[str, Any]
    id_token: str


class OidcError(Exception):
    """The sign-in cannot be trusted or could not be completed; ``message`` is for the
    person, ``detail`` for the log."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(detail or message)
        self.message, self.detail = message, detail or message


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 S256: base64url(SHA-256(verifier)) without padding."""
    return _b64(hashlib.sha256(verifier.encode("ascii")).digest())


@dataclass(frozen=True)
class Flow:
    """One browser's sign-in in progress."""

    state: str
    nonce: str
    verifier: str
    next_url: str
    started: float

    @classmethod
    def start(cls, next_url: str) -> Flow:
        return cls(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            verifier=secrets.token_urlsafe(48),
            next_url=next_url,
            started=time.time(),
        )


class FlowCookie:
    """``Flow`` <-> signed cookie value (HMAC-SHA256 with a key derived from the app secret)."""

    def __init__(self, secret: bytes) -> None:
        self._key = hashlib.sha256(b"cxrlabel-oidc-flow:" + secret).digest()

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())

    def dumps(self, flow: Flow) -> str:
        payload = {
            "s": flow.state,
            "n": flow.nonce,
            "v": flow.verifier,
            "x": flow.next_url,
            "t": int(flow.started),
        }
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{body}.{self._mac(body)}"

    def loads(self, value: str | None, now: float | None = None) -> Flow | None:
        """The flow, or None when absent, forged or older than ``FLOW_TTL_S``."""
        if not value or "." not in value or len(value) > 2048 or not value.isascii():
            return None
        body, mac = value.rsplit(".", 1)
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        try:
            data = json.loads(_unb64(body))
            flow = Flow(
                state=str(data["s"]),
                nonce=str(data["n"]),
                verifier=str(data["v"]),
                next_url=str(data["x"]),
                started=float(data["t"]),
            )
        except (ValueError, KeyError, TypeError):
            return None
        if (now or time.time()) - flow.started > FLOW_TTL_S:
            return None
        return flow


def _check_times(claims: dict[str, Any], now: float) -> None:
    """Expired, issued in the future or not yet valid (with ``CLOCK_SKEW_S`` of slack)."""
    try:
        exp, iat = float(claims["exp"]), float(claims["iat"])
        nbf = float(claims.get("nbf", iat))
    except (TypeError, ValueError):
        raise OidcError(
            "The sign-in could not be verified.", "ID token times are not numbers"
        ) from None
    if now > exp + CLOCK_SKEW_S:
        raise OidcError("The sign-in took too long. Please start again.", "ID token expired")
    if iat > now + CLOCK_SKEW_S or nbf > now + CLOCK_SKEW_S:
        raise OidcError("The sign-in could not be verified.", "ID token from the future")


class OidcClient:
    """The relying party for one provider (``Settings.oidc``)."""

    def __init__(self, settings: OidcSettings, *, http: httpx.Client | None = None) -> None:
        self.settings = settings
        self._http = http or httpx.Client(timeout=10.0, follow_redirects=False)
        self._lock = threading.Lock()
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._jwks: jwt.PyJWKSet | None = None

    # --- provider documents --------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """The discovery document (cached for an hour); its issuer must be the configured one."""
        with self._lock:
            if self._metadata is None or time.time() - self._metadata_at > METADATA_TTL_S:
                url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
                doc = self._get_json(url)
                if doc.get("issuer") != self.settings.issuer:
                    raise OidcError(
                        "The sign-in provider is misconfigured.",
                        f"discovery issuer {doc.get('issuer')!r} is not {self.settings.issuer!r}",
                    )
                for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                    if not isinstance(doc.get(key), str):
                        raise OidcError(
                            "The sign-in provider is misconfigured.",
                            f"discovery document lacks {key}",
                        )
                self._metadata, self._metadata_at, self._jwks = doc, time.time(), None
            return self._metadata

    def _get_json(self, url: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.get(url, **kwargs)
            response.raise_for_status()
            doc = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise OidcError(
                "The sign-in provider could not be reached. Try again later.", f"GET {url}: {exc}"
            ) from exc
        if not isinstance(doc, dict):
            raise OidcError(
                "The sign-in provider answered in an unexpected way.",
                f"GET {url}: not a JSON object",
            )
        return doc

    def _signing_key(self, kid: str | None) -> jwt.PyJWK:
        """The provider key named ``kid`` (or its only key); the JWKS is fetched again once
        for an unknown ``kid`` (the provider rotated its keys)."""
        for refresh in (False, True):
            keys = self._key_set(refresh)
            candidates = [k for k in keys.keys if kid is None or k.key_id == kid]
            if len(candidates) == 1 or (candidates and kid is not None):
                return candidates[0]
        raise OidcError("The sign-in could not be verified.", f"no provider key with kid {kid!r}")

    def _key_set(self, refresh: bool) -> jwt.PyJWKSet:
        with self._lock:
            jwks = self._jwks
        if jwks is None or refresh:
            doc = self._get_json(self.metadata()["jwks_uri"])
            try:
                jwks = jwt.PyJWKSet.from_dict(doc)
            except jwt.PyJWTError as exc:
                raise OidcError(
                    "The sign-in provider is misconfigured.", f"JWKS unusable: {exc}"
                ) from exc
            with self._lock:
                self._jwks = jwks
        return jwks

    # --- the flow ------------------------------------------------------------------------------

    def authorization_url(self, flow: Flow) -> str:
        query = {
            "response_type": "code",
            "client_id": self.settings.client_id,
            "redirect_uri": self.settings.redirect_uri,
            "scope": self.settings.scopes,
            "state": flow.state,
            "nonce": flow.nonce,
            "code_challenge": pkce_challenge(flow.verifier),
            "code_challenge_method": "S256",
        }
        endpoint = self.metadata()["authorization_endpoint"]
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(query)}"

    def end_session_url(self, id_token: str) -> str | None:
        """Where to send a signing-out browser so the provider's session ends too
        (OpenID Connect RP-Initiated Logout 1.0); None when ``end_provider_session`` is off or
        the provider offers no ``end_session_endpoint``."""
        if not self.settings.end_provider_session:
            return None
        endpoint = self.metadata().get("end_session_endpoint")
        if not isinstance(endpoint, str):
            return None
        query = {
            "id_token_hint": id_token,
            "client_id": self.settings.client_id,
            "post_logout_redirect_uri": self.settings.post_logout_redirect_uri,
        }
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(query)}"

    def finish(self, flow: Flow, code: str) -> ProviderSignIn:
        """Exchange ``code`` (with the PKCE verifier) and return the verified claims (the ID
        token's, plus userinfo's for claims the ID token lacks) with the ID token."""
        tokens = self._exchange(flow, code)
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise OidcError(
                "The sign-in provider sent no ID token.", "token response lacks id_token"
            )
        claims = self.verify_id_token(id_token, flow.nonce)
        access_token = tokens.get("access_token")
        if self.settings.role_claim not in claims and isinstance(access_token, str):
            claims = {**self._userinfo(access_token, claims["sub"]), **claims}
        return ProviderSignIn(claims, id_token)

    def _exchange(self, flow: Flow, code: str) -> dict[str, Any]:
        meta = self.metadata()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.settings.redirect_uri,
            "code_verifier": flow.verifier,
        }
        methods = meta.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        auth: dict[str, Any] = {}  # httpx: no ``auth`` argument at all means no client auth
        if "client_secret_basic" in methods:
            auth["auth"] = (self.settings.client_id, self.settings.client_secret)
        else:
            form.update(
                client_id=self.settings.client_id, client_secret=self.settings.client_secret
            )
        try:
            response = self._http.post(
                meta["token_endpoint"], data=form, **auth, headers={"Accept": "application/json"}
            )
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise OidcError(
                "The sign-in provider could not be reached. Try again later.",
                f"token endpoint: {exc}",
            ) from exc
        if response.status_code != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            raise OidcError(
                "The sign-in was refused by the provider. Please start again.",
                f"token endpoint {response.status_code}: {error}",
            )
        return body

    def verify_id_token(
        self, id_token: str, nonce: str, now: float | None = None
    ) -> dict[str, Any]:
        """The ID token's claims if its signature, issuer, audience, times and nonce are
        right; else ``OidcError``."""
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError as exc:
            raise OidcError("The sign-in could not be verified.", f"ID token: {exc}") from exc
        if header.get("alg") not in ALLOWED_ALGORITHMS:
            raise OidcError(
                "The sign-in could not be verified.",
                f"ID token algorithm {header.get('alg')!r} is not allowed",
            )
        key = self._signing_key(header.get("kid"))
        try:  # times are checked below, against ``now`` (tests pass a clock)
            claims = jwt.decode(
                id_token,
                key=key,
                algorithms=[header["alg"]],
                audience=self.settings.client_id,
                issuer=self.settings.issuer,
                options={
                    "require": ["iss", "aud", "exp", "iat", "sub"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise OidcError("The sign-in could not be verified.", f"ID token: {exc}") from exc
        _check_times(claims, time.time() if now is None else now)
        self._check_azp_and_nonce(claims, nonce)
        return claims

    def _check_azp_and_nonce(self, claims: dict[str, Any], nonce: str) -> None:
        audience = claims["aud"]
        if (
            isinstance(audience, list)
            and len(audience) > 1
            and (claims.get("azp") != self.settings.client_id)
        ):
            raise OidcError("The sign-in could not be verified.", "ID token azp is not ours")
        if not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
            raise OidcError(
                "The sign-in could not be verified.",
                "ID token nonce does not match this browser's sign-in",
            )

    def _userinfo(self, access_token: str, subject: str) -> dict[str, Any]:
        endpoint = self.metadata().get("userinfo_endpoint")
        if not isinstance(endpoint, str):
            return {}
        info = self._get_json(endpoint, headers={"Authorization": f"Bearer {access_token}"})
        if info.get("sub") != subject:  # OpenID Connect Core 5.3.2: must be the same person
            raise OidcError("The sign-in could not be verified.", "userinfo sub differs")
        return info
