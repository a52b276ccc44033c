"""Logging set-up: human-readable text or JSON lines, the libraries' share of the log, and
redaction of secrets.

tfps's own loggers (``tfps_server``, ``tfps_client``) log at the chosen level. Everything
else in the process, the libraries' Python loggers (``tensorflow``, ``absl``, ``grpc``,
...), Python warnings (``py.warnings``) and what native code writes to stderr (``native``,
see :mod:`tfps_server.stderr_relay`), is debugging output: at ``DEBUG`` it all comes
through, at any other level only its errors do.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

LOG_FORMATS = ("text", "json")
"""Values of ``--log-format``."""

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

OWN_LOGGERS = ("tfps_server", "tfps_client")
"""tfps's loggers (and their children); any other logger is a library's."""

LIBRARY_THRESHOLD = logging.ERROR
"""The least level of a library's record logged at any ``--log-level`` but DEBUG."""

SECRET_WORDS = ("token", "password", "secret", "key")
"""A setting whose name contains one of these words is logged redacted."""

REDACTED = "<redacted>"

_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}
"""Attributes every log record has; anything else came from ``extra=``."""


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """Returns the fields a record was given with ``extra=``."""
    return {key: value for key, value in vars(record).items() if key not in _RECORD_ATTRIBUTES}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object per line.

    Keys: ``timestamp`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, then
    ``exception`` when there is one, and any fields passed with ``extra=``, as JSON
    values (``extra={"config": {...}}`` is an object, not a string).
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
        for key, value in extra_fields(record).items():
            entry.setdefault(key, value)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT`, then each ``extra=`` field as `` name=<JSON>``."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        """Returns the formatted line, its extra fields appended."""
        fields = "".join(
            f" {key}={json.dumps(value, default=str)}"
            for key, value in extra_fields(record).items()
        )
        return super().formatMessage(record) + fields


class LibraryFilter(logging.Filter):
    """Passes tfps's own records, and a library's from ``threshold`` up."""

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold

    def filter(self, record: logging.LogRecord) -> bool:
        """True if the record is logged."""
        return record.levelno >= self.threshold or record.name.partition(".")[0] in OWN_LOGGERS


def configure(
    level: str, log_format: str, stream: SupportsWrite[str] | None = None
) -> logging.Handler:
    """Sends every logger's records to ``stream`` in ``log_format``, replacing earlier
    handlers; Python warnings become records of ``py.warnings``.

    Below DEBUG the libraries' records pass only from :data:`LIBRARY_THRESHOLD` up; at
    DEBUG every Python warning is shown once per place (unless ``-W`` or
    ``PYTHONWARNINGS`` says otherwise).

    Args:
        level: ``DEBUG``, ``INFO``, ``WARNING``, ``ERROR`` or ``CRITICAL`` (any case).
        log_format: ``text`` or ``json``.
        stream: where lines go; default ``sys.stderr``.

    Returns:
        The handler installed.

    Raises:
        ValueError: unknown level or format.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(
            f"log format: expected one of {list(LOG_FORMATS)}, received {log_format!r}"
        )
    debug = level.upper() == "DEBUG"
    handler: logging.Handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(LibraryFilter(logging.DEBUG if debug else LIBRARY_THRESHOLD))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.captureWarnings(True)
    if debug and not sys.warnoptions:
        warnings.simplefilter("default")
    return handler


def set_tensorflow_log_level(level: str) -> None:
    """Sets TensorFlow's C++ log threshold (``TF_CPP_MIN_LOG_LEVEL``, read as TensorFlow
    loads) from the server's level: at DEBUG everything, else nothing but FATAL (its
    ERRORs include "failed call to cuInit" on every host without a GPU).

    The variable is the server's to set: one in the environment is replaced. gRPC's
    ``GRPC_VERBOSITY`` and ``GRPC_TRACE`` stay as given.
    """
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if level.upper() == "DEBUG" else "3"


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
