"""Masking patient data and secrets before anything is printed or logged.

``+15035550142`` → ``+1•••••••42``; ``maria.garcia@example.com`` → ``m•••@example.com``.
:func:`redact` masks every phone number and email address found in free text (provider
error excerpts, exception messages) — use it on anything that leaves the process.
"""

from __future__ import annotations

import re

_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
_PHONE = re.compile(r"\+?\d[\d\s().-]{7,}\d")


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
