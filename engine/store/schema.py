"""The database schema (SQLAlchemy 2.x typed models). Migrations live in engine/migrations.

::

    referrers ─< patients ─┬─< appointments
                           ├─< contacts      (parents, guardians, caregivers)
                           ├─< events        (append-only: what happened, the planner's input)
                           ├─< touch_points ─< touch_point_history  (the ledger and its log)
                           └─< recovery_cases ─< case_events
    opt_outs                            (per address: STOP replies, unsubscribes)
    provider_events                     (status callbacks and event webhooks, once each)
    inbound_messages                    (replies: STOP, HELP, C, R, free text)
    engine_state                        (small key/value facts: last tick, last forecast)
    audit_log                           (append-only: who did what, when, from where)
    webhook_endpoints ─< webhook_deliveries ─< webhook_attempts   (outbound webhooks:
    webhook_messages  ─<                        what happened, sent to the practice's systems)
    api_keys                            (keys of the REST API: name, scopes, a hash, never the key)
    hl7_messages                        (HL7 v2 messages received, once each, and their ACK)
    staff_users ─< staff_sessions       (console accounts: email, role, argon2 hash)
    definition_drafts, definition_versions  (console edits before and after publishing)
    waitlist_entries                    (patients waiting for an earlier visit: preferences)
    slots ─< slot_offers                (freed visit times, and who was offered each, when)

Every instant is stored in UTC and read back timezone-aware, on SQLite too.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time
from functools import partial
from typing import Any, ClassVar, cast

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    Time,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.expression import false, text

from engine.definitions.journeys import NAME_LENGTH

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _utc(instant: datetime) -> datetime:
    if instant.tzinfo is UTC:
        return instant
    if instant.tzinfo is None:
        raise ValueError(f"refusing to store a naive datetime ({instant!r}); use engine.clock")
    return instant.astimezone(UTC)


def bind_time(dialect: str, instant: datetime | None) -> Any:
    """A datetime as :class:`UTCDateTime` binds it: aware UTC, as naive UTC text on SQLite
    (``2026-11-02 14:00:00.000000``, SQLAlchemy's own format there). Statements run at the
    driver level bind their times with this. A naive datetime is refused, not guessed."""
    if instant is None:
        return None
    if dialect != "sqlite":
        return _utc(instant)
    return _utc(instant).isoformat(" ", "microseconds")[:26]  # without "+00:00"


def read_time(value: Any) -> datetime | None:
    """A time as a driver returns it, as aware UTC: the reverse of :func:`bind_time`.
    SQLite gives back naive UTC text (read in one C call), PostgreSQL a datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        return datetime.fromisoformat(value + "+00:00")
    assert isinstance(value, datetime), value
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC in, aware UTC out. Naive datetimes are refused, not guessed.

    On SQLite the value is naive UTC text, and this type converts it itself rather than
    through SQLite's DATETIME processing (``process_*`` plus the inner type's): the same
    text, written at half the cost and read at a fifth — imports and planning bind and
    read hundreds of thousands of times, and every message the dispatcher sends several.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        # (on SQLite, statements bind through bind_processor below; this serves literal SQL)
        if value is None:
            return None
        value = _utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)
        return partial(bind_time, "sqlite")

    def result_processor(self, dialect: Dialect, coltype: Any) -> Callable[[Any], Any] | None:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)
        return read_time


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(),
                                                     dict[str, Any]: JSON()}


class Patient(Base):
    __tablename__ = "patients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(64), unique=True)
    first_name: Mapped[str] = mapped_column(String(100), default="")
    last_name: Mapped[str] = mapped_column(String(100), default="")
    phone: Mapped[str | None] = mapped_column(String(20))
    email: Mapped[str | None] = mapped_column(String(254))
    language: Mapped[str | None] = mapped_column(String(16))
    timezone: Mapped[str | None] = mapped_column(String(64))
    sms_consent: Mapped[bool] = mapped_column(Boolean, default=False)
    email_consent: Mapped[bool] = mapped_column(Boolean, default=False)
    marketing_consent: Mapped[bool] = mapped_column(Boolean, default=False)
    custom: Mapped[dict[str, Any]] = mapped_column(default=dict)
    date_of_birth: Mapped[date | None] = mapped_column(Date)
    referrer_id: Mapped[int | None] = mapped_column(ForeignKey("referrers.id"), index=True)
    discharged_on: Mapped[date | None] = mapped_column(Date)
    satisfaction_score: Mapped[int | None] = mapped_column(Integer)
    satisfaction_at: Mapped[datetime | None]
    row_hash: Mapped[str] = mapped_column(String(40))
    source: Mapped[str] = mapped_column(String(300), default="")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # Set by `touchpoint patient erase`: the personal data is gone, the row stays (reports
    # count it) and a later import of this patient_id is refused (engine/patient_data.py).
    erased_at: Mapped[datetime | None]
    # The EMR's own last-change time (the API's `updated_at`): an older update is refused.
    source_updated_at: Mapped[datetime | None]
    # Left the practice's records (a full sync, an HL7 S17, an API DELETE): see engine.removal
    removed_at: Mapped[datetime | None]
    # The plan of care (engine/plan_of_care.py): visits prescribed, how many a week, from
    # when to when; all empty when the EMR gives none.
    plan_visits: Mapped[int | None] = mapped_column(Integer)
    plan_visits_per_week: Mapped[int | None] = mapped_column(Integer)
    plan_start: Mapped[date | None] = mapped_column(Date)
    plan_end: Mapped[date | None] = mapped_column(Date)
    # The intake form is done: patient.intake_link is empty from then on.
    intake_completed: Mapped[bool] = mapped_column(Boolean, default=False,
                                                   server_default=false())
    # The EMR's own booking page for this patient (patient.booking_link), if it gives one
    booking_url: Mapped[str | None] = mapped_column(String(500))


class Referrer(Base):
    """A referral source: a physician or clinic, reached through its office contact."""

    __tablename__ = "referrers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    contact_name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str | None] = mapped_column(String(254))
    fax: Mapped[str | None] = mapped_column(String(20))
    row_hash: Mapped[str] = mapped_column(String(40))
    source: Mapped[str] = mapped_column(String(300), default="")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # The EMR's own last-change time (the API's `updated_at`): an older update is refused.
    source_updated_at: Mapped[datetime | None]
    # Left the practice's records (a full sync, an API DELETE): see engine.removal
    removed_at: Mapped[datetime | None]


class Contact(Base):
    """Someone a patient's messages may go to: a parent, guardian, spouse, caregiver."""

    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    relationship: Mapped[str] = mapped_column(String(32))
    first_name: Mapped[str] = mapped_column(String(100), default="")
    phone: Mapped[str | None] = mapped_column(String(20))
    email: Mapped[str | None] = mapped_column(String(254))
    language: Mapped[str | None] = mapped_column(String(16))
    timezone: Mapped[str | None] = mapped_column(String(64))
    sms_consent: Mapped[bool] = mapped_column(Boolean, default=False)
    email_consent: Mapped[bool] = mapped_column(Boolean, default=False)
    marketing_consent: Mapped[bool] = mapped_column(Boolean, default=False)
    receives: Mapped[str] = mapped_column(String(200), default="transactional")
    row_hash: Mapped[str] = mapped_column(String(40))
    source: Mapped[str] = mapped_column(String(300), default="")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # The EMR's own last-change time (the API's `updated_at`): an older update is refused.
    source_updated_at: Mapped[datetime | None]
    removed_at: Mapped[datetime | None]  # see engine.removal


class Appointment(Base):
    __tablename__ = "appointments"
    __table_args__ = (Index(None, "patient_id", "start_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    start_at: Mapped[datetime]
    duration_minutes: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    visit_type: Mapped[str] = mapped_column(String(100), default="")
    therapist: Mapped[str] = mapped_column(String(100), default="")
    location: Mapped[str] = mapped_column(String(200), default="")
    # Bumped on every booking or move: touch points anchor on (appointment, version).
    version: Mapped[int] = mapped_column(Integer, default=1)
    confirmed_at: Mapped[datetime | None]
    satisfaction_score: Mapped[int | None] = mapped_column(Integer)
    row_hash: Mapped[str] = mapped_column(String(40))
    source: Mapped[str] = mapped_column(String(300), default="")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # The EMR's own last-change time (the API's `updated_at`): an older update is refused.
    source_updated_at: Mapped[datetime | None]
    removed_at: Mapped[datetime | None]  # see engine.removal


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (
        Index(None, "processed_at", "id"),
        # What /healthz counts: events set aside because planning them failed (few).
        Index("ix_events_failed_at", "failed_at",
              sqlite_where=text("failed_at IS NOT NULL"),
              postgresql_where=text("failed_at IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    appointment_id: Mapped[int | None] = mapped_column(ForeignKey("appointments.id"))
    occurred_at: Mapped[datetime]
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    source: Mapped[str] = mapped_column(String(300), default="")
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    processed_at: Mapped[datetime | None]
    # Set aside: planning this event raised; it is not retried (see Runner.plan_pending).
    error: Mapped[str | None] = mapped_column(Text)
    failed_at: Mapped[datetime | None]


class TouchPoint(Base):
    __tablename__ = "touch_points"
    __table_args__ = (
        UniqueConstraint("patient_id", "recipient", "journey", "step", "anchor"),
        # What the dispatcher claims: only pending rows are indexed, so a row leaves the
        # index once, when it is sent, instead of being re-indexed at every status.
        Index("ix_touch_points_due_planned", "due_at",
              sqlite_where=text("status = 'planned'"),
              postgresql_where=text("status = 'planned'")),
        # What recovery looks for on every tick: rows left in 'sending'.
        Index("ix_touch_points_sending", "sending_at",
              sqlite_where=text("status = 'sending'"),
              postgresql_where=text("status = 'sending'")),
        # What the case desk looks for on every tick: failed rows (few).
        Index("ix_touch_points_failed", "finished_at",
              sqlite_where=text("status = 'failed'"),
              postgresql_where=text("status = 'failed'")),
        Index(None, "appointment_id"),
        # How a provider's status callback finds its touch point. Rows get an id when they
        # are sent; the planned ones are not indexed (nor moved in the index when sent).
        Index(None, "provider_message_id",
              sqlite_where=text("provider_message_id IS NOT NULL"),
              postgresql_where=text("provider_message_id IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # None only for test sends to a manager's own phone or email (`test` is true)
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"), index=True)
    appointment_id: Mapped[int | None] = mapped_column(ForeignKey("appointments.id"))
    recipient: Mapped[str] = mapped_column(String(40), default="patient")
    test: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    journey: Mapped[str] = mapped_column(String(NAME_LENGTH))
    step: Mapped[str] = mapped_column(String(NAME_LENGTH))
    anchor: Mapped[str] = mapped_column(String(80))
    purpose: Mapped[str] = mapped_column(String(16))
    event_id: Mapped[int | None] = mapped_column(ForeignKey("events.id"))
    step_fingerprint: Mapped[str] = mapped_column(String(16), default="")
    due_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(12))
    reason: Mapped[str | None] = mapped_column(String(40))
    detail: Mapped[str | None] = mapped_column(Text)
    channel: Mapped[str | None] = mapped_column(String(12))
    address: Mapped[str | None] = mapped_column(String(254))
    provider: Mapped[str | None] = mapped_column(String(24))
    provider_message_id: Mapped[str | None] = mapped_column(String(100))
    template_file: Mapped[str | None] = mapped_column(String(200))
    content: Mapped[str | None] = mapped_column(Text)  # what was sent: subject, then body
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(80))
    claim_expires_at: Mapped[datetime | None]
    sending_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    planned_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class TouchPointHistory(Base):
    __tablename__ = "touch_point_history"
    __table_args__ = (
        # A provider event is recorded once. Only provider events carry an id, so only they
        # are indexed: the dispatcher's own rows (two a message) skip this index.
        Index(None, "provider_event_id", unique=True,
              sqlite_where=text("provider_event_id IS NOT NULL"),
              postgresql_where=text("provider_event_id IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    touch_point_id: Mapped[int] = mapped_column(ForeignKey("touch_points.id"), index=True)
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(12), default="transition")  # or delivery, note
    status: Mapped[str | None] = mapped_column(String(12))
    previous_status: Mapped[str | None] = mapped_column(String(12))
    reason: Mapped[str | None] = mapped_column(String(40))
    detail: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(24))
    provider_event_id: Mapped[str | None] = mapped_column(String(120))


class OptOut(Base):
    __tablename__ = "opt_outs"
    __table_args__ = (UniqueConstraint("channel", "address", "purpose"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    channel: Mapped[str] = mapped_column(String(12))
    address: Mapped[str] = mapped_column(String(254))
    purpose: Mapped[str] = mapped_column(String(16))  # all | marketing | transactional
    source: Mapped[str] = mapped_column(String(40))
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]


class ProviderEvent(Base):
    """Every event a provider reported (status callback, event webhook), once each."""

    __tablename__ = "provider_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(24))
    event_id: Mapped[str] = mapped_column(String(160), unique=True)  # provider's, for dedupe
    kind: Mapped[str] = mapped_column(String(24))  # normalised: delivered, bounced, …
    status: Mapped[str] = mapped_column(String(40))  # the provider's own word
    touch_point_id: Mapped[int | None] = mapped_column(ForeignKey("touch_points.id"),
                                                       index=True)
    provider_message_id: Mapped[str | None] = mapped_column(String(100))
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime]
    detail: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)


class InboundMessage(Base):
    """A message a patient (or anyone) sent us: replies, STOP, HELP, C, R, free text."""

    __tablename__ = "inbound_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(24))
    provider_message_id: Mapped[str] = mapped_column(String(100), unique=True)
    channel: Mapped[str] = mapped_column(String(12))
    from_address: Mapped[str] = mapped_column(String(254), index=True)
    to_address: Mapped[str] = mapped_column(String(254))
    body: Mapped[str] = mapped_column(Text)
    intent: Mapped[str] = mapped_column(String(24))  # stop, start, help, confirm, reschedule, other
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"), index=True)
    touch_point_id: Mapped[int | None] = mapped_column(ForeignKey("touch_points.id"))
    appointment_id: Mapped[int | None] = mapped_column(ForeignKey("appointments.id"))
    staff_status: Mapped[str] = mapped_column(String(12))  # new, done (none needed: "")
    score: Mapped[int | None] = mapped_column(Integer)  # an answer to the 0–10 question
    detail: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime]
    # "possible opt-out": it may revoke consent to texts but is not clear; staff decide
    flag: Mapped[str] = mapped_column(String(24), default="", server_default="")
    due_at: Mapped[datetime | None]  # when staff must have handled it (flagged messages)


class RecoveryCase(Base):
    """Something went wrong for a patient and a person owns putting it right."""

    __tablename__ = "recovery_cases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    cause: Mapped[str] = mapped_column(String(24))  # low_score, complaint, failed_delivery, …
    cause_key: Mapped[str] = mapped_column(String(120), unique=True)  # once per cause
    status: Mapped[str] = mapped_column(String(12))  # open, resolved
    owner: Mapped[str] = mapped_column(String(200), default="")
    detail: Mapped[str] = mapped_column(Text, default="")
    appointment_id: Mapped[int | None] = mapped_column(ForeignKey("appointments.id"))
    touch_point_id: Mapped[int | None] = mapped_column(ForeignKey("touch_points.id"))
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_messages.id"))
    opened_at: Mapped[datetime]
    due_at: Mapped[datetime]
    alerted_at: Mapped[datetime | None]
    escalated_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    resolution: Mapped[str | None] = mapped_column(Text)


class CaseEvent(Base):
    """The append-only history of a recovery case."""

    __tablename__ = "case_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("recovery_cases.id"), index=True)
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(16))  # opened, alerted, escalated, note, resolved
    detail: Mapped[str] = mapped_column(Text, default="")
    by: Mapped[str] = mapped_column(String(100), default="")
    # A cause noted on a case already open for it ("again: …"): seen once, like a case's own.
    cause_key: Mapped[str | None] = mapped_column(String(120), unique=True)


class EngineState(Base):
    __tablename__ = "engine_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime]


class AuditEntry(Base):
    """One action by a person or an integration: a staff member's command, an API key's
    request. Append-only; ``detail`` never holds a full phone number or email."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(200))  # "staff:a@b.c", "api-key:emr", "cli:al"
    action: Mapped[str] = mapped_column(String(64))  # "api.patient.put", "patient.export", …
    target: Mapped[str] = mapped_column(String(200), default="")  # "patient:P1004"
    address: Mapped[str] = mapped_column(String(64), default="")  # where from: an IP, "cli"
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)



class WebhookEndpoint(Base):
    """A URL of the practice's systems that receives outbound webhooks (signed per the
    Standard Webhooks specification with its own secret), for the event types listed."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    secret: Mapped[str] = mapped_column(String(100))  # whsec_…
    event_types: Mapped[list[str]] = mapped_column(JSON, default=list)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    removed_at: Mapped[datetime | None]  # kept for the delivery log


class WebhookMessage(Base):
    """One event to tell the practice's systems about (written in the transaction of the
    change it reports: the outbox). ``payload`` is the body sent, minimum necessary."""

    __tablename__ = "webhook_messages"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # msg_…, the webhook-id
    type: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime]


class WebhookDelivery(Base):
    """One message to one endpoint: its state and when it is tried next."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "message_id"),
        # What the delivery job claims: only pending rows are indexed.
        Index("ix_webhook_deliveries_due", "next_attempt_at",
              sqlite_where=text("status = 'pending'"),
              postgresql_where=text("status = 'pending'")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("webhook_endpoints.id"), index=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("webhook_messages.id"))
    status: Mapped[str] = mapped_column(String(12))  # pending, delivered, failed, cancelled
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    first_attempt_at: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(80))
    claim_expires_at: Mapped[datetime | None]
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class WebhookAttempt(Base):
    """The delivery log: every attempt, with what the endpoint answered (append-only)."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("webhook_deliveries.id"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(index=True)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(300))  # redacted
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)
    outcome: Mapped[str] = mapped_column(String(12))  # delivered, retry, failed
    next_attempt_at: Mapped[datetime | None]

class ApiKey(Base):
    """A key of the REST API (engine/api/keys.py). Only a SHA-256 hash of the key is kept;
    ``prefix`` (a public part of the key) finds the row without comparing every hash."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[str] = mapped_column(String(200))  # comma-separated, e.g. "read:log"
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
class Hl7Message(Base):
    """An HL7 v2 message received (MLLP or `touchpoint import hl7`) and how it was answered.

    One row per sender and message control id (MSH-3, MSH-4, MSH-10): a message sent again
    gets the stored ACK and is not applied twice. Never the message itself (it is PHI):
    ``error`` and ``ack`` name fields and say what is wrong, never a value.
    """

    __tablename__ = "hl7_messages"
    __table_args__ = (UniqueConstraint("sending_application", "sending_facility",
                                       "control_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sending_application: Mapped[str] = mapped_column(String(227), default="")
    sending_facility: Mapped[str] = mapped_column(String(227), default="")
    control_id: Mapped[str] = mapped_column(String(199))
    message_type: Mapped[str] = mapped_column(String(20))  # "SIU^S12", "ADT^A04"
    received_at: Mapped[datetime]
    ack_code: Mapped[str] = mapped_column(String(2))  # AA, AE, AR
    error: Mapped[str] = mapped_column(Text, default="")  # "PID-13: phone is not …"
    ack: Mapped[str] = mapped_column(Text)  # the ACK as sent (no patient data in it)
class StaffUser(Base):
    """A member of the practice's staff who signs in to the console."""

    __tablename__ = "staff_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)  # lower case
    role: Mapped[str] = mapped_column(String(16))  # owner, manager, front-desk, viewer
    phone: Mapped[str | None] = mapped_column(String(20))  # for test texts to oneself
    password_hash: Mapped[str] = mapped_column(String(200))  # argon2id, PHC string
    created_at: Mapped[datetime]
    password_changed_at: Mapped[datetime]
    disabled_at: Mapped[datetime | None]


class StaffSession(Base):
    """A signed-in console session. The browser holds the token; only its hash is kept."""

    __tablename__ = "staff_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256, hex
    user_id: Mapped[int] = mapped_column(ForeignKey("staff_users.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    address: Mapped[str] = mapped_column(String(64), default="")
    ended_at: Mapped[datetime | None]


class DefinitionDraft(Base):
    """An edit of a file under schedules/ or message_templates/ not published yet."""

    __tablename__ = "definition_drafts"

    path: Mapped[str] = mapped_column(String(300), primary_key=True)  # "schedules/x.yaml"
    content: Mapped[str] = mapped_column(Text)
    base_digest: Mapped[str] = mapped_column(String(64), default="")  # the file when begun
    author: Mapped[str] = mapped_column(String(254))
    updated_at: Mapped[datetime]


class DefinitionVersion(Base):
    """A publish: which files changed, from what to what, by whom."""

    __tablename__ = "definition_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    author: Mapped[str] = mapped_column(String(254))
    at: Mapped[datetime]
    note: Mapped[str] = mapped_column(Text, default="")
    files: Mapped[dict[str, Any]] = mapped_column(default=dict)  # path → {before, after}


class WaitlistEntry(Base):
    """A patient who wants an earlier visit, and which freed slots suit them (engine/waitlist.py).

    Empty preferences match anything: no days is any day, no times is any time, no
    therapist is any therapist. One entry per patient; ``status`` is ``waiting`` (offered
    slots as they free up), ``claimed`` (won a slot) or ``withdrawn``.
    """

    __tablename__ = "waitlist_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), unique=True)
    days: Mapped[list[str]] = mapped_column(JSON, default=list)  # ["mon", "wed"]: local days
    time_from: Mapped[time | None] = mapped_column(Time)  # local time of day, inclusive
    time_until: Mapped[time | None] = mapped_column(Time)  # the visit starts before it
    therapist: Mapped[str] = mapped_column(String(100), default="")
    location: Mapped[str] = mapped_column(String(200), default="")
    visit_type: Mapped[str] = mapped_column(String(100), default="")
    earliest: Mapped[date | None] = mapped_column(Date)  # first local day a slot may be on
    latest: Mapped[date | None] = mapped_column(Date)  # last local day
    status: Mapped[str] = mapped_column(String(12), default="waiting")
    source: Mapped[str] = mapped_column(String(300), default="")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # The EMR's own last-change time (the API's `updated_at`): an older update is refused.
    source_updated_at: Mapped[datetime | None]


class Slot(Base):
    """A freed visit time offered to the waitlist: a cancellation's, or one opened through
    the API or the console. ``status``: ``open`` (offered in waves), ``claimed`` (a patient
    said yes: staff confirm it), ``booked`` (confirmed), ``expired`` (nobody took it
    before it started) or ``closed`` (withdrawn by staff or the EMR)."""

    __tablename__ = "slots"
    __table_args__ = (Index(None, "status", "start_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    appointment_id: Mapped[int | None] = mapped_column(ForeignKey("appointments.id"),
                                                       unique=True)
    # The patient who cancelled it: never offered their own slot back
    freed_by_patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"))
    start_at: Mapped[datetime]
    duration_minutes: Mapped[int] = mapped_column(Integer)
    visit_type: Mapped[str] = mapped_column(String(100), default="")
    therapist: Mapped[str] = mapped_column(String(100), default="")
    location: Mapped[str] = mapped_column(String(200), default="")
    source: Mapped[str] = mapped_column(String(16))  # cancellation, api, console
    status: Mapped[str] = mapped_column(String(12), default="open")
    waves: Mapped[int] = mapped_column(Integer, default=0)  # waves offered so far
    next_wave_at: Mapped[datetime | None]  # when the next wave may go (open slots)
    claimed_by_patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"))
    claimed_at: Mapped[datetime | None]
    booked_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]  # booked, expired or closed: when it stopped
    opened_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class SlotOffer(Base):
    """One patient offered one slot. ``status``: ``offered``, ``claimed`` (their yes won),
    ``taken`` (their yes came after another's), ``expired`` or ``withdrawn`` (the slot
    closed first)."""

    __tablename__ = "slot_offers"
    __table_args__ = (UniqueConstraint("slot_id", "patient_id"),
                      Index(None, "patient_id", "status"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slot_id: Mapped[int] = mapped_column(ForeignKey("slots.id"))
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    wave: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(12), default="offered")
    offered_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    answered_at: Mapped[datetime | None]


# The tables, for Core queries (the hot paths use Core, not ORM sessions).
patients = cast(Table, Patient.__table__)
appointments = cast(Table, Appointment.__table__)
events = cast(Table, Event.__table__)
touch_points = cast(Table, TouchPoint.__table__)
# Write `status = 'planned'` literally where a query should use the partial index on
# pending rows: a bound parameter could keep a planner from proving the index applies.
PENDING = text("touch_points.status = 'planned'")
IN_FLIGHT = text("touch_points.status = 'sending'")
history = cast(Table, TouchPointHistory.__table__)
opt_outs = cast(Table, OptOut.__table__)
engine_state = cast(Table, EngineState.__table__)
provider_events = cast(Table, ProviderEvent.__table__)
inbound_messages = cast(Table, InboundMessage.__table__)
referrers = cast(Table, Referrer.__table__)
contacts = cast(Table, Contact.__table__)
recovery_cases = cast(Table, RecoveryCase.__table__)
case_events = cast(Table, CaseEvent.__table__)
audit_log = cast(Table, AuditEntry.__table__)
webhook_endpoints = cast(Table, WebhookEndpoint.__table__)
webhook_messages = cast(Table, WebhookMessage.__table__)
webhook_deliveries = cast(Table, WebhookDelivery.__table__)
webhook_attempts = cast(Table, WebhookAttempt.__table__)
api_keys = cast(Table, ApiKey.__table__)
hl7_messages = cast(Table, Hl7Message.__table__)
staff_users = cast(Table, StaffUser.__table__)
staff_sessions = cast(Table, StaffSession.__table__)
definition_drafts = cast(Table, DefinitionDraft.__table__)
definition_versions = cast(Table, DefinitionVersion.__table__)
waitlist_entries = cast(Table, WaitlistEntry.__table__)
slots = cast(Table, Slot.__table__)
slot_offers = cast(Table, SlotOffer.__table__)
