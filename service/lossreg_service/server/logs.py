"""Structured logs: one JSON object per line, with the request id of the request being served."""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

from .middleware import RequestIdFilter

__all__ = ["JsonFormatter", "configure_logging"]

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

# JSON escapes C0 itself; DEL, C1 (U+0085 NEL among them) and U+2028/U+2029 are legal raw in a
# JSON string but break lines (or terminals) in log viewers, so they are escaped as well.
_ESCAPES = {c: f"\\u{c:04x}" for c in (0x7F, *range(0x80, 0xA0), 0x2028, 0x2029)}


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", "request_id", ...extra fields}``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode().translate(_ESCAPES)


def configure_logging(level: str = "info", *, access_log: bool = True) -> None:
    """Send ``lossreg.*`` logs to stderr as JSON lines, once per process; ``access_log=False``
    silences the per-request ``lossreg.access`` line (its call is then a level check).

    Left alone if the ``lossreg`` logger already has a handler (the host application's choice).
    """
    logger = logging.getLogger("lossreg")
    logger.setLevel(level.upper())
    logging.getLogger("lossreg.access").setLevel(logging.NOTSET if access_log else logging.WARNING)
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    logger.addHandler(handler)
    logger.propagate = False
