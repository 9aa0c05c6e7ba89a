"""Serving limits on a deliberately small server: body cap (413), full queue (503 +
Retry-After), timeout (504), ambiguous names (409), and the 500 fallback with a request id."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from torch import Tensor

from lossreg_service.registry import LossRegistry
from lossreg_service.server import create_app
from lossreg_service.settings import Settings
from tests.support.losses import slow_loss
from tests.support.server import serve, wait_for_gauge

CAP = 64 * 1024
TIMEOUT_S = 2.0


def other_mse(input: Tensor, target: Tensor) -> Tensor:
    return ((input - target) ** 2).mean()


class SmallSettings(Settings):
    """One worker, one queue place, a small body cap, a short timeout, and two test losses."""

    def build_registry(self) -> LossRegistry:
        registry = super().build_registry()
        registry.register(slow_loss, "slow_loss", distribution="lossreg-tests")
        registry.register(other_mse, "mse_loss", distribution="lossreg-tests")  # now ambiguous
        return registry


@pytest.fixture(scope="module")
def small_url() -> Iterator[str]:
    settings = SmallSettings(
        device="cpu",
        log_level="warning",
        compute_threads=1,
        max_queue=1,
        compute_timeout_s=TIMEOUT_S,
        max_request_bytes=CAP,
        retry_after_s=3,
    )
    with serve(settings) as url:
        yield url


@pytest.fixture(scope="module")
def http(small_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=small_url, timeout=30) as client:
        yield client


def slow(seconds: float) -> dict:
    return {"inputs": {"input": [1.0, 2.0]}, "params": {"seconds": seconds}}


def test_declared_body_over_the_cap(http: httpx.Client) -> None:
    r = http.post(
        "/v1/losses/slow_loss/evaluate",
        content=b" " * (CAP + 1),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 413
    assert r.json()["code"] == "payload_too_large" and f"limit of {CAP} bytes" in r.json()["error"]


def test_streamed_body_over_the_cap(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        for _ in range(CAP // 4096 + 2):
            yield b" " * 4096

    r = http.post("/v1/losses/slow_loss/evaluate", content=chunks())
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"


def test_decompressed_body_over_the_cap(http: httpx.Client) -> None:
    bomb = gzip.compress(b" " * (CAP * 4))
    assert len(bomb) < CAP
    r = http.post(
        "/v1/losses/slow_loss/evaluate", content=bomb, headers={"Content-Encoding": "gzip"}
    )
    assert r.status_code == 413 and "decompresses to" in r.json()["error"]


def test_small_compressed_body_is_fine(http: httpx.Client) -> None:
    body = gzip.compress(json.dumps(slow(0)).encode())
    r = http.post(
        "/v1/losses/slow_loss/evaluate", content=body, headers={"Content-Encoding": "gzip"}
    )
    assert r.status_code == 200 and r.json()["loss"] == 5.0


def test_full_queue_answers_503_with_retry_after(http: httpx.Client, small_url: str) -> None:
    results: dict[str, int] = {}

    def call(key: str) -> None:
        with httpx.Client(base_url=small_url, timeout=30) as own:
            results[key] = own.post("/v1/losses/slow_loss/evaluate", json=slow(0.6)).status_code

    first = threading.Thread(target=call, args=("first",))
    first.start()
    wait_for_gauge(http, "lossreg_requests_running", 1, timeout=5)
    second = threading.Thread(target=call, args=("second",))
    second.start()
    wait_for_gauge(http, "lossreg_requests_queued", 1, timeout=5)

    r = http.post("/v1/losses/slow_loss/evaluate", json=slow(0))
    assert r.status_code == 503 and r.json()["code"] == "server_busy"
    assert r.headers["Retry-After"] == "3" and r.json()["retry_after"] == 3
    # Refused before its body is read: the headers alone get the 503 (no 50 kB upload wasted).
    host, port = small_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/losses/slow_loss/evaluate HTTP/1.1\r\nHost: test\r\n"
            b"Content-Type: application/json\r\nContent-Length: 50000\r\n\r\n"
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 503")
    first.join()
    second.join()
    assert results == {"first": 200, "second": 200}  # the queued one was served
    assert http.post("/v1/losses/slow_loss/evaluate", json=slow(0)).status_code == 200


def test_computation_past_the_timeout_answers_504(http: httpx.Client) -> None:
    start = time.monotonic()
    r = http.post("/v1/losses/slow_loss/evaluate", json=slow(TIMEOUT_S + 0.5))
    assert r.status_code == 504 and r.json()["code"] == "compute_timeout"
    assert time.monotonic() - start < TIMEOUT_S + 0.4  # answered at the limit, not at the end
    # the overrunning computation still holds the worker; the next request waits, then runs
    assert http.post("/v1/losses/slow_loss/evaluate", json=slow(0)).status_code == 200


def test_ambiguous_bare_name_is_409_and_qualified_names_work(http: httpx.Client) -> None:
    r = http.get("/v2/models/mse_loss")
    assert r.status_code == 409 and r.json()["code"] == "ambiguous_loss"
    assert set(r.json()["candidates"]) == {"lossreg:mse_loss", "lossreg-tests:mse_loss"}
    body = {"inputs": {"input": [1.0, 3.0], "target": [0.0, 0.0]}}
    ours = http.post("/v1/losses/lossreg-tests:mse_loss/evaluate", json=body).json()
    theirs = http.post("/v1/losses/lossreg:mse_loss/evaluate", json=body).json()
    assert ours["loss"] == theirs["loss"] == 5.0


def test_unexpected_errors_are_500_with_the_request_id() -> None:
    app = create_app(Settings(device="cpu", log_level="critical"))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    with serve(app=app) as url:
        r = httpx.get(f"{url}/boom", headers={"X-Request-ID": "trace-42"})
        assert r.status_code == 500 and r.headers["X-Request-ID"] == "trace-42"
        assert r.json()["request_id"] == "trace-42" and "secret" not in r.text
        assert httpx.get(f"{url}/v2/health/live").status_code == 200
