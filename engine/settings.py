"""Practice settings: one documented order, one registry.

Each setting is looked up in this order, first found wins:

1. the command-line flag (where there is one, e.g. ``--db``),
2. its ``TOUCHPOINT_*`` environment variable (provider credentials keep the provider's
   own names, e.g. ``TWILIO_AUTH_TOKEN``),
3. ``touchpoint.toml`` (``--config FILE``; by default ``./touchpoint.toml`` if present),
4. the default.

:data:`SETTINGS` is the registry; ``docs/settings.md`` documents every entry and a test
fails if one is missing there. A required setting that is missing raises
:class:`~engine.errors.ConfigError` naming the flag, the variable and the file key.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import phonenumbers
from babel.numbers import is_currency
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engine.errors import ConfigError
from engine.privacy import mask_database_url
from engine.timing import QuietHours, format_duration, parse_clock, parse_duration, zone

DEFAULT_CONFIG = "touchpoint.toml"


@dataclass(frozen=True)
class Setting:
    key: str  # dotted key in touchpoint.toml, e.g. "practice.name"
    env: str
    help: str
    default: object = None
    flag: str | None = None
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("database.url", "TOUCHPOINT_DATABASE_URL",
            "SQLAlchemy database URL (SQLite file or postgresql+psycopg://…).",
            "sqlite:///touchpoint.db", flag="--db"),
    Setting("practice.name", "TOUCHPOINT_PRACTICE_NAME",
            "The practice's name, as patients know it (appears in every transactional SMS)."),
    Setting("practice.phone", "TOUCHPOINT_PRACTICE_PHONE",
            "The practice's phone number patients call back."),
    Setting("practice.address", "TOUCHPOINT_PRACTICE_ADDRESS",
            "Street address (directions, and the physical address marketing email needs).", ""),
    Setting("practice.timezone", "TOUCHPOINT_PRACTICE_TIMEZONE",
            "IANA timezone of the practice; recipients without their own timezone use it."),
    Setting("practice.language", "TOUCHPOINT_PRACTICE_LANGUAGE",
            "Language of recipients who have none on file.", "en"),
    Setting("practice.website", "TOUCHPOINT_PRACTICE_WEBSITE", "The practice's website.", ""),
    Setting("practice.links", "TOUCHPOINT_PRACTICE_LINKS",
            "Named links templates can use as practice.links.NAME (TOML table; env: NAME=URL,…).",
            {}),
    Setting("quiet_hours.send_from", "TOUCHPOINT_SEND_FROM",
            "Earliest local time of day a message may be delivered (recipient's timezone).",
            "08:00"),
    Setting("quiet_hours.send_until", "TOUCHPOINT_SEND_UNTIL",
            "Time of day from which nothing is delivered (recipient's timezone).", "21:00"),
    Setting("phone.default_region", "TOUCHPOINT_PHONE_REGION",
            "Region for phone numbers written without a country code (ISO 3166 code).", "US"),
    Setting("paths.schedules", "TOUCHPOINT_SCHEDULES", "Folder of journey definitions.",
            "schedules", flag="--schedules"),
    Setting("paths.templates", "TOUCHPOINT_TEMPLATES", "Folder of message templates.",
            "message_templates", flag="--templates"),
    Setting("practice.visit_price", "TOUCHPOINT_VISIT_PRICE",
            "What one visit is worth to the practice (e.g. 120): the value of visits a "
            "waitlist recovers, and practice.visit_price in templates. Unset: not shown."),
    Setting("practice.currency", "TOUCHPOINT_CURRENCY",
            "ISO 4217 currency of practice.visit_price.", "USD"),
    Setting("practice.booking_url", "TOUCHPOINT_BOOKING_URL",
            "The practice's online booking page: patient.booking_link is it with "
            "?patient=TOKEN (a signed patient token) when the EMR gives no booking_url of "
            "its own. Unset: no booking link.", ""),
    Setting("links.secret", "TOUCHPOINT_LINKS_SECRET",
            "Signs the patient tokens of booking and intake links; when unset, the key of "
            "unsubscribe links (webhooks.secret_key, else the database's) is used.",
            "", secret=True),
    Setting("links.max_age", "TOUCHPOINT_LINKS_MAX_AGE",
            "How long a patient token in a link is accepted (GET /api/v1/patient-tokens/…).",
            "60d"),
    Setting("daemon.plan_cron", "TOUCHPOINT_PLAN_CRON",
            "When the daemon checks plans of care: nudges under-scheduled patients, opens "
            "at-risk cases (crontab, practice's timezone).", "0 9 * * *"),
    Setting("practice.staff_email", "TOUCHPOINT_STAFF_EMAIL",
            "Where staff alerts go (reschedule requests, replies to read).", ""),
    Setting("channels.sms_provider", "TOUCHPOINT_SMS_PROVIDER",
            "Which channel sends SMS: twilio, fake or console.", flag="--sms-provider"),
    Setting("channels.email_provider", "TOUCHPOINT_EMAIL_PROVIDER",
            "Which channel sends email: sendgrid, fake or console.", flag="--email-provider"),
    Setting("channels.fake_latency", "TOUCHPOINT_FAKE_LATENCY",
            "How long the fake channel takes per message (demos, load tests), e.g. 20ms.",
            "0s"),
    Setting("channels.provider_timeout", "TOUCHPOINT_PROVIDER_TIMEOUT",
            "Seconds to wait for a provider's answer (connect and read).", 10.0),
    Setting("twilio.account_sid", "TWILIO_ACCOUNT_SID", "Twilio account SID (AC…)."),
    Setting("twilio.auth_token", "TWILIO_AUTH_TOKEN",
            "Twilio auth token (also verifies Twilio's webhooks).", secret=True),
    Setting("twilio.from_number", "TWILIO_FROM_NUMBER",
            "The number texts come from (E.164); or set a Messaging Service."),
    Setting("twilio.messaging_service_sid", "TWILIO_MESSAGING_SERVICE_SID",
            "Twilio Messaging Service SID (MG…), instead of a From number."),
    Setting("twilio.api_url", "TOUCHPOINT_TWILIO_API_URL",
            "Base URL of Twilio's REST API (regional or proxy endpoints, tests).", ""),
    Setting("sendgrid.api_key", "SENDGRID_API_KEY", "SendGrid API key.", secret=True),
    Setting("sendgrid.api_url", "TOUCHPOINT_SENDGRID_API_URL",
            "Base URL of SendGrid's API (regional or proxy endpoints, tests).", ""),
    Setting("sendgrid.webhook_public_key", "SENDGRID_WEBHOOK_PUBLIC_KEY",
            "The Event Webhook's verification key (from SendGrid's Mail Settings)."),
    Setting("email.from_address", "TOUCHPOINT_EMAIL_FROM",
            "The address emails come from (a verified sender); \"Name <addr>\" allowed."),
    Setting("email.unsubscribe_mailto", "TOUCHPOINT_UNSUBSCRIBE_MAILTO",
            "Mailbox for mailto: unsubscribes (routed to /webhooks/sendgrid/inbound); "
            "required with SendGrid.", ""),
    Setting("email.unsubscribe_transactional", "TOUCHPOINT_UNSUBSCRIBE_TRANSACTIONAL",
            "Also put List-Unsubscribe headers and a link in transactional emails.", False),
    Setting("webhooks.public_url", "TOUCHPOINT_PUBLIC_URL",
            "The https base URL where providers reach `touchpoint serve`.", ""),
    Setting("webhooks.secret_key", "TOUCHPOINT_SECRET_KEY",
            "Signs unsubscribe links; when unset, a random key kept in the database is used.",
            "", secret=True),
    Setting("console.session_idle", "TOUCHPOINT_SESSION_IDLE",
            "A console session ends after this long without a request (sign in again).",
            "30m"),
    Setting("console.session_max", "TOUCHPOINT_SESSION_MAX",
            "A console session ends this long after sign-in, however active.", "12h"),
    Setting("daemon.tick", "TOUCHPOINT_TICK",
            "How often the daemon plans and sends what is due.", "15s"),
    Setting("daemon.sweep_cron", "TOUCHPOINT_SWEEP_CRON",
            "When the daemon looks for lapsed patients (crontab, practice's timezone).",
            "5 * * * *"),
    Setting("daemon.housekeeping_cron", "TOUCHPOINT_HOUSEKEEPING_CRON",
            "When the daemon does its housekeeping (crontab, practice's timezone).",
            "30 3 * * *"),
    Setting("caps.mode", "TOUCHPOINT_CAP_MODE",
            "consent: texts go with the patient's consent on file, within the courtesy limit "
            "caps.sms_per_day; exemption: the practice texts without consent, under the FCC "
            "healthcare exemption (transactional texts only, no SMS consent needed, at most "
            "160 characters, caps.transactional_sms_per_day and _per_week, counting the "
            "higher-priority texts planned so a nudge never takes a reminder's slot).",
            "consent"),
    Setting("caps.sms_per_day", "TOUCHPOINT_CAP_SMS_PER_DAY",
            "Consent mode: courtesy limit on texts per recipient per local day; a text "
            "waits for the next day when as many of the same or a higher step priority went "
            "that day (a visit's reminders never wait); 0: no limit.", 2),
    Setting("caps.transactional_sms_per_day", "TOUCHPOINT_CAP_TRANSACTIONAL_SMS_PER_DAY",
            "Exemption mode: texts a recipient gets per local day (FCC healthcare "
            "exemption: 1).", 1),
    Setting("caps.transactional_sms_per_week", "TOUCHPOINT_CAP_TRANSACTIONAL_SMS_PER_WEEK",
            "Exemption mode: texts a recipient gets per 7 days (FCC healthcare exemption: "
            "3).", 3),
    Setting("caps.marketing_per_week", "TOUCHPOINT_CAP_MARKETING_PER_WEEK",
            "Marketing messages (any channel) a patient gets per 7 days.", 2),
    Setting("channels.fake_outbox", "TOUCHPOINT_FAKE_OUTBOX",
            "File where the fake channel appends each message it takes (JSON lines).", None),
    Setting("dispatch.batch_size", "TOUCHPOINT_BATCH_SIZE",
            "Touch points a worker claims at a time.", 500),
    Setting("dispatch.send_timeout", "TOUCHPOINT_SEND_TIMEOUT",
            "After this long in 'sending', a touch point whose worker vanished becomes "
            "'unknown'; also how long a worker's claim on due touch points lasts.", "5m"),
    Setting("dispatch.max_attempts", "TOUCHPOINT_MAX_ATTEMPTS",
            "Attempts on transient provider errors before a touch point fails.", 5),
    Setting("dispatch.retry_backoff", "TOUCHPOINT_RETRY_BACKOFF",
            "First retry delay after a transient error; doubles on each attempt.", "1m"),
    Setting("dispatch.default_expiry", "TOUCHPOINT_DEFAULT_EXPIRY",
            "How late a step may still be sent when it sets no expires_after.", "1d"),
    Setting("dispatch.reconcile_after", "TOUCHPOINT_RECONCILE_AFTER",
            "How long an 'unknown' text waits for a status callback before Twilio's message "
            "list is searched for it (found: 'sent'; not found: sent again once).", "10m"),
    Setting("templates.sensitive_fields", "TOUCHPOINT_SENSITIVE_FIELDS",
            "Field names `touchpoint validate` treats as clinical: a warning in an SMS, an "
            "error in a message to a referrer (env: comma-separated).",
            ["diagnosis", "body_part", "insurance", "clinical_notes", "visit_type"]),
    Setting("recovery.owner_name", "TOUCHPOINT_RECOVERY_OWNER_NAME",
            "The staff member who owns recovery cases and signs the recovery message "
            "(case.owner in templates).", ""),
    Setting("recovery.owner_email", "TOUCHPOINT_RECOVERY_OWNER_EMAIL",
            "Where a new recovery case is announced (default: practice.staff_email).", ""),
    Setting("recovery.owner_phone", "TOUCHPOINT_RECOVERY_OWNER_PHONE",
            "Also text new cases to this number (sent during the practice's daytime).", ""),
    Setting("recovery.escalate_to", "TOUCHPOINT_RECOVERY_ESCALATE_TO",
            "Who is emailed when a case passes its due time unresolved (default: the owner).",
            ""),
    Setting("recovery.sla_business_days", "TOUCHPOINT_RECOVERY_SLA_BUSINESS_DAYS",
            "Business days a case may stay open before it is escalated.", 1),
    Setting("recovery.business_days", "TOUCHPOINT_RECOVERY_BUSINESS_DAYS",
            "The practice's working days, e.g. mon-fri or mon,tue,wed,thu,fri,sat.",
            "mon-fri"),
    Setting("recovery.late_cancellation", "TOUCHPOINT_RECOVERY_LATE_CANCELLATION",
            "A cancellation this close to the visit opens a recovery case.", "24h"),
    Setting("referrals.monthly_digest", "TOUCHPOINT_REFERRALS_MONTHLY_DIGEST",
            "Email each referral source a digest of its patients on the 1st of the month.",
            True),
    Setting("referrals.digest_at", "TOUCHPOINT_REFERRALS_DIGEST_AT",
            "Local time (practice's timezone) the monthly digest goes out.", "08:00"),
    Setting("api.rate_limit", "TOUCHPOINT_API_RATE_LIMIT",
            "Requests one REST API key may make, as COUNT/PERIOD (second, minute, hour or "
            "day); more get 429 with Retry-After. A burst of COUNT is allowed, then the "
            "rate (a token bucket per key, in the `touchpoint serve` process).", "600/minute"),
    Setting("referrals.allowed_fields", "TOUCHPOINT_REFERRALS_ALLOWED_FIELDS",
            "Patient custom fields referrer messages may show (e.g. diagnosis); none by "
            "default: minimum necessary (env: comma-separated).", []),
    Setting("retention.message_bodies", "TOUCHPOINT_RETENTION_MESSAGE_BODIES",
            "How long the text of messages is kept: the daemon's housekeeping removes what "
            "was sent, received or reported by a provider longer ago (rows, statuses and "
            "reasons stay); 0 or off keeps it forever.", "365d"),
    Setting("hl7.mllp_port", "TOUCHPOINT_MLLP_PORT",
            "`touchpoint serve` also listens for HL7 v2 over MLLP on this port (off when "
            "unset); see docs/hl7.md.", None, flag="--mllp-port"),
    Setting("hl7.patient_id_type", "TOUCHPOINT_HL7_PATIENT_ID_TYPE",
            "Which PID-3 repetition is the patient id: the one whose identifier type "
            "(PID-3.5) is this, e.g. MR; empty: the first repetition.", ""),
    Setting("hl7.appointment_id_field", "TOUCHPOINT_HL7_APPOINTMENT_ID_FIELD",
            "The field holding the appointment id: SCH-2 (filler id, the scheduling system's) "
            "or SCH-1 (placer id), or any field path.", "SCH-2"),
    Setting("hl7.visit_type_field", "TOUCHPOINT_HL7_VISIT_TYPE_FIELD",
            "The field holding the visit type (an HL7 field path such as AIS-3.2 or ZSC-1).",
            "AIS-3"),
    Setting("hl7.location_field", "TOUCHPOINT_HL7_LOCATION_FIELD",
            "The field holding the location (an HL7 field path such as AIL-3.4).", "AIL-3"),
    Setting("hl7.provider_field", "TOUCHPOINT_HL7_PROVIDER_FIELD",
            "The field holding the therapist: AIP-3 (a name, else AIG-3) or any field path.",
            "AIP-3"),
    Setting("hl7.sms_consent", "TOUCHPOINT_HL7_SMS_CONSENT",
            "A patient or contact first seen through HL7 with a phone number has SMS consent "
            "for healthcare texts (FCC 15-72: a number given for care); never marketing. An "
            "update never changes consents on file.", True),
    Setting("hl7.email_consent", "TOUCHPOINT_HL7_EMAIL_CONSENT",
            "A patient or contact first seen through HL7 with an email address has email "
            "consent for healthcare (non-marketing) email.", True),
    Setting("fhir.base_url", "TOUCHPOINT_FHIR_BASE_URL",
            "Base URL of the EMR's FHIR R4 API that `touchpoint fhir sync` reads, e.g. "
            "https://emr.example.com/fhir/r4.", ""),
    Setting("fhir.client_id", "TOUCHPOINT_FHIR_CLIENT_ID",
            "The client id the EMR gave Touchpoint when its public key was registered "
            "(SMART Backend Services).", ""),
    Setting("fhir.token_url", "TOUCHPOINT_FHIR_TOKEN_URL",
            "The EMR's OAuth token endpoint (token_endpoint in its "
            ".well-known/smart-configuration).", ""),
    Setting("fhir.private_key_file", "TOUCHPOINT_FHIR_PRIVATE_KEY_FILE",
            "PEM file of the practice's private key (RSA: RS384, or EC P-384: ES384) that "
            "signs the token requests.", None),
    Setting("fhir.key_id", "TOUCHPOINT_FHIR_KEY_ID",
            "kid of the registered public key (default: its RFC 7638 thumbprint, as "
            "`touchpoint fhir jwks` prints it).", ""),
    Setting("fhir.scope", "TOUCHPOINT_FHIR_SCOPE", "The scopes asked for.",
            "system/Patient.read system/RelatedPerson.read system/Appointment.read"),
    Setting("fhir.page_size", "TOUCHPOINT_FHIR_PAGE_SIZE",
            "Resources asked for per page (_count); each page is one transaction.", 100),
    Setting("fhir.sync_every", "TOUCHPOINT_FHIR_SYNC_EVERY",
            "How often the daemon runs `fhir sync`, e.g. 5m; unset: the daemon does not.",
            None),
    Setting("fhir.patient_identifier_system", "TOUCHPOINT_FHIR_PATIENT_IDENTIFIER_SYSTEM",
            "Take patient_id from the Patient identifier of this system (e.g. the MRN's); "
            "unset: from Patient.id.", ""),
    Setting("fhir.sms_consent", "TOUCHPOINT_FHIR_SMS_CONSENT",
            "SMS consent recorded for a patient or contact first seen in FHIR (FHIR carries "
            "none; a number given for care is consent to healthcare texts, FCC 15-72). "
            "Never changes the consent of one already on file. Marketing consent is never "
            "given by an import.", True),
    Setting("fhir.email_consent", "TOUCHPOINT_FHIR_EMAIL_CONSENT",
            "Email consent recorded for a patient or contact first seen in FHIR (never "
            "changes one on file).", True),
    Setting("waitlist.wave_size", "TOUCHPOINT_WAITLIST_WAVE_SIZE",
            "How many waitlisted patients one wave offers a freed slot to (the best "
            "matches first); see docs/waitlist.md.", 3),
    Setting("waitlist.wave_every", "TOUCHPOINT_WAITLIST_WAVE_EVERY",
            "How long after one wave the next goes, while nobody has claimed the slot.",
            "10m"),
    Setting("waitlist.offer_expiry", "TOUCHPOINT_WAITLIST_OFFER_EXPIRY",
            "How long an offer stands (it also ends when the slot is claimed or starts).",
            "2h"),
    Setting("waitlist.auto_confirm", "TOUCHPOINT_WAITLIST_AUTO_CONFIRM",
            "A claimed slot counts as booked at once and the patient's confirmation says "
            "so: only with an API integration that books the slot.claimed webhook's slot in "
            "the EMR. Off: a staff member confirms each claim.", False),
)

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_OFF = {"0", "off", "never", "forever"}  # a retention that keeps forever

_BY_KEY = {s.key: s for s in SETTINGS}
_TABLE_SETTINGS = {"practice.links"}  # free-form tables: their sub-keys are not checked
# Folders and files: a relative path written in touchpoint.toml is relative to that file.
_PATH_SETTINGS = {"paths.schedules", "paths.templates", "channels.fake_outbox",
                  "fhir.private_key_file"}


def _where(setting: Setting, config_file: Path | None = None) -> str:
    section, _, name = setting.key.rpartition(".")
    places = [setting.flag, setting.env] if setting.flag else [setting.env]
    return f"{', '.join(places)}, or [{section}] {name} in {config_file or DEFAULT_CONFIG}"


class Practice(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str | None = None
    phone: str | None = None
    address: str = ""
    timezone: str | None = None
    language: str = "en"
    website: str = ""
    links: dict[str, str] = Field(default_factory=dict)
    staff_email: str = ""
    booking_url: str = ""
    visit_price: Decimal | None = Field(default=None, ge=0)
    currency: str = "USD"

    @field_validator("currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        if not is_currency(value.upper()):
            raise ValueError(f"{value!r} is not an ISO 4217 currency code (e.g. USD, EUR)")
        return value.upper()

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            zone(value)
        return value

    @field_validator("booking_url")
    @classmethod
    def _web_address(cls, value: str) -> str:
        if value and not value.startswith(("https://", "http://")):
            raise ValueError("must be a web address starting with https://")
        return value


class Links(BaseModel):
    model_config = ConfigDict(frozen=True)

    secret: str = Field("", repr=False)
    max_age: timedelta = timedelta(days=60)

    @field_validator("max_age", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return parse_duration(value) if isinstance(value, str) else value


class Channels(BaseModel):
    model_config = ConfigDict(frozen=True)

    sms_provider: Literal["twilio", "fake", "console"] | None = None
    email_provider: Literal["sendgrid", "fake", "console"] | None = None
    fake_outbox: Path | None = None
    fake_latency: timedelta = timedelta(0)
    provider_timeout: float = Field(10.0, gt=0, le=120)

    @field_validator("fake_latency", mode="before")
    @classmethod
    def _latency(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().endswith("ms"):
            return timedelta(milliseconds=float(value.strip()[:-2]))
        return parse_duration(value) if isinstance(value, str) else value


class Twilio(BaseModel):
    model_config = ConfigDict(frozen=True)

    account_sid: str | None = None
    auth_token: str | None = Field(None, repr=False)
    from_number: str | None = None
    messaging_service_sid: str | None = None
    api_url: str = ""


class SendGrid(BaseModel):
    model_config = ConfigDict(frozen=True)

    api_key: str | None = Field(None, repr=False)
    api_url: str = ""
    webhook_public_key: str | None = None


class Email(BaseModel):
    model_config = ConfigDict(frozen=True)

    from_address: str | None = None
    unsubscribe_mailto: str = ""
    unsubscribe_transactional: bool = False


_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


class Webhooks(BaseModel):
    model_config = ConfigDict(frozen=True)

    public_url: str = ""
    secret_key: str = Field("", repr=False)

    @field_validator("public_url")
    @classmethod
    def _url(cls, value: str) -> str:
        local = value.startswith("http://") and urlsplit(value).hostname in _LOOPBACK
        if value and not value.startswith("https://") and not local:
            raise ValueError("must start with https:// (providers call it from the internet, and "
                             "patients open unsubscribe links on it); http:// only for "
                             "localhost")
        return value.rstrip("/")


class Daemon(BaseModel):
    model_config = ConfigDict(frozen=True)

    tick: timedelta = timedelta(seconds=15)
    sweep_cron: str = "5 * * * *"
    housekeeping_cron: str = "30 3 * * *"
    plan_cron: str = "0 9 * * *"

    @field_validator("tick", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("sweep_cron", "housekeeping_cron", "plan_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a crontab expression ({exc}) — write "
                             "minute hour day month weekday, e.g. \"5 * * * *\"") from None
        return value


class Console(BaseModel):
    model_config = ConfigDict(frozen=True)

    session_idle: timedelta = timedelta(minutes=30)
    session_max: timedelta = timedelta(hours=12)

    @field_validator("session_idle", "session_max", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return parse_duration(value) if isinstance(value, str) else value


class Caps(BaseModel):
    model_config = ConfigDict(frozen=True)

    mode: Literal["consent", "exemption"] = "consent"
    sms_per_day: int = Field(2, ge=0)
    transactional_sms_per_day: int = Field(1, ge=0)
    transactional_sms_per_week: int = Field(3, ge=0)
    marketing_per_week: int = Field(2, ge=0)


class Dispatch(BaseModel):
    model_config = ConfigDict(frozen=True)

    batch_size: int = Field(500, ge=1, le=10_000)
    send_timeout: timedelta = timedelta(minutes=5)
    max_attempts: int = Field(5, ge=1, le=50)
    retry_backoff: timedelta = timedelta(minutes=1)
    default_expiry: timedelta = timedelta(days=1)
    reconcile_after: timedelta = timedelta(minutes=10)

    @field_validator("send_timeout", "retry_backoff", "default_expiry", "reconcile_after",
                     mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return parse_duration(value) if isinstance(value, str) else value


class Recovery(BaseModel):
    model_config = ConfigDict(frozen=True)

    owner_name: str = ""
    owner_email: str = ""
    owner_phone: str = ""
    escalate_to: str = ""
    sla_business_days: int = Field(1, ge=1, le=30)
    business_days: frozenset[int] = frozenset(range(5))  # Monday = 0
    late_cancellation: timedelta = timedelta(hours=24)

    @field_validator("business_days", mode="before")
    @classmethod
    def _days(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        days: set[int] = set()
        for part in value.lower().replace(" ", "").split(","):
            first, _, last = part.partition("-")
            if first not in _DAYS or (last and last not in _DAYS):
                raise ValueError(f"{value!r} is not a list of days — write e.g. mon-fri or "
                                 "mon,tue,wed,thu,fri")
            start, end = _DAYS.index(first), _DAYS.index(last or first)
            days.update(range(start, end + 1) if start <= end else
                        [*range(start, 7), *range(0, end + 1)])
        return frozenset(days)

    @field_validator("late_cancellation", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("owner_phone")
    @classmethod
    def _phone(cls, value: str) -> str:
        if not value:
            return value
        try:
            number = phonenumbers.parse(value, None)
        except phonenumbers.NumberParseException:
            number = None
        if number is None or not phonenumbers.is_valid_number(number):
            raise ValueError(f"{value!r} is not a phone number in international form — "
                             "write it as +13125550111")
        return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


class Waitlist(BaseModel):
    model_config = ConfigDict(frozen=True)

    wave_size: int = Field(3, ge=1, le=50)
    wave_every: timedelta = timedelta(minutes=10)
    offer_expiry: timedelta = timedelta(hours=2)
    auto_confirm: bool = False

    @field_validator("wave_every", "offer_expiry", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("wave_every", "offer_expiry")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than 0, e.g. 10m")
        return value


class Templates(BaseModel):
    model_config = ConfigDict(frozen=True)

    sensitive_fields: tuple[str, ...] = ("diagnosis", "body_part", "insurance",
                                         "clinical_notes", "visit_type")

    @field_validator("sensitive_fields", mode="before")
    @classmethod
    def _names(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return value


class Referrals(BaseModel):
    model_config = ConfigDict(frozen=True)

    monthly_digest: bool = True
    digest_at: time = time(8, 0)
    allowed_fields: tuple[str, ...] = ()

    @field_validator("digest_at", mode="before")
    @classmethod
    def _clock(cls, value: object) -> object:
        return parse_clock(value) if isinstance(value, str) else value

    @field_validator("allowed_fields", mode="before")
    @classmethod
    def _names(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return value


class Retention(BaseModel):
    model_config = ConfigDict(frozen=True)

    message_bodies: timedelta | None = timedelta(days=365)  # None: kept forever

    @field_validator("message_bodies", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in _OFF:
            return None
        if isinstance(value, str):
            return parse_duration(value)
        if value == 0 and not isinstance(value, bool):  # `message_bodies = 0` in the file
            return None
        return value

    @field_validator("message_bodies")
    @classmethod
    def _positive(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value <= timedelta(0):
            return None
        return value


_PERIODS = {"second": timedelta(seconds=1), "minute": timedelta(minutes=1),
            "hour": timedelta(hours=1), "day": timedelta(days=1)}


class Api(BaseModel):
    model_config = ConfigDict(frozen=True)

    rate_limit: str = "600/minute"

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, value: str) -> str:
        count, _, period = value.replace(" ", "").lower().partition("/")
        period = period.removesuffix("s") if period != "s" else period
        period = {"s": "second", "sec": "second", "m": "minute", "min": "minute",
                  "h": "hour", "hr": "hour", "d": "day"}.get(period, period)
        if not count.isdigit() or int(count) < 1 or period not in _PERIODS:
            raise ValueError(f"{value!r} is not a rate — write COUNT/PERIOD, e.g. 600/minute "
                             "(period: second, minute, hour or day)")
        return f"{int(count)}/{period}"

    @property
    def rate(self) -> tuple[int, timedelta]:
        """(requests, per period) of :attr:`rate_limit`."""
        count, period = self.rate_limit.split("/")
        return int(count), _PERIODS[period]
class Hl7(BaseModel):
    """HL7 v2 over MLLP (engine/hl7): where the listener is and which fields mean what."""

    model_config = ConfigDict(frozen=True)

    mllp_port: int | None = Field(None, ge=0, le=65535)  # (0: any free port, for tests)
    patient_id_type: str = ""
    appointment_id_field: str = "SCH-2"
    visit_type_field: str = "AIS-3"
    location_field: str = "AIL-3"
    provider_field: str = "AIP-3"
    sms_consent: bool = True
    email_consent: bool = True

    @field_validator("appointment_id_field", "visit_type_field", "location_field",
                     "provider_field")
    @classmethod
    def _field_path(cls, value: str) -> str:
        from engine.hl7.fields import parse_field_path

        return str(parse_field_path(value))
class Fhir(BaseModel):
    model_config = ConfigDict(frozen=True)

    base_url: str = ""
    client_id: str = ""
    token_url: str = ""
    private_key_file: Path | None = None
    key_id: str = ""
    scope: str = "system/Patient.read system/RelatedPerson.read system/Appointment.read"
    page_size: int = Field(100, ge=1, le=1000)
    sync_every: timedelta | None = None
    patient_identifier_system: str = ""
    sms_consent: bool = True
    email_consent: bool = True

    @field_validator("base_url", "token_url")
    @classmethod
    def _url(cls, value: str) -> str:
        local = value.startswith("http://") and urlsplit(value).hostname in _LOOPBACK
        if value and not value.startswith("https://") and not local:
            raise ValueError("must start with https:// (it carries patient data and access "
                             "tokens); http:// only for localhost")
        return value.rstrip("/")

    @field_validator("sync_every", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return parse_duration(value) if isinstance(value, str) else value


class Settings(BaseModel):
    """Validated settings. Build with :func:`load_settings`."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    database_url: str
    practice: Practice
    send_from: time
    send_until: time
    phone_region: str
    schedules_dir: Path
    templates_dir: Path
    channels: Channels
    dispatch: Dispatch
    twilio: Twilio = Twilio()
    sendgrid: SendGrid = SendGrid()
    email: Email = Email()
    webhooks: Webhooks = Webhooks()
    links: Links = Links()
    caps: Caps = Caps()
    console: Console = Console()
    daemon: Daemon = Daemon()
    recovery: Recovery = Recovery()
    referrals: Referrals = Referrals()
    api: Api = Api()
    templates: Templates = Templates()
    retention: Retention = Retention()
    hl7: Hl7 = Hl7()
    fhir: Fhir = Fhir()
    waitlist: Waitlist = Waitlist()
    config_file: Path | None = None

    @field_validator("send_from", "send_until", mode="before")
    @classmethod
    def _clock(cls, value: object) -> object:
        return parse_clock(value) if isinstance(value, str) else value

    @field_validator("phone_region")
    @classmethod
    def _region(cls, value: str) -> str:
        region = value.upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{value!r} is not a phone region — use a code such as US or CA")
        return region

    @property
    def quiet_hours(self) -> QuietHours:
        return QuietHours(self.send_from, self.send_until)

    def require(self, key: str) -> Any:
        """The value of a required setting, or a ConfigError that says where to set it."""
        value: Any = self
        for part in _FIELD_PATH[key]:
            value = getattr(value, part)
        if value in (None, ""):
            raise ConfigError(f"setting {key} is not set — set it with "
                              f"{_where(_BY_KEY[key], self.config_file)}")
        return value

    def describe(self) -> dict[str, str]:
        """Every setting with its effective value, secrets masked (for `touchpoint config`)."""
        shown: dict[str, str] = {}
        for setting in SETTINGS:
            value: Any = self
            for part in _FIELD_PATH[setting.key]:
                value = getattr(value, part)
            if isinstance(value, timedelta):
                value = format_duration(value)
            elif value is None and setting.key == "retention.message_bodies":
                value = "off"
            elif isinstance(value, time):
                value = f"{value:%H:%M}"
            elif isinstance(value, frozenset):
                value = ",".join(_DAYS[d] for d in sorted(value))
            elif isinstance(value, tuple):
                value = ",".join(value)
            elif setting.key == "database.url":
                value = mask_database_url(str(value))
            shown[setting.key] = "•••" if setting.secret and value else str(value)
        return shown


# Where each registry key lands in the Settings model.
_FIELD_PATH: dict[str, tuple[str, ...]] = {
    "database.url": ("database_url",),
    "quiet_hours.send_from": ("send_from",),
    "quiet_hours.send_until": ("send_until",),
    "phone.default_region": ("phone_region",),
    "paths.schedules": ("schedules_dir",),
    "paths.templates": ("templates_dir",),
    **{s.key: tuple(s.key.split(".")) for s in SETTINGS
       if s.key.split(".")[0] in {"practice", "channels", "dispatch", "twilio", "sendgrid",
                                  "email", "webhooks", "caps", "console", "daemon", "recovery",
                                  "referrals", "templates", "retention", "api", "hl7",
                                  "fhir", "links", "waitlist"}},
}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found — check --config / "
                          "TOUCHPOINT_CONFIG") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc} — fix the TOML syntax") from None


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in table.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping) and key not in _TABLE_SETTINGS:
            flat.update(_flatten(value, f"{key}."))
        else:
            flat[key] = value
    return flat


def _closest_key(key: str) -> str | None:
    """The setting a mistyped ``key`` most likely meant."""
    close = difflib.get_close_matches(key, list(_BY_KEY), n=1)
    return close[0] if close else None


def _check_keys(path: Path, flat: Mapping[str, Any]) -> None:
    for key in flat:
        if key not in _BY_KEY:
            close = _closest_key(key)
            hint = f" — did you mean {close}?" if close else " — see docs/settings.md"
            raise ConfigError(f"{path}: unknown setting {key}{hint}")


def _from_env(setting: Setting, environ: Mapping[str, str]) -> object:
    raw = environ.get(setting.env)
    if raw is None or raw == "":
        return None
    if setting.key in _TABLE_SETTINGS:
        pairs = [item.split("=", 1) for item in raw.split(",") if item.strip()]
        if any(len(pair) != 2 for pair in pairs):
            raise ConfigError(f"{setting.env}: write NAME=URL pairs separated by commas")
        return {name.strip(): value.strip() for name, value in pairs}
    return raw


def parse_flag(assignment: str) -> tuple[str, object]:
    """``twilio.from_number=+13125550100`` (the ``--set`` flag) → (key, value), the value
    read as its environment variable would be. An unknown key is an error with a
    did-you-mean."""
    key, equals, raw = assignment.partition("=")
    key = key.strip()
    setting = _BY_KEY.get(key)
    if not equals:  # (the text is not echoed: it may hold a secret)
        raise ConfigError("--set: write KEY=VALUE, e.g. --set twilio.from_number=+13125550100")
    if setting is None:
        near = _closest_key(key)
        hint = f"did you mean {near}?" if near else "`touchpoint config` lists them"
        raise ConfigError(f"--set {key}: not a setting — {hint}")
    return key, _from_env(setting, {setting.env: raw.strip()})


def load_settings(
    config: str | Path | None = None,
    flags: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve every setting in the documented order and validate the result."""
    environ = os.environ if environ is None else environ
    flags = flags or {}
    config_path: Path | None
    if config is None and environ.get("TOUCHPOINT_CONFIG"):
        config = environ["TOUCHPOINT_CONFIG"]
    if config is not None:
        config_path = Path(config)
        from_file = _flatten(_read_toml(config_path))
    elif Path(DEFAULT_CONFIG).is_file():
        config_path = Path(DEFAULT_CONFIG)
        from_file = _flatten(_read_toml(config_path))
    else:
        config_path, from_file = None, {}
    _check_keys(config_path or Path(DEFAULT_CONFIG), from_file)

    values: dict[str, object] = {}
    origin: dict[str, str] = {}
    for setting in SETTINGS:
        section = setting.key.rpartition(".")[0]
        candidates = (
            (flags.get(setting.key), setting.flag or f"--set {setting.key}", False),
            (_from_env(setting, environ), setting.env, False),
            (from_file.get(setting.key), f"{config_path}: [{section}]", True),
            (setting.default, "default", False),
        )
        for value, where, in_file in candidates:
            if value is None:
                continue
            if setting.key in _PATH_SETTINGS:
                value = Path(str(value))
                if in_file and config_path is not None and not value.is_absolute():
                    value = config_path.parent / value
            values[setting.key] = value
            origin[setting.key] = where
            break

    nested: dict[str, Any] = {"config_file": config_path}
    for key, value in values.items():
        target = nested
        path = _FIELD_PATH[key]
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = value
    for section in ("practice", "channels", "dispatch"):
        nested.setdefault(section, {})
    try:
        settings = Settings.model_validate(nested)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, origin)) from None
    if settings.send_from >= settings.send_until:
        raise ConfigError(
            f"settings quiet_hours.send_from ({settings.send_from:%H:%M}, from "
            f"{origin['quiet_hours.send_from']}) must be before quiet_hours.send_until "
            f"({settings.send_until:%H:%M}, from {origin['quiet_hours.send_until']})")
    return settings


def _explain(exc: ValidationError, origin: Mapping[str, str]) -> str:
    error = exc.errors()[0]
    loc = tuple(str(p) for p in error["loc"])
    key = next((k for k, path in _FIELD_PATH.items() if path == loc[: len(path)]), ".".join(loc))
    message = str(error["msg"]).removeprefix("Value error, ")
    where = origin.get(key, "")
    return f"setting {key}{f' (from {where})' if where else ''}: {message}"
