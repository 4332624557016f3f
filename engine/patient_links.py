"""Per-patient links in messages: where to book the next visit, and the intake form.

``patient.booking_link`` is the EMR's own booking page for the patient (``booking_url``
in patients.csv) when it gave one, else the practice's ``practice.booking_url`` with a
signed patient token (``?patient=TOKEN``), else empty. ``patient.intake_link`` is
``practice.links.intake`` with the same token until the patient's intake is marked
complete (``intake_completed``), then empty.

A token is an itsdangerous ``URLSafeTimedSerializer`` signature of the patient's
Touchpoint id (a number that means nothing outside Touchpoint: no name, no EMR id), with
the time it was made. The practice's booking page asks ``GET /api/v1/patient-tokens/TOKEN``
who it is for: a forged, altered or older than ``links.max_age`` token is refused. The
key is ``links.secret``, else the key of unsubscribe links (engine/unsubscribe.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit, urlunsplit

from itsdangerous import BadSignature, TimestampSigner, URLSafeTimedSerializer
from sqlalchemy import Connection

from engine import clock, unsubscribe
from engine.domain import Patient
from engine.settings import Settings

SALT = "touchpoint.patient-link"  # tokens of other purposes signed with the key never pass


class ClockSigner(TimestampSigner):
    """Stamps and ages tokens on engine.clock (the simulator's and tests' time too)."""

    def get_timestamp(self) -> int:
        return int(clock.now().timestamp())


def serializer_for(key: bytes) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(key, salt=SALT, signer=ClockSigner)


def signer(conn: Connection, settings: Settings) -> URLSafeTimedSerializer:
    """The serializer that makes and reads patient tokens (``links.secret`` or the
    unsubscribe key)."""
    key = settings.links.secret.encode() if settings.links.secret \
        else unsubscribe.secret_key(conn, settings)
    return serializer_for(key)


def make_token(serializer: URLSafeTimedSerializer, patient_id: int) -> str:
    return str(serializer.dumps(patient_id))


def read_token(serializer: URLSafeTimedSerializer, token: str, max_age: int,
               ) -> int | None:
    """The patient id a genuine token younger than ``max_age`` seconds names, else None."""
    try:
        value = serializer.loads(token, max_age=max_age)
    except BadSignature:  # (SignatureExpired is one: too old is refused alike)
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def with_token(url: str, token: str) -> str:
    """``url`` with ``patient=TOKEN`` added to its query (after any it has)."""
    parts = urlsplit(url)
    query = f"{parts.query}&" if parts.query else ""
    return urlunsplit(parts._replace(query=query + urlencode({"patient": token})))


@dataclass(frozen=True)
class PatientLinks:
    booking: str = ""
    intake: str = ""


def links_for(patient: Patient, settings: Settings,
              serializer: URLSafeTimedSerializer) -> PatientLinks:
    """The patient's booking and intake links (empty where they do not apply)."""
    booking_page = settings.practice.booking_url
    intake_form = settings.practice.links.get("intake", "")
    wanted = (not patient.booking_url and booking_page) or \
        (not patient.intake_completed and intake_form)
    token = make_token(serializer, patient.id) if wanted else ""
    booking = patient.booking_url or (with_token(booking_page, token) if booking_page else "")
    intake = with_token(intake_form, token) if intake_form and not patient.intake_completed \
        else ""
    return PatientLinks(booking, intake)
