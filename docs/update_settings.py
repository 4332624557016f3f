"""Rewrite the table in docs/settings.md from engine.settings.SETTINGS (`make docs`).

tests/test_settings.py fails when the page and the registry disagree.
"""

from __future__ import annotations

from pathlib import Path

from engine.settings import SETTINGS

PAGE = Path(__file__).with_name("settings.md")
HEADER = "| key in touchpoint.toml | environment variable | flag | default | what it is |"


def default(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value in ("", {}):
        return "(empty)"
    return f"`{value}`"


def table() -> str:
    lines = [HEADER, "| --- | --- | --- | --- | --- |"]
    for s in SETTINGS:
        flag = f"`{s.flag}`" if s.flag else ""
        note = " (secret: masked in output)" if s.secret else ""
        lines.append(f"| `{s.key}` | `{s.env}` | {flag} | {default(s.default)} | "
                     f"{s.help.replace('|', chr(92) + '|')}{note} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    text = PAGE.read_text(encoding="utf-8")
    start = text.index(HEADER)
    end = text.index("\n\n", start)
    PAGE.write_text(text[:start] + table() + text[end + 1:], encoding="utf-8")


if __name__ == "__main__":
    main()
