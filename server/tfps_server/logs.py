"""Logging set-up: human-readable text or JSON lines, and redaction of secrets."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

LOG_FORMATS = ("text", "json")
"""Values of ``--log-format``."""

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

SECRET_WORDS = ("token", "password", "secret", "key")
"""A setting whose name contains one of these words is logged redacted."""

REDACTED = "<redacted>"

_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}
"""Attributes every log record has; anything else came from ``extra=``."""


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object per line.

    Keys: ``timestamp`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, then
    ``exception`` when there is one, and any fields passed with ``extra=``.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Returns the record as a single line of JSON."""
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and key not in entry:
                entry[key] = value
        return json.dumps(entry, default=str)


def configure(level: str, log_format: str) -> None:
    """Sends every logger's records to stderr in ``log_format``, replacing earlier handlers.

    Args:
        level: ``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR`` (any case).
        log_format: ``text`` or ``json``.

    Raises:
        ValueError: unknown level or format.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(
            f"log format: expected one of {list(LOG_FORMATS)}, received {log_format!r}"
        )
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def redacted(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Returns the settings with the values of secret-looking names replaced.

    A name is secret-looking when it contains one of :data:`SECRET_WORDS`, in any
    case (``auth_token``, ``TLS_KEY``, ...). Unset (None) values stay None.
    """
    return {
        name: REDACTED
        if value is not None and any(word in name.lower() for word in SECRET_WORDS)
        else value
        for name, value in settings.items()
    }
