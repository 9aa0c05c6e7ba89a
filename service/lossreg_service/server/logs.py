"""Structured logs: one JSON object per line, with the request id of the request being served.

The access log (one line a request, `log_access`) is most of what a busy server logs: when the
handler `configure_logging` installed is the only one that would see its record, the line goes
straight to it, built as the formatter would build it, without a ``LogRecord`` and the handler
chain (~4 us a line against ~16).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import time
from typing import Any

import orjson

__all__ = [
    "JsonFormatter",
    "RequestIdFilter",
    "StepBufferedHandler",
    "configure_logging",
    "log_access",
    "request_id_var",
]

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

# JSON escapes C0 itself; DEL, C1 (U+0085 NEL among them) and U+2028/U+2029 are legal raw in a
# JSON string but break lines (or terminals) in log viewers, so they are escaped as well.
_ESCAPES = {c: f"\\u{c:04x}" for c in (0x7F, *range(0x80, 0xA0), 0x2028, 0x2029)}

_access = logging.getLogger("lossreg.access")
_lossreg = logging.getLogger("lossreg")


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (``-`` outside a request) for formats and JSON handlers."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


_stamps: tuple[int, str] = (-1, "")


def _timestamp(created: float) -> str:
    """Local time to the second, as ``%Y-%m-%dT%H:%M:%S``: strftime once a second, not a line."""
    global _stamps
    second = int(created)
    if second != _stamps[0]:
        _stamps = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(created)))
    return _stamps[1]


def _head(created: float, level: str, logger: str, message: str, request_id: str) -> dict[str, Any]:
    """The fields every line starts with, in their order (`JsonFormatter` and `log_access`)."""
    return {
        "time": _timestamp(created),
        "level": level,
        "logger": logger,
        "message": message,
        "request_id": request_id,
    }


def _json_line(out: dict[str, Any]) -> str:
    line = orjson.dumps(out, default=str).decode()
    if line.isascii() and "\x7f" not in line:  # two C scans: translate() is a dict look-up a char
        return line
    return line.translate(_ESCAPES)


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", "request_id", ...extra fields}``."""

    def format(self, record: logging.LogRecord) -> str:
        out = _head(
            record.created,
            record.levelname.lower(),
            record.name,
            record.getMessage(),
            getattr(record, "request_id", "-"),
        )
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return _json_line(out)


class StepBufferedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes the lines of one event-loop step in one write.

    Written at once, an access line is a write syscall and a flush a request; a busy worker ends
    several requests in one step, and their lines leave together. Lines logged on a running
    event loop wait for the end of the current step (``call_soon``), at most ``most_lines`` of
    them; lines logged anywhere else (a compute thread, start-up, shutdown) write at once, after
    whatever waits, so the order is kept. ``logging.shutdown`` flushes what is left.
    """

    def __init__(self, stream: Any = None, *, most_lines: int = 256) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._scheduled = False
        self._most_lines = most_lines

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._add(line)

    def write_line(self, line: str) -> None:
        """Write a line formatted elsewhere (`log_access`), in order with the records."""
        with self.lock:  # type: ignore[union-attr]  # set by createLock
            self._add(line)

    def _add(self, line: str) -> None:
        self._pending.append(line)
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or len(self._pending) >= self._most_lines:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self.flush)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # set by createLock
            self._scheduled = False
            if not self._pending:
                return
            lines, self._pending = self._pending, []
            try:
                self.stream.write("\n".join(lines) + "\n")
                super().flush()
            except Exception:
                # a closed or broken stream: what logging does for one record, once per step
                record = logging.makeLogRecord({"msg": "%d log lines lost", "args": (len(lines),)})
                self.handleError(record)


def configure_logging(level: str = "info", *, access_log: bool = True) -> None:
    """Send ``lossreg.*`` logs to stderr as JSON lines, once per process; ``access_log=False``
    silences the per-request ``lossreg.access`` line (its call is then a level check).

    Left alone if the ``lossreg`` logger already has a handler (the host application's choice).
    """
    global _installed
    _lossreg.setLevel(level.upper())
    _access.setLevel(logging.NOTSET if access_log else logging.WARNING)
    if _lossreg.handlers:
        return
    handler = StepBufferedHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    _lossreg.addHandler(handler)
    _lossreg.propagate = False
    _installed = handler


_installed: StepBufferedHandler | None = None


def _direct_handler() -> StepBufferedHandler | None:
    """The installed handler, when an access record would reach it and nothing else: no handler,
    filter or level anywhere on the way that `log_access`'s direct line would bypass."""
    handler = _installed
    if (
        handler is None
        or _access.handlers
        or _access.filters
        or not _access.propagate
        or _lossreg.propagate
        or _lossreg.filters
        or len(_lossreg.handlers) != 1
        or _lossreg.handlers[0] is not handler
        or handler.level > logging.INFO
        or len(handler.filters) != 1
        or type(handler.filters[0]) is not RequestIdFilter
        or type(handler.formatter) is not JsonFormatter
    ):
        return None
    return handler


def log_access(message: str, args: tuple[Any, ...], fields: dict[str, Any]) -> None:
    """One access-log line: ``message % args``, with ``fields`` as the record's extra fields.

    Written by the installed handler directly when nothing else would see the record (the line
    is what `JsonFormatter` writes for it); through ``logging`` otherwise.
    """
    if not _access.isEnabledFor(logging.INFO):
        return
    handler = _direct_handler()
    if handler is None:
        # makeRecord + handle: what .info() does, less looking up the caller's file and line
        # (a frame walk, ~5 us, for a record whose origin is always this line)
        record = _access.makeRecord(
            _access.name, logging.INFO, __file__, 0, message, args, None, extra=fields
        )
        _access.handle(record)
        return
    line = _head(time.time(), "info", _access.name, message % args, request_id_var.get())
    for key, value in fields.items():
        line.setdefault(key, value)
    handler.write_line(_json_line(line))
