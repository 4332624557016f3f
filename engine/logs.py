"""Logging: one line per event, as text or JSON, with patient data and secrets masked.

Every record passes through :class:`Redactor`, which masks phone numbers and email
addresses in the message and its arguments (``+1•••••••42``, ``m•••@example.com``) and
never lets a configured secret through. ``--log-format json`` gives one JSON object a
line: ``{"ts", "level", "logger", "msg", …extra fields}``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from engine.privacy import redact

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


class Redactor(logging.Filter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 6]

    def clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "•••")
        return redact(text)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.clean(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = self.clean(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_text:
            entry["error"] = record.exc_text
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(log_format: str = "text", level: int = logging.INFO,
              secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(Redactor(secrets))
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(
        "%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("alembic", "apscheduler", "twilio.http_client", "uvicorn.access",
                  "watchfiles"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # "skipped: maximum number of running instances reached" is the point of
    # max_instances=1 during a long tick, not news; job errors are still logged.
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
