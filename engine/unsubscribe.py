"""One-click email unsubscribe: signed tokens, links and RFC 8058 headers.

A token names a touch point and a purpose, signed with HMAC-SHA256::

    <touch point id>.<purpose>.<signature>

It carries no address or name (links end up in logs and browser histories); the
address is looked up from the touch point when the link is used. The key is the
``webhooks.secret_key`` setting or, when unset, a random key kept in the database.

Every marketing email (and transactional ones with ``email.unsubscribe_transactional``)
carries::

    List-Unsubscribe: <https://…/unsubscribe/TOKEN>, <mailto:…?subject=unsubscribe%20TOKEN>
    List-Unsubscribe-Post: List-Unsubscribe=One-Click

and the same https link is the template variable ``unsubscribe_url``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from urllib.parse import quote

from sqlalchemy import Connection

from engine import clock
from engine.settings import Settings
from engine.store.records import get_state, put_state

PURPOSES = ("marketing", "transactional", "all")
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8000"


def secret_key(conn: Connection, settings: Settings) -> bytes:
    """The signing key: the setting, else one generated once and kept in the database."""
    if settings.webhooks.secret_key:
        return settings.webhooks.secret_key.encode()
    stored = get_state(conn, "secret_key")
    if stored is None:
        stored = {"key": secrets.token_urlsafe(32)}
        put_state(conn, "secret_key", stored, clock.now())
    return str(stored["key"]).encode()


def _sign(key: bytes, message: str) -> str:
    digest = hmac.new(key, message.encode(), hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def make_token(key: bytes, touch_point_id: int, purpose: str) -> str:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown purpose {purpose!r}")
    body = f"{touch_point_id}.{purpose}"
    return f"{body}.{_sign(key, body)}"


def read_token(key: bytes, token: str) -> tuple[int, str] | None:
    """(touch point id, purpose) of a genuine token, else None."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[0].isdigit() or parts[1] not in PURPOSES:
        return None
    body = f"{parts[0]}.{parts[1]}"
    if not hmac.compare_digest(_sign(key, body), parts[2]):
        return None
    return int(parts[0]), parts[1]


def public_url(settings: Settings) -> str:
    return settings.webhooks.public_url or DEFAULT_PUBLIC_URL


def unsubscribe_url(settings: Settings, token: str) -> str:
    return f"{public_url(settings)}/unsubscribe/{token}"


def headers(settings: Settings, token: str) -> dict[str, str]:
    """RFC 2369 / RFC 8058 headers for one email."""
    targets = [f"<{unsubscribe_url(settings, token)}>"]
    if settings.email.unsubscribe_mailto:
        subject = quote(f"unsubscribe {token}")
        targets.append(f"<mailto:{settings.email.unsubscribe_mailto}?subject={subject}>")
    return {"List-Unsubscribe": ", ".join(targets),
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
