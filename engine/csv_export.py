"""CSV exports that are safe to open in a spreadsheet.

A cell that begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read by
Excel, LibreOffice and Google Sheets as a formula (CSV injection: a patient who writes
``=HYPERLINK(…)`` in a reply must not become a link in the practice's spreadsheet). Such a
text cell gets a single quote in front, as OWASP recommends; numbers are written as they
are. Every CSV Touchpoint writes for people goes through :func:`write_csv`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: object) -> object:
    """``"=1+2"`` → ``"'=1+2"``; anything else (numbers, None, plain text) unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_csv(out: TextIO, fields: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """A header row of ``fields``, then one line per row, every cell neutralised."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([neutralise(name) for name in fields])
    writer.writerows([neutralise(row.get(name)) for name in fields] for row in rows)
