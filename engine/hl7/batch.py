"""Split a file of HL7 v2 messages (a batch drop) into messages.

Interface engines write such files in several shapes, all read here:

* MLLP-framed messages one after another (``<VT>…<FS><CR>``);
* messages separated by blank lines, or simply each starting at its ``MSH`` segment;
* HL7 batch files, with ``FHS``/``BHS`` headers and ``BTS``/``FTS`` trailers (skipped);
* segments ended by ``\\r``, ``\\r\\n`` or ``\\n``.

Text before the first ``MSH`` that is not a batch header is kept as a message of its own,
so it is reported (``AR``) rather than silently dropped.
"""

from __future__ import annotations

import re

_ENVELOPE = ("FHS", "BHS", "BTS", "FTS")


def split_messages(text: str) -> list[str]:
    """The messages in ``text``, each with its segments separated by \\r."""
    text = text.lstrip("\ufeff").replace("\x0b", "\n").replace("\x1c", "\n\n")
    messages: list[list[str]] = []
    current: list[str] | None = None
    for line in re.split(r"\r\n|\r|\n", text):
        stripped = line.strip()
        if not stripped:
            current = None  # (a blank line ends a message)
            continue
        if stripped[:3] in _ENVELOPE and (len(stripped) == 3 or not stripped[3].isalnum()):
            current = None
            continue
        if stripped.startswith("MSH") or current is None:
            current = []
            messages.append(current)
        current.append(line.rstrip("\n"))
    return ["\r".join(segments) + "\r" for segments in messages]
