"""Reconciliation: settle ``unknown`` texts by asking the provider what it sent.

A touch point is ``unknown`` when the sender cannot tell whether the provider took it (a
read timeout, a 5xx after the request went out, a worker that died mid-send). Its status
callback usually settles it (:mod:`engine.webhooks.record`). When none has come
``dispatch.reconcile_after`` (default 10 minutes) after the attempt, the tick asks the
channel, if it can look messages up (:meth:`~engine.channels.base.Channel.find_sent`:
Twilio's ``messages.list(to=…, date_sent_after=…)``, matched on the body)::

    unknown, attempt older than reconcile_after, channel can look up
      ├─ found: same number, same body, since the attempt ──► sent, with its SID
      │                                                        (reason reconciled)
      ├─ not found, before its deadline, not resent before ──► planned, due now
      │                                                        (reason reconcile_resend):
      │                                                        sent again, once
      └─ not found, and resent once already or past its deadline
                                                          ──► stays unknown, for staff
    the provider could not be asked                       ──► asked again next tick

Email (SendGrid's basic API has no such lookup), and whatever reconciliation leaves,
stay ``unknown`` and are listed by ``touchpoint unknown`` for staff to settle with
``touchpoint settle ID --sent|--resend|--drop --note TEXT`` (:func:`settle`). Every
decision is in the touch point's history (source ``reconcile`` or ``staff``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, exists, false, insert, select

from engine.channels.base import Channel
from engine.definitions.journeys import SYSTEM_JOURNEYS
from engine.errors import ChannelError, NotFound, UserError
from engine.outcomes import Reason, Status
from engine.privacy import mask_address, redact
from engine.settings import Settings
from engine.store import ledger
from engine.store.database import Database
from engine.store.ledger import TouchPoint, touch_point_from_row
from engine.store.schema import history, patients, touch_points

log = logging.getLogger("touchpoint.reconcile")

SOURCE = "reconcile"
#: The history reason of a note that leaves a touch point to staff.
NEEDS_STAFF = "needs_staff"
#: What ``touchpoint settle`` may do with an ``unknown`` touch point.
SETTLE_ACTIONS = ("sent", "resend", "drop")


@dataclass
class Reconciled:
    """What one reconciliation pass did (touch point ids)."""

    found: list[int] = field(default_factory=list)
    resent: list[int] = field(default_factory=list)
    left: list[int] = field(default_factory=list)  # for staff
    unreachable: list[int] = field(default_factory=list)  # the provider could not be asked

    def as_dict(self) -> dict[str, int]:
        return {"found": len(self.found), "resent": len(self.resent), "left": len(self.left),
                "unreachable": len(self.unreachable)}


def reconcile(db: Database, settings: Settings, channels: Mapping[str, Channel],
              now: datetime) -> Reconciled:
    """Ask the provider about every ``unknown`` touch point whose attempt is older than
    ``dispatch.reconcile_after`` and that reconciliation has not looked at since."""
    done = Reconciled()
    kinds = [kind for kind, channel in channels.items() if channel.can_find_sent]
    if not kinds:
        return done
    with db.transaction() as conn:
        waiting = _waiting(conn, kinds, now - settings.dispatch.reconcile_after)
    for tp in waiting:
        try:
            _one(db, channels[tp.channel or ""], tp, now, done)
        except ChannelError as exc:  # one provider hiccup never stops the others
            log.warning("touch point %s: could not ask %s about it: %s", tp.id,
                        exc.provider or "the provider", redact(exc.message))
            done.unreachable.append(tp.id)
    if done.found or done.resent or done.left:
        log.info("reconciled unknown touch points: %s", done.as_dict())
    return done


def _waiting(conn: Connection, kinds: list[str], attempted_before: datetime,
             ) -> list[TouchPoint]:
    # looked at since the latest attempt (a note is written reconcile_after after the
    # attempt it is about; an entry at the attempt's own instant is the resend before it)
    looked_at = exists().where(and_(history.c.touch_point_id == touch_points.c.id,
                                    history.c.source == SOURCE,
                                    history.c.at > touch_points.c.sending_at))
    rows = conn.execute(select(touch_points).where(
        touch_points.c.status == Status.UNKNOWN, touch_points.c.channel.in_(kinds),
        touch_points.c.sending_at <= attempted_before, touch_points.c.address.is_not(None),
        ~looked_at).order_by(touch_points.c.sending_at, touch_points.c.id))
    return [touch_point_from_row(row) for row in rows]


def _one(db: Database, channel: Channel, tp: TouchPoint, now: datetime,
         done: Reconciled) -> None:
    assert tp.address is not None
    assert tp.sending_at is not None
    sid = channel.find_sent(tp.address, tp.sending_at, tp.content or "")
    with db.transaction() as conn:
        if sid is not None:
            if ledger.transition(conn, tp.id, expect=Status.UNKNOWN, to=Status.SENT, now=now,
                                 source=SOURCE, reason=Reason.RECONCILED,
                                 detail=f"found in {channel.provider}'s list of messages "
                                        f"sent to {mask_address(tp.address)}: {sid}",
                                 values={"provider_message_id": sid,
                                         "sent_at": tp.sending_at}):
                done.found.append(tp.id)
            return
        why = _why_not_resent(conn, tp, now)
        if why is None and ledger.transition(
                conn, tp.id, expect=Status.UNKNOWN, to=Status.PLANNED, now=now, source=SOURCE,
                reason=Reason.RECONCILE_RESEND,
                detail=f"{channel.provider} has no message to {mask_address(tp.address)} since "
                       f"the attempt at {tp.sending_at.isoformat()}; sending it again, once",
                values={"due_at": now, "claimed_by": None, "claim_expires_at": None,
                        "finished_at": None}):
            done.resent.append(tp.id)
            return
        _note(conn, tp.id, now, NEEDS_STAFF,
              f"{channel.provider} has no message to {mask_address(tp.address)} since the "
              f"attempt; {why}: left for staff (touchpoint settle {tp.id})", SOURCE)
        done.left.append(tp.id)


def _why_not_resent(conn: Connection, tp: TouchPoint, now: datetime) -> str | None:
    if tp.test or tp.journey in SYSTEM_JOURNEYS:
        return "it is not a journey's message (a test send, a reply or an alert)"
    if tp.expires_at is not None and now >= tp.expires_at:
        return "its deadline has passed"
    resent = conn.execute(select(history.c.id).where(
        history.c.touch_point_id == tp.id,
        history.c.reason == Reason.RECONCILE_RESEND).limit(1)).first()
    if resent is not None:
        return "it was already sent again once"
    return None


def _note(conn: Connection, tp_id: int, now: datetime, reason: str, detail: str,
          source: str) -> None:
    conn.execute(insert(history).values(
        touch_point_id=tp_id, at=now, kind="reconcile", status=None, previous_status=None,
        reason=reason, detail=detail, source=source, provider_event_id=None))


# ---------------------------------------------------------------------- for staff

def unknown_touch_points(conn: Connection, looked_up: frozenset[str] = frozenset({"sms"}),
                         ) -> list[dict[str, Any]]:
    """Every ``unknown`` touch point (test sends aside), oldest attempt first, with what
    it waits for: ``reconciliation`` (a channel in ``looked_up``, whose provider is asked,
    not yet left to staff) or ``staff``."""
    rows = conn.execute(select(touch_points)
                        .where(touch_points.c.status == Status.UNKNOWN,
                               touch_points.c.test == false())
                        .order_by(touch_points.c.sending_at, touch_points.c.id)).all()
    ids = {row.patient_id for row in rows if row.patient_id is not None}
    external = {row.id: row.external_id for row in conn.execute(
        select(patients.c.id, patients.c.external_id).where(patients.c.id.in_(sorted(ids))))}
    listed = []
    for row in rows:
        tp = touch_point_from_row(row)
        notes = conn.execute(select(history.c.reason, history.c.detail)
                             .where(history.c.touch_point_id == tp.id,
                                    history.c.source == SOURCE,
                                    history.c.reason == NEEDS_STAFF)
                             .order_by(history.c.id.desc()).limit(1)).first()
        listed.append({"id": tp.id, "patient_id": external.get(tp.patient_id or 0),
                       "journey": tp.journey,
                       "step": tp.step, "channel": tp.channel,
                       "address": mask_address(tp.address) if tp.address else None,
                       "attempted_at": tp.sending_at, "deadline": tp.expires_at,
                       "reason": tp.reason, "detail": tp.detail,
                       "waiting_for": "staff" if notes is not None
                       or tp.channel not in looked_up else "reconciliation"})
    return listed


def settle(db: Database, tp_id: int, action: str, note: str, now: datetime) -> TouchPoint:
    """Staff's decision on an ``unknown`` touch point: it was ``sent``, ``resend`` it now
    (the dispatcher sends it on its next run), or ``drop`` it (cancelled). The note goes
    into its history. Raises :class:`NotFound` or :class:`UserError`."""
    if action not in SETTLE_ACTIONS:
        raise UserError(f"unknown settle action {action!r}: use --sent, --resend or --drop")
    note = " ".join(note.split())
    if not note:
        raise UserError("--note must say why (it is kept in the touch point's history)")
    with db.transaction() as conn:
        tp = ledger.get(conn, tp_id)
        if tp is None:
            raise NotFound(f"no touch point {tp_id}")
        if tp.status != Status.UNKNOWN:
            raise UserError(f"touch point {tp_id} is {tp.status}, not unknown: only unknown "
                            "touch points are settled by staff")
        detail = f"staff: {redact(note)}"
        if action == "sent":
            moved = ledger.transition(conn, tp_id, expect=Status.UNKNOWN, to=Status.SENT,
                                      now=now, source="staff", reason=Reason.RECONCILED,
                                      detail=detail, values={"sent_at": tp.sending_at or now})
        elif action == "resend":
            if tp.test or tp.journey in SYSTEM_JOURNEYS:
                raise UserError(f"touch point {tp_id} is not a journey's message (a test "
                                "send, a reply or an alert) and cannot be re-sent; use "
                                "--sent or --drop")
            moved = ledger.transition(conn, tp_id, expect=Status.UNKNOWN, to=Status.PLANNED,
                                      now=now, source="staff", reason=Reason.RESEND,
                                      detail=detail,
                                      values={"due_at": now, "expires_at": None,
                                              "claimed_by": None, "claim_expires_at": None,
                                              "finished_at": None})
        else:
            moved = ledger.transition(conn, tp_id, expect=Status.UNKNOWN,
                                      to=Status.CANCELLED, now=now, source="staff",
                                      reason=Reason.DROPPED, detail=detail,
                                      values={"claimed_by": None, "claim_expires_at": None})
        if not moved:
            raise UserError(f"touch point {tp_id} changed while it was being settled; "
                            "look at it again with `touchpoint why`")
        settled = ledger.get(conn, tp_id)
    assert settled is not None
    return settled
