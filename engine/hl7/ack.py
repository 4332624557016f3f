"""HL7 v2 acknowledgements (original mode): ``AA`` applied, ``AE`` could not be applied
(with an ERR segment naming the field), ``AR`` rejected (not HL7, or not a message
Touchpoint takes).

The MSH and MSA segments are built by python-hl7 (``Message.create_ack``); the ERR segment
follows the version the sender spoke: from v2.5 on ERR-2 (location), ERR-3 (HL7 error code,
table 0357), ERR-4 (severity) and ERR-8 (user message); before v2.5 ERR-1 (segment ^
sequence ^ field ^ code). MSA-3 carries the same short text for every version, which is
what most interface engines show an operator. Texts never hold patient data.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime

import hl7

from engine.hl7.mapping import ERROR_TEXT, UNSUPPORTED_MESSAGE_TYPE, Location

ACCEPT, ERROR, REJECT = "AA", "AE", "AR"
# Sent as MSH-3 when the sender's own MSH cannot be read.
APPLICATION = "TOUCHPOINT"


def version(message: hl7.Message) -> tuple[int, ...]:
    """MSH-12 as numbers: ``2.5.1`` → (2, 5, 1); unknown → (2, 5)."""
    text = str(message.segment("MSH").extract_field(1, 12, 1, 1, 1)).strip()
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        return (2, 5)


def plain(text: str) -> str:
    """ASCII only, one line: an ACK goes through any interface engine's default encoding."""
    text = text.replace("—", "-").replace("–", "-").replace("\r", " ").replace("\n", " ")
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def _timestamp(now: datetime) -> str:
    return now.strftime("%Y%m%d%H%M%S") + "+0000"


def acknowledge(message: hl7.Message, code: str, *, now: datetime, control_id: str,
                text: str = "", location: Location | None = None,
                error_code: int | None = None) -> str:
    """The ACK for ``message`` (python-hl7 builds MSH and MSA), as text with \\r."""
    ack = message.create_ack(code, message_id=control_id)
    msh = ack.segment("MSH")
    msh.assign_field(_timestamp(now), 7)
    if not str(msh(3)):
        msh.assign_field(APPLICATION, 3)
    if text:
        ack.segment("MSA").assign_field(ack.escape(plain(text)), 3)
    if error_code is not None:
        ack.append(_err(ack, version(message), location, error_code, plain(text)))
    return str(ack)


def _err(ack: hl7.Message, spoken: tuple[int, ...], location: Location | None, code: int,
         text: str) -> hl7.Segment:
    err = ack.create_segment([ack.create_field(["ERR"])])
    label = ERROR_TEXT.get(code, "")
    if spoken >= (2, 5):
        if location is not None:
            err.assign_field(location.segment, 2, 1, 1)
            err.assign_field(str(location.sequence), 2, 1, 2)
            err.assign_field(str(location.field), 2, 1, 3)
            if location.component:
                err.assign_field("1", 2, 1, 4)
                err.assign_field(str(location.component), 2, 1, 5)
        err.assign_field(str(code), 3, 1, 1)
        err.assign_field(label, 3, 1, 2)
        err.assign_field("HL70357", 3, 1, 3)
        err.assign_field("E", 4)
        if text:
            err.assign_field(ack.escape(text), 8)
        return err
    if location is not None:
        err.assign_field(location.segment, 1, 1, 1)
        err.assign_field(str(location.sequence), 1, 1, 2)
        err.assign_field(str(location.field), 1, 1, 3)
    err.assign_field(str(code), 1, 1, 4, 1)
    err.assign_field(label, 1, 1, 4, 2)
    err.assign_field("HL70357", 1, 1, 4, 3)
    return err


def reject_unreadable(*, now: datetime, control_id: str, text: str) -> str:
    """The AR for bytes that are not an HL7 message (no MSH to answer from): a minimal
    v2.5 ACK, so the sender's interface engine logs why."""
    stub = hl7.parse(f"MSH|^~\\&|||{APPLICATION}||||ACK^^ACK||P|2.5\r")
    message = stub.create_ack(REJECT, message_id=control_id)
    msh = message.segment("MSH")
    msh.assign_field(_timestamp(now), 7)
    msh.assign_field("2.5", 12)
    message.segment("MSA").assign_field(message.escape(plain(text)), 3)
    message.append(_err(message, (2, 5), None, UNSUPPORTED_MESSAGE_TYPE, plain(text)))
    return str(message)
