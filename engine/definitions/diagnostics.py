"""A finding about a schedule or template file: where, what is wrong, how to fix it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Diagnostic:
    file: str
    line: int | None
    message: str
    fix: str = ""
    severity: Severity = "error"
    code: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        level = "" if self.severity == "error" else "warning: "
        fix = f" — {self.fix}" if self.fix else ""
        return f"{where}: {level}{self.message}{fix}"

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "fix": self.fix,
        }


def did_you_mean(word: str, choices: Iterable[str], default: str = "") -> str:
    """``"did you mean 'x'?"`` for the closest choice, or ``default``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else default


def errors(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    return [d for d in diagnostics if d.severity == "error"]
