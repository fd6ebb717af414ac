"""Structured logs: one JSON object per line (or, as text, one line of `key=value` fields),
carrying the request id; never image content or credentials (only the fields passed explicitly
are written)."""

import asyncio
import contextlib
import contextvars
import json
import logging
import re
import time
from typing import Any, TextIO

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


# json.dumps(entry, default=str) builds this encoder on every call.
_JSON_LINE = json.JSONEncoder(default=str)


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        # The last second formatted: every access line of a busy second shares it (strftime and
        # gmtime per line were a visible part of a request's cost, issue #16).
        self._second = -1
        self._second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        entry: dict[str, Any] = {
            "time": f"{self._second_text}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _JSON_LINE.encode(entry)


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


ACCESS_LOGGER = "dipr.access"


class AccessBufferingHandler(logging.StreamHandler[TextIO]):
    """A stream handler that writes access lines in bunches: one write per `delay_s` on a busy
    event loop instead of one per request.

    Each write is a system call that gives up the GIL, which the decoding threads then hold
    until their next release: per request, the event loop's thread paid for the write and for
    getting the GIL back (issue #16). Only `dipr.access` lines at INFO or below, logged from a
    thread running an event loop, wait (at most `delay_s`, flushed by the loop, or until the
    service has no request left in flight: `write_waiting_lines`); any other line writes the
    waiting ones first, then itself, at once, so the order of lines is kept, and a warning or an
    error is never late. What waits at exit is written by logging's shutdown."""

    def __init__(self, stream: TextIO | None = None, delay_s: float = 0.05) -> None:
        super().__init__(stream)
        self.delay_s = delay_s
        self._waiting: list[str] = []
        self._first_waiting_at = 0.0  # time.time() of the oldest line waiting
        self._flush_loop: asyncio.AbstractEventLoop | None = None  # where a flush is scheduled

    def emit(self, record: logging.LogRecord) -> None:  # called with the handler's lock held
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        loop = None
        if record.name == ACCESS_LOGGER and record.levelno <= logging.INFO:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not on an event loop's thread: nothing would flush it
                loop = None
        if not self._waiting:
            self._first_waiting_at = record.created
        self._waiting.append(line)
        # Written now: lines that must not wait, and any that waited far longer than they should
        # (the loop that was to flush them stopped).
        if loop is None or record.created - self._first_waiting_at > 20 * self.delay_s:
            try:
                self._write_waiting()
            except Exception:  # as StreamHandler does: reported, not raised
                self.handleError(record)
        elif loop is not self._flush_loop:
            self._flush_loop = loop
            loop.call_later(self.delay_s, self.flush)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            self._flush_loop = None
            # A closed or broken stream: dropped, as logging.shutdown does.
            with contextlib.suppress(OSError, ValueError):
                self._write_waiting()

    def _write_waiting(self) -> None:
        if self._waiting:
            text = "".join(self._waiting)
            self._waiting.clear()
            self.stream.write(text)
        if self.stream and hasattr(self.stream, "flush"):
            self.stream.flush()


def write_waiting_lines(logger: logging.Logger) -> None:
    """Write the lines waiting in the buffering handlers that `logger`'s records reach: when the
    service goes idle, its lines are in the log before its next request arrives, as when every
    line was written at once (a client that reads the log after its answer finds it there)."""
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if isinstance(handler, AccessBufferingHandler):
                handler.flush()
        current = current.parent if current.propagate else None


def logging_config(fmt: str, level: str = "info") -> dict[str, Any]:
    """A dictConfig for uvicorn and dipr; uvicorn's own access log is replaced by dipr's."""
    formatter = {"()": JsonFormatter if fmt == "json" else TextFormatter}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "dipr.service.logs.AccessBufferingHandler",
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
