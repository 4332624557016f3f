"""An EMR's FHIR R4 API: SMART Backend Services authorization and paged searches.

Authorization (SMART App Launch 2, "Backend Services"): Touchpoint signs a short JWT with
the practice's private key — ``iss`` = ``sub`` = the client id, ``aud`` = the token URL,
``exp`` five minutes ahead, a unique ``jti``, header ``kid`` — and trades it at the token
URL for an access token (``grant_type=client_credentials``, ``client_assertion_type=
urn:ietf:params:oauth:client-assertion-type:jwt-bearer``). The token is kept until a
minute before it expires. RSA keys sign RS384, EC P-384 keys ES384.

Searches: ``GET {base}/{Type}?_lastUpdated=ge{cursor}&_sort=_lastUpdated&_count=N``, then
each ``Bundle.link`` whose relation is ``next`` to the end. The cursor is inclusive (``ge``,
as the specification advises): resources updated in the same instant as the last one seen
come again rather than never, and applying one again changes nothing.

Reads: ``GET {base}/{Type}/{id}``, for a resource refused before and asked for again; 404
or 410 means it is gone.

Everything the server can answer wrong becomes a :class:`FhirServerError`, one line (the
URL without its query, the HTTP status, the OAuth error): a person can act on it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx2
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from engine import clock
from engine.errors import ConfigError, UserError
from engine.privacy import redact
from engine.settings import Settings

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = timedelta(minutes=5)  # the most SMART allows
TOKEN_MARGIN = timedelta(seconds=60)  # a token is renewed this long before it expires
FHIR_JSON = "application/fhir+json"


class FhirServerError(UserError):
    """The FHIR server or its token endpoint did not answer as expected."""


# --------------------------------------------------------------------------- the key


class SigningKey:
    """The practice's private key, the algorithm it signs with and its key id."""

    def __init__(self, path: Path, key_id: str = "") -> None:
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"setting fhir.private_key_file: cannot read {path} "
                              f"({exc.strerror})") from None
        try:
            key = load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            reason = "it needs a password" if isinstance(exc, TypeError) else "not a PEM key"
            raise ConfigError(f"setting fhir.private_key_file: {path} is not a usable "
                              f"private key ({reason}) — give an unencrypted PEM RSA or EC "
                              "P-384 private key") from None
        public: dict[str, Any]
        members: tuple[str, ...]
        if isinstance(key, rsa.RSAPrivateKey):
            self.algorithm = "RS384"
            public = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
            members = ("e", "kty", "n")
        elif isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1":
            self.algorithm = "ES384"
            public = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
            members = ("crv", "kty", "x", "y")
        else:
            raise ConfigError(f"setting fhir.private_key_file: {path} is neither an RSA nor "
                              "an EC P-384 key — SMART Backend Services signs with RS384 or "
                              "ES384")
        self.key = key
        self.public_jwk = public
        thumbprint = hashlib.sha256(json.dumps({m: public[m] for m in members},
                                               separators=(",", ":"), sort_keys=True)
                                    .encode()).digest()
        self.key_id = key_id or base64.urlsafe_b64encode(thumbprint).rstrip(b"=").decode()

    def jwks(self) -> dict[str, Any]:
        """The public key set to register with the EMR (or to serve at a JWKS URL)."""
        return {"keys": [{**self.public_jwk, "kid": self.key_id, "alg": self.algorithm,
                          "use": "sig", "key_ops": ["verify"]}]}

    def assertion(self, client_id: str, token_url: str, now: datetime) -> str:
        """A signed client assertion for one token request."""
        claims = {"iss": client_id, "sub": client_id, "aud": token_url,
                  "exp": int((now + ASSERTION_LIFETIME).timestamp()),
                  "iat": int(now.timestamp()), "jti": uuid.uuid4().hex}
        return jwt.encode(claims, self.key, algorithm=self.algorithm,
                          headers={"kid": self.key_id, "typ": "JWT"})


# --------------------------------------------------------------------------- the client


def _bare(url: str) -> str:
    """``url`` without its query (searches carry dates, never names, but keep it short)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _excerpt(response: httpx2.Response) -> str:
    """What the server said, short: an OAuth error, an OperationOutcome's diagnostics."""
    try:
        body = response.json()
    except ValueError:
        return ""
    if not isinstance(body, Mapping):
        return ""
    if "error" in body:
        said = str(body["error"])
        if body.get("error_description"):
            said += f": {body['error_description']}"
        return redact(said)[:200]
    if body.get("resourceType") == "OperationOutcome":
        issues = body.get("issue") or [{}]
        first = issues[0] if isinstance(issues[0], Mapping) else {}
        said = str(first.get("diagnostics") or (first.get("details") or {}).get("text") or
                   first.get("code") or "")
        return redact(said)[:200]
    return ""


class FhirClient:
    """Searches one FHIR server with SMART Backend Services tokens (kept between calls)."""

    def __init__(self, base_url: str, client_id: str, token_url: str, key: SigningKey,
                 scope: str, *, timeout: float = 10.0,
                 transport: httpx2.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self.token_url = token_url
        self.key = key
        self.scope = scope
        self.http = httpx2.Client(timeout=httpx2.Timeout(timeout), transport=transport,
                                  headers={"Accept": FHIR_JSON}, follow_redirects=False)
        self._token: tuple[str, datetime] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> FhirClient:
        key_file = settings.require("fhir.private_key_file")
        return cls(settings.require("fhir.base_url"), settings.require("fhir.client_id"),
                   settings.require("fhir.token_url"),
                   SigningKey(Path(key_file), settings.fhir.key_id), settings.fhir.scope,
                   timeout=settings.channels.provider_timeout)

    def close(self) -> None:
        self.http.close()

    # ------------------------------------------------------------------ token

    def token(self) -> str:
        now = clock.now()
        if self._token is not None and now < self._token[1]:
            return self._token[0]
        form = {"grant_type": "client_credentials", "scope": self.scope,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": self.key.assertion(self.client_id, self.token_url, now)}
        response = self._send("POST", self.token_url, "token endpoint", data=form,
                               headers={"Accept": "application/json"})
        if response.status_code != 200:
            said = _excerpt(response)
            raise FhirServerError(
                f"the FHIR token endpoint {_bare(self.token_url)} refused the token request "
                f"(HTTP {response.status_code}{': ' + said if said else ''}) — check "
                "fhir.client_id, and that the EMR has this key registered (`touchpoint fhir "
                "jwks` prints it)")
        try:
            body = response.json()
            access = str(body["access_token"])
            lifetime = timedelta(seconds=int(body.get("expires_in", 300)))
        except (ValueError, KeyError, TypeError):
            raise FhirServerError(f"the FHIR token endpoint {_bare(self.token_url)} answered "
                                  "without an access_token") from None
        self._token = (access, now + max(lifetime - TOKEN_MARGIN, timedelta(0)))
        return access

    # ------------------------------------------------------------------ searches

    def _send(self, method: str, url: str, what: str, **kwargs: Any) -> httpx2.Response:
        try:
            return self.http.request(method, url, **kwargs)
        except httpx2.TimeoutException:
            raise FhirServerError(f"the FHIR {what} {_bare(url)} did not answer in time — "
                                  "try again later") from None
        except httpx2.HTTPError as exc:
            raise FhirServerError(f"cannot reach the FHIR {what} {_bare(url)} "
                                  f"({type(exc).__name__}) — check the URL and the "
                                  "network") from None

    def _get(self, url: str, params: Mapping[str, str] | None = None) -> httpx2.Response:
        """GET with the access token; a 401 renews the token once."""
        for attempt in (1, 2):
            response = self._send("GET", url, "server", params=params,
                                  headers={"Authorization": f"Bearer {self.token()}"})
            if response.status_code == 401 and attempt == 1:
                self._token = None
                continue
            break
        return response

    @staticmethod
    def _refused(response: httpx2.Response, url: str) -> FhirServerError:
        said = _excerpt(response)
        hint = (" — the access token was refused: check the scopes granted to "
                "fhir.client_id" if response.status_code in (401, 403) else
                " — try again later" if response.status_code >= 500 else "")
        return FhirServerError(f"the FHIR server answered HTTP {response.status_code} for "
                               f"{_bare(url)}{': ' + said if said else ''}{hint}")

    @staticmethod
    def _json_of(response: httpx2.Response, url: str, expected: str) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("resourceType") != expected:
            kind = body.get("resourceType") if isinstance(body, dict) else None
            hint = " — check fhir.base_url" if expected == "Bundle" else ""
            raise FhirServerError(f"the FHIR server answered {_bare(url)} with "
                                  f"{kind or 'something that is not FHIR JSON'}, not a "
                                  f"{expected}{hint}")
        return body

    def get_bundle(self, url: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        """GET a search page; a 401 renews the token once."""
        response = self._get(url, params)
        if response.status_code != 200:
            raise self._refused(response, url)
        return self._json_of(response, url, "Bundle")

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """GET one resource as it is now; None when the server says it is gone (404, 410)."""
        url = f"{self.base_url}/{resource_type}/{quote(resource_id, safe='')}"
        response = self._get(url)
        if response.status_code in (404, 410):
            return None
        if response.status_code != 200:
            raise self._refused(response, url)
        body = self._json_of(response, url, resource_type)
        if body.get("id") != resource_id:
            raise FhirServerError(f"the FHIR server answered {_bare(url)} with another "
                                  f"{resource_type} (id {str(body.get('id'))[:64]!r})")
        return body

    def search(self, resource_type: str, since: str | None, page_size: int,
               ) -> Iterator[dict[str, Any]]:
        """The pages (Bundles) of the search for ``resource_type`` updated at or after
        ``since``, oldest first."""
        params = {"_sort": "_lastUpdated", "_count": str(page_size)}
        if since:
            params["_lastUpdated"] = f"ge{since}"
        url: str | None = f"{self.base_url}/{resource_type}"
        seen: set[str] = set()
        page = self.get_bundle(str(url), params)
        while True:
            yield page
            url = next((link.get("url") for link in page.get("link") or ()
                        if isinstance(link, Mapping) and link.get("relation") == "next"), None)
            if not url:
                return
            if url in seen:
                raise FhirServerError(f"the FHIR server's next page link for {resource_type} "
                                      "repeats a page — stopping the sync")
            seen.add(url)
            page = self.get_bundle(str(url))
