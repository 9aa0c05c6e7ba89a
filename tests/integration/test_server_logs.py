"""Structured logs: every request's record carries its request id, and renders as JSON."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lossreg_service.server.logs import JsonFormatter, RequestIdFilter
from lossreg_service.settings import Settings
from tests.support.cli_server import lossreg_serve
from tests.support.server import free_port, serve


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(RequestIdFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collected() -> Iterator[_Collect]:
    handler = _Collect()
    logger = logging.getLogger("lossreg")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def test_access_and_error_logs_carry_the_request_id(collected: _Collect) -> None:
    with serve(Settings(device="cpu", log_level="info")) as url:
        ok = httpx.post(
            f"{url}/v1/losses/mse_loss/evaluate",
            headers={"X-Request-ID": "log-1"},
            json={"inputs": {"input": [1.0], "target": [0.0]}},
        )
        bad = httpx.get(f"{url}/v2/models/nope", headers={"X-Request-ID": "log-2"})
    assert ok.status_code == 200 and bad.status_code == 404
    access = {r.request_id: r for r in collected.records if r.name == "lossreg.access"}
    assert access["log-1"].status == 200 and access["log-1"].loss == "mse_loss"
    assert access["log-1"].route == "/v1/losses/{name}/evaluate"
    assert access["log-2"].status == 404
    errors = [
        r for r in collected.records if r.name == "lossreg.server" and r.request_id == "log-2"
    ]
    assert errors and "no loss named 'nope'" in errors[0].getMessage()
    line = json.loads(JsonFormatter().format(access["log-1"]))
    assert line["request_id"] == "log-1" and line["status"] == 200 and line["level"] == "info"


@pytest.mark.parametrize(("setting", "lines"), [(None, 1), ("false", 0)])
def test_lossreg_serve_writes_one_access_line_per_request_or_none(
    tmp_path: Path, setting: str | None, lines: int
) -> None:
    """uvicorn's own access log is off under `lossreg serve`; lossreg's structured line is the
    one (``LOSSREG_ACCESS_LOG=false``: none)."""
    env = {"LOSSREG_DEVICE": "cpu", "LOSSREG_LOG_LEVEL": "info", "LOSSREG_GRPC_PORT": "0"}
    if setting is not None:
        env["LOSSREG_ACCESS_LOG"] = setting
    with lossreg_serve(["serve"], env, tmp_path) as server:
        before = server.log.read_text().count("/v2/models/mse_loss/infer")
        body = {
            "inputs": [
                {"name": "input", "shape": [2], "datatype": "FP32", "data": [1.0, 3.0]},
                {"name": "target", "shape": [2], "datatype": "FP32", "data": [0.0, 0.0]},
            ]
        }
        r = httpx.post(f"{server.url}/v2/models/mse_loss/infer", json=body, timeout=30)
        assert r.status_code == 200
        time.sleep(0.5)  # the line is written just after the response
        server.stop()
        mentions = [
            line
            for line in server.log.read_text().splitlines()
            if "/v2/models/mse_loss/infer" in line
        ]
    assert before == 0
    assert len(mentions) == lines, mentions
    for line in mentions:
        assert json.loads(line)["logger"] == "lossreg.access"


def test_lossreg_serve_writes_the_grpc_access_line(tmp_path: Path) -> None:
    """A gRPC call gets the same structured line, with its status and request id."""
    grpc = pytest.importorskip("grpc")
    from lossreg_service.server.grpc.proto import grpc_service_pb2 as pb
    from lossreg_service.server.grpc.proto import grpc_service_pb2_grpc as pb_grpc

    grpc_port = free_port()
    env = {
        "LOSSREG_DEVICE": "cpu",
        "LOSSREG_LOG_LEVEL": "info",
        "LOSSREG_WORKERS": "1",
        "LOSSREG_GRPC_PORT": str(grpc_port),
    }
    with lossreg_serve(["serve"], env, tmp_path) as server:
        request = pb.ModelInferRequest(model_name="l1_loss")
        for name in ("input", "target"):
            tensor = request.inputs.add(name=name, datatype="FP32", shape=[1])
            tensor.contents.fp32_contents.append(1.0)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            _, call = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer.with_call(
                request, timeout=30
            )
        request_id = dict(call.trailing_metadata())["x-request-id"]
        time.sleep(0.5)  # the line is written just after the answer
        server.stop()
        lines = [
            json.loads(line)
            for line in server.log.read_text().splitlines()
            if line.startswith("{") and request_id in line
        ]
    assert len(lines) == 1, lines
    line = lines[0]
    assert line["logger"] == "lossreg.access" and line["method"] == "GRPC"
    assert line["route"] == "/inference.GRPCInferenceService/ModelInfer"
    assert line["status"] == 0 and line["outcome"] == "success" and line["loss"] == "l1_loss"
    assert line["request_id"] == request_id
