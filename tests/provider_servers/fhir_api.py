"""A local FHIR R4 server with a SMART Backend Services token endpoint.

It serves the FHIR specification's own example resources (tests/payloads/fhir/, see the
README there) and answers as an EMR's FHIR API does:

* ``POST /auth/token``: checks the token request exactly — the form fields
  (``grant_type=client_credentials``, ``client_assertion_type=urn:ietf:params:oauth:
  client-assertion-type:jwt-bearer``, ``client_assertion``, ``scope``), the JWT's
  signature with the registered public key (``kid``, RS384 or ES384), and its claims
  (``iss`` = ``sub`` = the client id, ``aud`` = this URL, ``exp`` no more than five
  minutes ahead and not past, a ``jti`` never seen before). Refusals are OAuth errors
  (``400 invalid_client`` …); success is a bearer token valid ``token_lifetime`` seconds.
* ``GET /fhir/{Type}``: needs a live bearer token with ``system/{Type}.read`` (else 401 /
  403 with an OperationOutcome); ``_lastUpdated=ge…`` (or ``gt…``), ``_sort=_lastUpdated``
  and ``_count`` work; the answer is a ``searchset`` Bundle with a ``next`` link while more
  remain.
* ``GET /fhir/{Type}/{id}``: the resource (same token rules); 404 for one never stored,
  410 for one deleted (``delete``).

Times (token expiry, ``exp``) are checked against ``now`` (engine.clock.now by default, so
tests that move the engine's clock move the server's too). Each stored resource gets the
``meta.lastUpdated`` the test gives it (the examples have none): that, and the edits a
test makes (a cancelled appointment), are the only changes to the examples.

Scripted outcomes (``enqueue``) apply to the FHIR searches only, not to token requests:
``Outcome("success")`` lets a page through, a ``Reply`` or ``HANG`` replaces it.
"""

from __future__ import annotations

import copy
import secrets
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from engine import clock
from tests.provider_servers._base import (
    PAYLOADS_DIR,
    Outcome,
    ProviderServer,
    RecordedRequest,
    Reply,
    load_payload,
)

FHIR_DIR = PAYLOADS_DIR / "fhir"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
FORM_FIELDS = {"grant_type", "client_assertion_type", "client_assertion", "scope"}


def example(name: str) -> dict[str, Any]:
    """One of the specification's examples, e.g. ``example("Patient-example")``."""
    loaded = load_payload(f"fhir/{name}.json")
    assert isinstance(loaded, dict)
    return loaded


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _outcome(status: int, code: str, text: str) -> Reply:
    return Reply.json(status, {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": code, "diagnostics": text}]},
        {"Content-Type": "application/fhir+json"})


def _oauth_error(status: int, error: str, description: str) -> Reply:
    return Reply.json(status, {"error": error, "error_description": description},
                      {"Content-Type": "application/json"})


class FhirAPIServer(ProviderServer):
    name = "fhir"
    token_path = "/auth/token"
    base_path = "/fhir"

    def __init__(self, *, client_id: str = "touchpoint-test", public_key: PublicKeyTypes,
                 kid: str, token_lifetime: int = 300,
                 now: Callable[[], datetime] = clock.now) -> None:
        super().__init__()
        self.client_id = client_id
        self.public_key = public_key
        self.kid = kid
        self.token_lifetime = token_lifetime
        self.now = now
        self.granted_scopes = {"system/Patient.read", "system/RelatedPerson.read",
                               "system/Appointment.read"}
        self.resources: dict[tuple[str, str], dict[str, Any]] = {}
        self.deleted: set[tuple[str, str]] = set()
        self.tokens: dict[str, tuple[datetime, set[str]]] = {}
        self.seen_jti: set[str] = set()
        self.token_requests = 0

    # ------------------------------------------------------------------ test API

    @property
    def base_url(self) -> str:
        return self.url + self.base_path

    @property
    def token_url(self) -> str:
        return self.url + self.token_path

    def put(self, resource: Mapping[str, Any], last_updated: datetime) -> None:
        """Store (or replace) a resource, as last updated at ``last_updated``."""
        stored = copy.deepcopy(dict(resource))
        stored["meta"] = {**stored.get("meta", {}), "lastUpdated": _stamp(last_updated)}
        with self._lock:
            self.resources[(stored["resourceType"], stored["id"])] = stored
            self.deleted.discard((stored["resourceType"], stored["id"]))

    def delete(self, resource_type: str, resource_id: str) -> None:
        """Delete a resource: searches no longer find it, a read answers 410 Gone."""
        with self._lock:
            self.resources.pop((resource_type, resource_id), None)
            self.deleted.add((resource_type, resource_id))

    def put_all(self, resources: Iterable[Mapping[str, Any]], start: datetime,
                step: timedelta = timedelta(minutes=1)) -> None:
        """Store ``resources`` updated one ``step`` apart from ``start``, in order."""
        for number, resource in enumerate(resources):
            self.put(resource, start + number * step)

    # ------------------------------------------------------------------ answers

    def _respond(self, request: RecordedRequest) -> Outcome | Reply:
        if request.method == "POST" and request.path == self.token_path:
            with self._lock:
                self.token_requests += 1
            return self._token(request)
        if request.method == "GET" and request.path.startswith(self.base_path + "/"):
            outcome = self._next_outcome()
            if outcome.kind != "success":
                request.outcome = outcome.label or outcome.kind
                return outcome.reply if outcome.reply is not None else outcome
            kind, _, resource_id = request.path[len(self.base_path) + 1:].partition("/")
            if resource_id:
                return self._read(request, kind, urllib.parse.unquote(resource_id))
            return self._search(request, kind)
        return _outcome(404, "not-found", f"no route for {request.method} {request.path}")

    def _token(self, request: RecordedRequest) -> Reply:
        form = request.form
        if form is None:
            return _oauth_error(400, "invalid_request", "the body must be a form")
        if set(form) != FORM_FIELDS or any(len(v) != 1 for v in form.values()):
            return _oauth_error(400, "invalid_request",
                                f"expected exactly the fields {sorted(FORM_FIELDS)}")
        if request.form_value("grant_type") != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", "client_credentials only")
        if request.form_value("client_assertion_type") != ASSERTION_TYPE:
            return _oauth_error(400, "invalid_request", "wrong client_assertion_type")
        assertion = request.form_value("client_assertion") or ""
        try:
            header = jwt.get_unverified_header(assertion)
            if header.get("kid") != self.kid:
                return _oauth_error(401, "invalid_client", "unknown kid")
            if header.get("alg") not in ("RS384", "ES384"):
                return _oauth_error(401, "invalid_client", "alg must be RS384 or ES384")
            claims = jwt.decode(assertion, self.public_key,  # type: ignore[arg-type]
                                algorithms=[header["alg"]], audience=self.token_url,
                                options={"verify_exp": False, "verify_iat": False,
                                         "verify_nbf": False,
                                         "require": ["iss", "sub", "aud", "exp", "jti"]})
        except jwt.InvalidTokenError as exc:
            return _oauth_error(401, "invalid_client", f"bad client assertion: {exc}")
        now = self.now().timestamp()
        if claims["iss"] != self.client_id or claims["sub"] != self.client_id:
            return _oauth_error(401, "invalid_client", "iss and sub must be the client id")
        if not now < claims["exp"] <= now + 300 + 5:
            return _oauth_error(401, "invalid_client",
                                "exp must be in the future and at most 5 minutes ahead")
        with self._lock:
            if claims["jti"] in self.seen_jti:
                return _oauth_error(401, "invalid_client", "jti was used before")
            self.seen_jti.add(claims["jti"])
        asked = set((request.form_value("scope") or "").split())
        if not asked or not asked <= self.granted_scopes:
            return _oauth_error(400, "invalid_scope", "scope not granted to this client")
        token = secrets.token_urlsafe(24)
        with self._lock:
            self.tokens[token] = (self.now() + timedelta(seconds=self.token_lifetime), asked)
        return Reply.json(200, {"access_token": token, "token_type": "bearer",
                                "expires_in": self.token_lifetime, "scope": " ".join(
                                    sorted(asked))}, {"Content-Type": "application/json"})

    def _refusal(self, request: RecordedRequest, resource_type: str) -> Reply | None:
        """401 or 403 when the request's token may not read ``resource_type``."""
        auth = request.header("Authorization") or ""
        with self._lock:
            granted = self.tokens.get(auth.removeprefix("Bearer "))
        if not auth.startswith("Bearer ") or granted is None or granted[0] <= self.now():
            return _outcome(401, "login", "a valid bearer token is required")
        if f"system/{resource_type}.read" not in granted[1]:
            return _outcome(403, "forbidden", f"the token does not allow reading "
                                              f"{resource_type}")
        return None

    def _read(self, request: RecordedRequest, resource_type: str, resource_id: str) -> Reply:
        refusal = self._refusal(request, resource_type)
        if refusal is not None:
            return refusal
        with self._lock:
            found = self.resources.get((resource_type, resource_id))
            deleted = (resource_type, resource_id) in self.deleted
        if found is None:
            return _outcome(410, "deleted", "deleted") if deleted else \
                _outcome(404, "not-found", f"no {resource_type}/{resource_id}")
        return Reply.json(200, found, {"Content-Type": "application/fhir+json"})

    def _search(self, request: RecordedRequest, resource_type: str) -> Reply:
        refusal = self._refusal(request, resource_type)
        if refusal is not None:
            return refusal
        query = {k: v[0] for k, v in request.query.items()}
        since: datetime | None = None
        inclusive = False
        if "_lastUpdated" in query:
            value = query["_lastUpdated"]
            if value[:2] not in ("ge", "gt"):
                return _outcome(400, "not-supported",
                                "only _lastUpdated=ge… or gt… is supported")
            inclusive = value.startswith("ge")
            since = datetime.fromisoformat(value[2:].replace("Z", "+00:00"))
        if query.get("_sort", "_lastUpdated") != "_lastUpdated":
            return _outcome(400, "not-supported", "only _sort=_lastUpdated is supported")
        count = int(query.get("_count", "50"))
        offset = int(query.get("_getpagesoffset", "0"))
        with self._lock:
            found = [r for (kind, _), r in self.resources.items() if kind == resource_type]

        def after(resource: Mapping[str, Any]) -> bool:
            at = datetime.fromisoformat(resource["meta"]["lastUpdated"].replace("Z", "+00:00"))
            return since is None or at > since or (inclusive and at == since)

        found = [r for r in found if after(r)]
        found.sort(key=lambda r: (r["meta"]["lastUpdated"], r["id"]))
        page = found[offset:offset + count]
        links = [{"relation": "self", "url": self._page_url(resource_type, query, offset)}]
        if offset + count < len(found):
            links.append({"relation": "next",
                          "url": self._page_url(resource_type, query, offset + count)})
        bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(found),
                  "link": links,
                  "entry": [{"fullUrl": f"{self.base_url}/{resource_type}/{r['id']}",
                             "resource": r, "search": {"mode": "match"}} for r in page]}
        return Reply.json(200, bundle, {"Content-Type": "application/fhir+json"})

    def _page_url(self, resource_type: str, query: Mapping[str, str], offset: int) -> str:
        params = {k: v for k, v in query.items() if k != "_getpagesoffset"}
        if offset:
            params["_getpagesoffset"] = str(offset)
        return f"{self.base_url}/{resource_type}?{urllib.parse.urlencode(params)}"
