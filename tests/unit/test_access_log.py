"""The access log's direct line and the step-buffered handler that writes it."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import weakref
from collections.abc import Iterator

import pytest

from lossreg_service.server import logs

_FIELDS = {
    "method": "POST",
    "path": "/v2/models/cross_entropy/infer",
    "route": "/v2/models/{model_name}/infer",
    "status": 200,
    "duration_ms": 1.234,
    "loss": "cross_entropy",
    "outcome": "success",
}


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """``configure_logging`` on a fresh ``lossreg`` logger writing to a StringIO; restored after."""
    lossreg = logging.getLogger("lossreg")
    access = logging.getLogger("lossreg.access")
    saved = (lossreg.handlers[:], lossreg.level, lossreg.propagate, access.level)
    lossreg.handlers.clear()
    monkeypatch.setattr(logs, "_installed", None)
    out = io.StringIO()
    monkeypatch.setattr(logs.sys, "stderr", out)
    logs.configure_logging("info")
    yield out
    if logs._installed is not None:
        logs._installed.flush()
    lossreg.handlers[:], lossreg.level, lossreg.propagate = saved[0], saved[1], saved[2]
    access.setLevel(saved[3])


def _ours_alone() -> None:
    """Only the installed handler on ``lossreg``: pytest's log capture attaches itself to
    non-propagating loggers once fixtures have run (and removes itself at the end either way)."""
    lossreg = logging.getLogger("lossreg")
    assert logs._installed is not None
    lossreg.handlers[:] = [logs._installed]


def _lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_the_direct_line_is_what_the_formatter_writes_for_the_record(stream: io.StringIO) -> None:
    _ours_alone()
    token = logs.request_id_var.set("req-7")
    try:
        assert logs._direct_handler() is logs._installed  # nothing else listens: direct
        logs.log_access("%s %s %s %.1fms", ("POST", _FIELDS["path"], 200, 1.234), _FIELDS)
        collector = _Collect()
        logging.getLogger("lossreg.access").addHandler(collector)  # any listener: the slow path
        try:
            assert logs._direct_handler() is None
            logs.log_access("%s %s %s %.1fms", ("POST", _FIELDS["path"], 200, 1.234), _FIELDS)
        finally:
            logging.getLogger("lossreg.access").removeHandler(collector)
    finally:
        logs.request_id_var.reset(token)
    direct, through_logging = _lines(stream)
    assert list(direct) == list(through_logging)  # same keys, same order
    assert {**direct, "time": None} == {**through_logging, "time": None}
    assert direct["request_id"] == "req-7" and direct["message"].endswith("200 1.2ms")
    assert len(collector.records) == 1 and collector.records[0].status == 200


def test_a_line_with_characters_that_break_lines_is_escaped(stream: io.StringIO) -> None:
    _ours_alone()
    fields = {**_FIELDS, "path": "/v2/models/a\u2028b\x7f\x85/infer"}
    logs.log_access("%s", (fields["path"],), fields)
    raw = stream.getvalue()
    assert raw.count("\n") == 1 and "\u2028" not in raw and "\x7f" not in raw
    assert "\\u2028" in raw and "\\u007f" in raw and "\\u0085" in raw
    assert _lines(stream)[0]["path"] == fields["path"]


def test_lines_of_one_event_loop_step_leave_in_one_write(stream: io.StringIO) -> None:
    _ours_alone()
    writes: list[str] = []
    original = stream.write

    def counting(text: str) -> int:
        writes.append(text)
        return original(text)

    stream.write = counting  # type: ignore[method-assign]

    async def serve_a_step() -> int:
        for status in (200, 404, 422):
            logs.log_access("%s", (status,), {**_FIELDS, "status": status})
        held = len(writes)
        await asyncio.sleep(0)  # the step ends: the handler's call_soon runs
        return held

    assert asyncio.run(serve_a_step()) == 0
    assert len(writes) == 1
    assert [line["status"] for line in _lines(stream)] == [200, 404, 422]


def test_a_line_from_a_thread_keeps_the_order_and_goes_at_once(stream: io.StringIO) -> None:
    _ours_alone()

    async def step() -> str:
        logs.log_access("%s", ("first",), _FIELDS)
        thread = threading.Thread(
            target=logging.getLogger("lossreg.server").warning, args=("from a thread",)
        )
        thread.start()
        thread.join()
        return stream.getvalue()  # before the step ends

    written = asyncio.run(step())
    assert [line["message"] for line in _lines(io.StringIO(written))] == [
        "first",
        "from a thread",
    ]


def test_a_long_step_writes_every_most_lines(stream: io.StringIO) -> None:
    _ours_alone()
    handler = logs._installed
    assert handler is not None

    async def burst() -> int:
        for n in range(handler._most_lines + 5):
            logs.log_access("%s", (n,), _FIELDS)
        return len(stream.getvalue().splitlines())

    assert asyncio.run(burst()) == handler._most_lines  # held lines stay bounded
    assert len(_lines(stream)) == handler._most_lines + 5


def test_shutdown_writes_what_is_held(stream: io.StringIO) -> None:
    _ours_alone()
    handler = logs._installed
    assert handler is not None

    async def log_then_exit() -> str:
        logs.log_access("%s", ("held",), _FIELDS)
        held = stream.getvalue()
        logging.shutdown([weakref.ref(handler)])  # what runs at interpreter exit
        return held

    assert asyncio.run(log_then_exit()) == ""
    assert [line["message"] for line in _lines(stream)] == ["held"]


def test_access_log_off_writes_nothing(stream: io.StringIO) -> None:
    _ours_alone()
    logs.configure_logging("info", access_log=False)
    logs.log_access("%s", ("x",), _FIELDS)
    logging.getLogger("lossreg.server").warning("still logged")
    assert [line["logger"] for line in _lines(stream)] == ["lossreg.server"]
