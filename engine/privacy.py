"""Masking patient data and secrets before anything is printed or logged.

``+15035550142`` → ``+1•••••••42``; ``maria.garcia@example.com`` → ``m•••@example.com``.
:func:`redact` masks every phone number and email address found in free text (provider
error excerpts, exception messages) — use it on anything that leaves the process.
:func:`mask_database_url` hides the password of a database URL
(``postgresql://tp:***@db/touchpoint``).
"""

from __future__ import annotations

import re

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
# International numbers (+ and 8–15 digits, maybe grouped), North American groupings
# ((312) 555-0100, 312-555-0100, 312.555.0100) and bare 10–11 digit runs; never dates
# (2026-11-22) or times.
_PHONE = re.compile(
    r"\+\d(?:[\s.-]?\d){7,14}\b"
    r"|(?<!\d)(?:\+?1[\s.-]?)?\(?\d{3}\)?[\s.-]?\d{3}[\s.-]\d{4}\b"
    r"|(?<![\d-])1?\d{10}\b")


def mask_phone(phone: str) -> str:
    digits = [c for c in phone if c.isdigit()]
    if len(digits) < 6:
        return "•" * len(phone)
    country = "+1" if phone.startswith("+1") else ("+" if phone.startswith("+") else "")
    hidden = len(digits) - 2 - (len(country) - 1 if country else 0)
    return f"{country}{'•' * max(hidden, 3)}{''.join(digits[-2:])}"


def mask_email(email: str) -> str:
    local, _, domain = email.partition("@")
    return f"{local[:1]}•••@{domain}" if domain else "•••"


def mask_address(address: str | None) -> str:
    if not address:
        return ""
    return mask_email(address) if "@" in address else mask_phone(address)


def redact(text: str) -> str:
    text = _EMAIL.sub(lambda m: f"{m.group(1)}•••@{m.group(2)}", text)
    return _PHONE.sub(lambda m: mask_phone(m.group(0)), text)


def mask_database_url(url: str) -> str:
    """The URL with its password as ``***``; a text SQLAlchemy cannot read as a URL (it
    may still hold a password) is not shown at all."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid database URL>"
