"""Structured logs: one JSON object per line, with the request id when a record has one.

``LOG_FORMAT=json`` (the default in production) selects :class:`JsonFormatter`; ``text`` (the
default in development) keeps Django's plain lines. Fields passed as ``extra=`` on a log call
(``request_id``, ``reason``, ``similarity``...) become keys of the object.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import orjson

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()
