"""Log lines: plain text for a terminal, or one JSON object per line (LOG_FORMAT=json) for collectors.

Either way a line carries what is known of the request it belongs to: its id, and the
project and API key id once the caller is authenticated (never the key itself).
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from datetime import UTC, datetime

import orjson

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
PROJECT_ID: ContextVar[str | None] = ContextVar("project_id", default=None)
API_KEY_ID: ContextVar[str | None] = ContextVar("api_key_id", default=None)

_CONTEXT = (("request_id", REQUEST_ID), ("project_id", PROJECT_ID), ("api_key_id", API_KEY_ID))


class JSONFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and the request's context."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, variable in _CONTEXT:
            value = variable.get()
            if value is not None:
                line[name] = value
        if record.exc_info:
            # The exception's type and stack, never its text (it can quote driver messages or data).
            line["exception"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        return orjson.dumps(line).decode()


class ContextFilter(logging.Filter):
    """Adds the request's context to plain-text records (as `[request_id project_id api_key_id]`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        known = [value for _, variable in _CONTEXT if (value := variable.get()) is not None]
        record.context = f" [{' '.join(known)}]" if known else ""
        return True


def configure(level: int, json_lines: bool) -> None:
    """Log at `level` to stderr, as JSON lines or plain text."""
    handler = logging.StreamHandler()
    if json_lines:
        handler.setFormatter(JSONFormatter())
    else:
        handler.addFilter(ContextFilter())
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s%(context)s %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
