"""Structured logs: one JSON object per line (or, as text, one line of `key=value` fields),
carrying the request id; never image content or credentials (only the fields passed explicitly
are written)."""

import contextvars
import json
import logging
import re
import time
from typing import Any

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's own fields, then the request id (the record's, else the current one)."""
    fields = dict(getattr(record, "fields", {}))
    current = getattr(record, "request_id", None) or request_id.get()
    if current is not None:
        fields.setdefault("request_id", current)
    return fields


_BARE = re.compile(r"[A-Za-z0-9._:/@+-]+")


def _text_value(value: Any) -> str:
    """A value of a text line: bare when plain, else JSON-quoted (a path with spaces, quotes or
    line breaks stays one value on one line)."""
    if isinstance(value, str):
        return value if _BARE.fullmatch(value) else json.dumps(value)
    if isinstance(value, bool | int | float) or value is None:
        return json.dumps(value)
    return json.dumps(str(value))


class TextFormatter(logging.Formatter):
    """`time LEVEL logger message key=value …`: the fields a JSON line carries, the request id
    last, e.g. `… INFO dipr.access request method=POST path=/pose status=200 duration_ms=41.2
    client=127.0.0.1 request_id=9f…`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        pairs = " ".join(f"{key}={_text_value(value)}" for key, value in _fields(record).items())
        return f"{line} {pairs}" if pairs else line


def logging_config(fmt: str, level: str = "info") -> dict[str, Any]:
    """A dictConfig for uvicorn and dipr; uvicorn's own access log is replaced by dipr's."""
    formatter = {"()": JsonFormatter if fmt == "json" else TextFormatter}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "dipr": {"handlers": ["default"], "level": level.upper(), "propagate": False},
        },
    }
