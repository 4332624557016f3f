"""HL7 v2 field paths as people write them: ``PID-13``, ``AIS-3.2``, ``ZSC-1.1.2``.

A path names a segment (three letters or digits, Z-segments too), a field number and
optionally a component and a sub-component, 1-based as in the HL7 standard. The practice
writes them in settings (``hl7.visit_type_field = "AIS-3.2"``); a path that is not one is
a configuration error at startup, not a surprise on the first message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PATH = re.compile(r"^([A-Z][A-Z0-9]{2})-(\d{1,3})(?:\.(\d{1,2}))?(?:\.(\d{1,2}))?$")


@dataclass(frozen=True)
class FieldPath:
    segment: str
    field: int
    component: int | None = None
    subcomponent: int | None = None

    def __str__(self) -> str:
        text = f"{self.segment}-{self.field}"
        if self.component is not None:
            text += f".{self.component}"
        if self.subcomponent is not None:
            text += f".{self.subcomponent}"
        return text


def parse_field_path(text: str) -> FieldPath:
    """``"AIS-3.2"`` → FieldPath("AIS", 3, 2); a ValueError that says what to write."""
    match = _PATH.match(text.strip().upper())
    if not match or int(match.group(2)) == 0 or "0" in (match.group(3), match.group(4)):
        raise ValueError(f"{text!r} is not an HL7 field path — write SEGMENT-FIELD, optionally "
                         ".COMPONENT and .SUBCOMPONENT, e.g. AIS-3, AIS-3.2 or ZSC-4.1")
    segment, field, component, subcomponent = match.groups()
    return FieldPath(segment, int(field), int(component) if component else None,
                     int(subcomponent) if subcomponent else None)
