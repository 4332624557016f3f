"""Touch-point statuses and reason codes, with the sentence `touchpoint why` shows for each.

::

    planned ──► sending ──► sent ──► delivered
       │           │          └────► failed        (a provider callback)
       │           ├──► failed      (permanent error, or retries exhausted)
       │           ├──► planned     (transient error: retried later)
       │           └──► unknown     (crash or ambiguous timeout; a callback reconciles it)
       ├──► skipped   (a guard said no: opted_out, no_consent, too_late, …)
       └──► cancelled (the journey ended: appointment_cancelled, journey_exited, …)

    sent ──► planned      (fallback: a carrier/mailbox turned it away; the step's next channel)
    unknown ──► sent      (reconciled: found in the provider's list, or staff settle --sent)
    unknown ──► planned   (reconcile_resend: not found, sent again once; staff settle --resend)
    unknown ──► cancelled (dropped: staff settle --drop)
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    PLANNED = "planned"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"


PENDING = frozenset({Status.PLANNED})
IN_FLIGHT = frozenset({Status.SENDING})
# Where a touch point may rest. `sent` can still become delivered/failed by callback;
# `unknown` waits for reconciliation or staff.
SETTLED = frozenset({Status.SENT, Status.DELIVERED, Status.FAILED, Status.SKIPPED,
                     Status.CANCELLED, Status.UNKNOWN})
FINAL = frozenset({Status.DELIVERED, Status.FAILED, Status.SKIPPED, Status.CANCELLED})


class Reason(StrEnum):
    OPTED_OUT = "opted_out"
    NO_CONSENT = "no_consent"
    NO_CONTACT = "no_contact"
    TOO_LATE = "too_late"
    APPOINTMENT_CANCELLED = "appointment_cancelled"
    ANCHOR_CHANGED = "anchor_changed"
    JOURNEY_EXITED = "journey_exited"
    PROVIDER_ERROR = "provider_error"
    TEMPLATE_ERROR = "template_error"
    ENGINE_ERROR = "engine_error"
    JOURNEY_REMOVED = "journey_removed"
    STEP_REMOVED = "step_removed"
    INTERRUPTED = "interrupted"
    AMBIGUOUS = "ambiguous"
    FREQUENCY_CAP = "frequency_cap"
    ONCE_PER = "once_per"
    SHARED_ADDRESS = "shared_address"
    NO_GUARDIAN = "no_guardian"
    FALLBACK = "fallback"
    RECONCILED = "reconciled"
    RECONCILE_RESEND = "reconcile_resend"
    RESEND = "resend"
    DROPPED = "dropped"
    PATIENT_ERASED = "patient_erased"
    PATIENT_REMOVED = "patient_removed"
    SLOT_CLOSED = "slot_closed"


EXPLANATIONS: dict[str, str] = {
    Reason.OPTED_OUT: "the recipient opted out of this channel",
    Reason.NO_CONSENT: "the recipient has not consented to this channel or purpose",
    Reason.NO_CONTACT: "there is no phone number or email address to send to",
    Reason.TOO_LATE: "the moment to send it had passed (or quiet hours would have pushed it "
                     "past its deadline)",
    Reason.APPOINTMENT_CANCELLED: "the appointment it was about was cancelled",
    Reason.ANCHOR_CHANGED: "the appointment moved; a new touch point was planned for the new time",
    Reason.JOURNEY_EXITED: "an event ended the journey (e.g. a visit was booked)",
    Reason.PROVIDER_ERROR: "the provider refused it or kept failing",
    Reason.TEMPLATE_ERROR: "its message template failed to render",
    Reason.ENGINE_ERROR: "the engine could not prepare it from what is on file (e.g. a date "
                         "outside the calendar); it was set aside with the error so that "
                         "everyone else's messages went on",
    Reason.JOURNEY_REMOVED: "the journey was removed from schedules/",
    Reason.STEP_REMOVED: "the step was removed from its journey",
    Reason.INTERRUPTED: "the sender stopped after calling the provider and before recording the "
                        "result; it was not re-sent — a provider callback or staff will settle it",
    Reason.AMBIGUOUS: "the provider's answer was lost (timeout or server error), so it may or "
                      "may not have been sent; it was not re-sent — a provider callback or "
                      "staff will settle it",
    Reason.FREQUENCY_CAP: "a limit on messages held it until past its deadline (the courtesy "
                          "limit on texts a day, the marketing limit, or in exemption mode "
                          "the FCC healthcare exemption's 1 text a day, 3 a week, 160 "
                          "characters)",
    Reason.ONCE_PER: "the journey already ran for this patient within its once_per period",
    Reason.FALLBACK: "one channel could not deliver it (retries ran out, or the carrier or "
                     "mailbox turned it away), so the step's next channel was tried",
    Reason.RECONCILED: "its send was interrupted; the provider's records showed it had gone",
    Reason.RECONCILE_RESEND: "its send was interrupted and the provider had no record of it, so "
                             "it was sent again, once",
    Reason.RESEND: "its send was interrupted; staff asked for it to be sent again",
    Reason.DROPPED: "its send was interrupted; staff decided not to send it",
    Reason.SHARED_ADDRESS: "another recipient of the same message has the same phone number "
                           "or email, and it went there once",
    Reason.NO_GUARDIAN: "the patient is a minor with no parent or guardian on file, so nothing "
                        "goes to them; staff were alerted to add one (touchpoint import "
                        "contacts)",
    Reason.PATIENT_ERASED: "the patient's personal data was erased at their request "
                           "(touchpoint patient erase), so nothing more goes to them",
    Reason.PATIENT_REMOVED: "the patient or appointment left the practice's records (a full "
                            "sync, an HL7 S17, or an API DELETE)",
    Reason.SLOT_CLOSED: "the waitlist offer no longer stood: the freed slot was taken by "
                        "another patient, expired or was withdrawn, or the offer expired",
}
