"""Messages Touchpoint sends on its own account, outside journeys: replies to texts,
staff alerts, recovery-case alerts, referral digests.

Each is an ordinary touch point (so it is in the log, with what was sent and why), inserted
already claimed and sent at once through the dispatcher's send path: a crash mid-send
leaves it ``unknown``, never re-sent.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from engine import clock
from engine.channels.base import OutboundMessage
from engine.definitions.templates import TemplateSet
from engine.errors import TemplateRenderError
from engine.outcomes import Status
from engine.store import ledger

if TYPE_CHECKING:
    from engine.dispatcher import Dispatcher

log = logging.getLogger("touchpoint.notify")


@dataclass(frozen=True)
class Notice:
    journey: str  # a system journey: replies, staff-alerts, referral-digest
    step: str
    kind: str  # sms | email
    to: str
    template: str
    anchor: str  # with patient, recipient, journey and step: sent once
    recipient: str = "staff"
    patient_id: int | None = None
    appointment_id: int | None = None
    language: str | None = None


@dataclass(frozen=True)
class Rendered:
    notice: Notice
    body: str
    subject: str | None
    html: str | None
    template_file: str
    headers: Mapping[str, str] = field(default_factory=dict)  # List-Unsubscribe, …


def render(templates: TemplateSet, notice: Notice, context: dict[str, Any],
           tz: ZoneInfo, headers: Mapping[str, str] | None = None) -> Rendered | None:
    """Render ``notice``; a template error is logged (``touchpoint validate`` finds it too)
    and gives None."""
    try:
        out = templates.render(notice.template, notice.kind, notice.language, context, tz)
    except TemplateRenderError as exc:
        log.error("cannot render %s: %s", notice.template, exc.message)
        return None
    return Rendered(notice, out.body, out.subject, out.html, out.template_file,
                    dict(headers or {}))


def insert(conn: Any, dispatcher: Dispatcher, notice: Notice) -> ledger.TouchPoint:
    """Record ``notice`` as a touch point claimed by ``dispatcher`` (in ``conn``'s
    transaction); deliver it with :func:`deliver` once that commits."""
    return ledger.insert_immediate(
        conn, patient_id=notice.patient_id, journey=notice.journey, step=notice.step,
        purpose="transactional", recipient=notice.recipient, anchor=notice.anchor,
        worker=dispatcher.worker, now=clock.now(), appointment_id=notice.appointment_id,
        source="reply" if notice.journey in ("replies", "staff-alerts") else notice.journey)


def deliver(dispatcher: Dispatcher, tp: ledger.TouchPoint, rendered: Rendered,
            ) -> ledger.TouchPoint | None:
    """Send an inserted notice; the touch point as it ended."""
    notice = rendered.notice
    message = OutboundMessage(tp.id, notice.kind, notice.to, rendered.body, rendered.subject,
                              rendered.html, "transactional", headers=dict(rendered.headers),
                              journey=notice.journey, step=notice.step)
    dispatcher.deliver(tp, message, rendered.template_file)
    with dispatcher.db.transaction() as conn:
        return ledger.get(conn, tp.id)


def send(dispatcher: Dispatcher, rendered: Rendered) -> ledger.TouchPoint | None:
    """Insert and deliver in one go."""
    with dispatcher.db.transaction() as conn:
        tp = insert(conn, dispatcher, rendered.notice)
    return deliver(dispatcher, tp, rendered)


@dataclass
class Attempts:
    """How far sending one notice has got, over the touch points of its attempts."""

    done: bool = False  # one was sent (or is in flight, or its fate is unknown)
    failed: int = 0
    last_failure: datetime | None = None

    def add(self, status: str, finished_at: datetime | None) -> None:
        if status in (Status.FAILED, Status.SKIPPED, Status.CANCELLED):
            self.failed += 1
            if finished_at is not None and (self.last_failure is None
                                            or finished_at > self.last_failure):
                self.last_failure = finished_at
        else:
            self.done = True
