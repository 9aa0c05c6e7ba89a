"""Whole-server statistics with two worker processes: Triton's statistics extension, read over
REST (``GET /v2/models/stats``) or gRPC (``ModelStatistics``), whichever worker answers, counts
every request the server handled, REST and gRPC alike, a killed worker's included."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support.cli_server import lossreg_serve, per_worker, wait_workers_ready
from tests.support.server import free_port

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

LOSS = "mse_loss"
GOOD = {
    "inputs": [
        {"name": "input", "shape": [2], "datatype": "FP32", "data": [1.0, 3.0]},
        {"name": "target", "shape": [2], "datatype": "FP32", "data": [0.0, 0.0]},
    ]
}
# A target whose data does not fill its shape: rejected while decoding, before any computation.
BAD = {"inputs": [GOOD["inputs"][0], {**GOOD["inputs"][1], "shape": [3]}]}


def _infer(url: str, body: dict[str, Any]) -> int:
    """One REST request on a fresh connection (so the kernel may hand it to either worker)."""
    return httpx.post(f"{url}/v2/models/{LOSS}/infer", json=body, timeout=30).status_code


def _grpc_infer(target: str) -> None:
    with grpcclient.InferenceServerClient(target) as client:  # a fresh channel
        inputs = []
        for name, value in (("input", [2.0, 2.0]), ("target", [0.0, 0.0])):
            item = grpcclient.InferInput(name, [2], "FP32")
            item.set_data_from_numpy(np.array(value, np.float32))
            inputs.append(item)
        assert client.infer(LOSS, inputs).as_numpy("loss") == pytest.approx(4.0)


def _rest_stats(url: str) -> dict[str, Any]:
    """``GET /v2/models/stats`` with a fresh client (a fresh connection)."""
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    try:
        stats = client.get_inference_statistics()["model_stats"]
    finally:
        client.close()
    return next(s for s in stats if s["name"] == LOSS)


def _grpc_stats(target: str) -> dict[str, Any]:
    with grpcclient.InferenceServerClient(target) as client:
        stats = client.get_inference_statistics(LOSS, as_json=True)["model_stats"]
    (entry,) = stats
    return entry


def _check(entry: dict[str, Any], ok: int, failed: int) -> None:
    # protobuf's JSON writes 64-bit integers as strings and leaves zeros out
    inference = entry["inference_stats"]
    assert int(inference["success"]["count"]) == ok, (inference, ok)
    assert int(inference["fail"].get("count", 0)) == failed, (inference, failed)
    assert int(entry["inference_count"]) == ok
    assert 0 < int(entry["execution_count"]) <= ok
    for stage in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert int(inference[stage]["count"]) == ok, stage
    batches = entry["batch_stats"]
    assert sum(int(b["batch_size"]) * int(b["compute_infer"]["count"]) for b in batches) == ok
    assert int(entry["last_inference"]) > 1_600_000_000_000  # ms since the epoch


def test_every_statistics_read_counts_every_request_of_both_workers(tmp_path: Path) -> None:
    grpc_port = free_port()
    target = f"127.0.0.1:{grpc_port}"
    env = {"LOSSREG_DRAIN_S": "0", "LOSSREG_GRPC_PORT": str(grpc_port)}
    args = ["serve", "--workers", "2", "--device", "cpu"]
    with lossreg_serve(args, env, tmp_path) as server:
        wait_workers_ready(server, 2)
        ok = failed = 0
        history: list[int] = []
        while ok < 150:
            for _ in range(4):
                assert _infer(server.url, GOOD) == 200
            assert _infer(server.url, BAD) == 422
            _grpc_infer(target)
            ok, failed = ok + 5, failed + 1
            for _ in range(3):  # each on a fresh connection: either worker may answer
                entry = _rest_stats(server.url)
                _check(entry, ok, failed)
                history.append(int(entry["inference_stats"]["success"]["ns"]))
                _check(_grpc_stats(target), ok, failed)
            # Both workers have served (their own request counters, not the statistics).
            shares = per_worker(
                server, "counter", "lossreg_requests_total", loss=LOSS, outcome="success"
            )
            if ok >= 20 and len(shares) == 2 and min(shares.values()) > 0:
                break
        assert len(shares) == 2 and min(shares.values()) > 0, shares
        assert history == sorted(history)  # never backwards across reads

        # A worker killed mid-run: uvicorn replaces it, and its counts stay in every read.
        killed = min(shares)
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while len(server.worker_pids() - {killed}) < 2:
            assert time.monotonic() < deadline, server.log.read_text()
            time.sleep(0.2)
        wait_workers_ready(server, 2)
        for _ in range(4):
            _check(_rest_stats(server.url), ok, failed)
            _check(_grpc_stats(target), ok, failed)
