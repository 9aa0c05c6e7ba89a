"""Faults inside the server: a loss that raises, returns NaN, hangs past the compute timeout or
runs the device out of memory; a plugin that fails to import; and a shutdown with requests in
flight. Each gets its documented answer, and the server goes on serving correctly.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from lossreg.errors import PluginLoadError
from lossreg_service.server import create_app
from lossreg_service.settings import Settings
from tests.support.plugins import make_distribution

from ._harness import RELEASE, FaultSettings, assert_still_serving, running

TIMEOUT_S = 1.0
ONE = {"inputs": {"input": [1.0, 2.0]}}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    """One worker thread, so a computation that kept its slot would starve the next request."""
    RELEASE.clear()
    settings = FaultSettings(
        device="cpu", log_level="critical", compute_threads=1, compute_timeout_s=TIMEOUT_S
    )
    try:
        with running(settings) as server:
            yield server.url
    finally:
        RELEASE.set()  # let abandoned computations end


@pytest.fixture(scope="module")
def http(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=30) as client:
        yield client


def evaluate(http: httpx.Client, loss: str, body: dict = ONE) -> httpx.Response:
    return http.post(f"/v1/losses/{loss}/evaluate", json=body)


def test_a_loss_that_raises_is_a_500_compute_error_naming_the_loss(http: httpx.Client) -> None:
    r = evaluate(http, "raising_loss")
    assert r.status_code == 500 and r.json()["code"] == "compute_error"
    assert "raising_loss failed: KeyError" in r.json()["error"]
    assert_still_serving(http)


def test_a_loss_that_returns_nan(http: httpx.Client) -> None:
    rejected = evaluate(http, "nan_loss")
    assert rejected.status_code == 422 and rejected.json()["code"] == "non_finite"
    assert rejected.json()["field"] == "loss"
    allowed = evaluate(http, "nan_loss", {**ONE, "nonfinite": "allow"})
    assert allowed.status_code == 200, allowed.text
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    expected = (x * torch.log(x - x)).sum()
    (grad,) = torch.autograd.grad(expected, [x])
    assert not torch.isfinite(expected) and allowed.json()["loss"] is None
    assert allowed.json()["nonfinite"] == ["loss", "grad_input"]
    assert allowed.json()["grads"]["input"] == [None if not torch.isfinite(g) else g for g in grad]
    assert_still_serving(http)


def test_a_hanging_loss_is_504_and_its_worker_slot_is_reclaimed(http: httpx.Client) -> None:
    start = time.monotonic()
    r = evaluate(http, "hanging_loss")
    assert r.status_code == 504 and r.json()["code"] == "compute_timeout"
    assert TIMEOUT_S <= time.monotonic() - start < TIMEOUT_S + 1
    # The computation is still stuck, yet the only worker slot is free again: the next
    # requests are answered at once rather than queueing behind it until they time out too.
    for _ in range(3):
        start = time.monotonic()
        assert_still_serving(http)
        assert time.monotonic() - start < TIMEOUT_S / 2
    running_gauge = [
        line
        for line in http.get("/metrics").text.splitlines()
        if line.startswith('lossreg_requests_running{device="cpu"}')
    ]
    assert running_gauge == ['lossreg_requests_running{device="cpu"} 0.0']


def test_a_second_hang_is_reclaimed_too(http: httpx.Client) -> None:
    assert evaluate(http, "hanging_loss").status_code == 504
    assert evaluate(http, "hanging_loss").status_code == 504
    assert_still_serving(http)


def test_device_out_of_memory_is_503_the_cache_is_emptied_and_the_next_request_served(
    http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    emptied: list[float] = []
    real = torch.cuda.empty_cache
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: (emptied.append(1.0), real())[1])
    r = evaluate(http, "oom_loss")
    assert r.status_code == 503 and r.json()["code"] == "device_out_of_memory"
    assert "out of memory on cpu" in r.json()["error"] and int(r.headers["Retry-After"]) >= 1
    assert emptied, "the allocator cache was not emptied after the out-of-memory error"
    assert_still_serving(http)


# -- plugins ----------------------------------------------------------------------------------

BROKEN = """
import lossreg_dependency_that_is_not_installed  # noqa: F401

def loss(input):
    return input.sum()
"""
GOOD = """
def loss(input):
    return (input * 3).sum()
"""


@pytest.fixture()
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    make_distribution(
        tmp_path,
        "lossreg-broken-plugin",
        {
            "broken_loss": "lossreg_reliability_broken:loss",
            "tripled": "lossreg_reliability_ok:loss",
        },
        modules={"lossreg_reliability_broken": BROKEN, "lossreg_reliability_ok": GOOD},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_plugin_that_fails_to_import_is_reported_and_the_rest_serves(plugin_path: Path) -> None:
    with running(Settings(device="cpu", log_level="critical")) as server:
        http = httpx.Client(base_url=server.url, timeout=30)
        spec = http.get("/v1/losses/broken_loss").json()
        assert spec["available"] is False
        assert "lossreg_dependency_that_is_not_installed" in spec["error"]
        r = http.post("/v1/losses/broken_loss/evaluate", json=ONE)
        assert r.status_code == 503 and r.json()["code"] == "loss_unavailable"
        assert http.get("/v2/models/broken_loss/ready").status_code == 503
        tripled = http.post("/v1/losses/tripled/evaluate", json=ONE)
        assert tripled.status_code == 200 and tripled.json()["loss"] == 9.0
        assert http.get("/v2/health/ready").json() == {"ready": True}
        assert_still_serving(http)
        http.close()


def test_strict_plugins_make_a_failed_import_stop_start_up(plugin_path: Path) -> None:
    """The app's lifespan fails (so the process never turns ready), naming the plugin."""
    app = create_app(Settings(device="cpu", log_level="critical", strict_plugins=True))

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(PluginLoadError, match="lossreg_dependency_that_is_not_installed"):
        asyncio.run(start())


# -- shutdown ---------------------------------------------------------------------------------


def test_graceful_shutdown_finishes_in_flight_requests() -> None:
    settings = FaultSettings(device="cpu", log_level="critical", compute_threads=2)
    with running(settings) as server:
        answers: list[httpx.Response] = []

        def slow(seconds: float) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as own:
                body = {"inputs": {"input": [1.0, 2.0]}, "params": {"seconds": seconds}}
                answers.append(own.post("/v1/losses/slow_loss/evaluate", json=body))

        callers = [threading.Thread(target=slow, args=(s,)) for s in (1.0, 1.5)]
        for caller in callers:
            caller.start()
        deadline = time.monotonic() + 5
        while (
            'lossreg_requests_running{device="cpu"} 2.0'
            not in httpx.get(f"{server.url}/metrics").text
        ):
            assert time.monotonic() < deadline, "the slow requests never started"
            time.sleep(0.02)
        stopping = time.monotonic()
        server.stop()  # what SIGTERM does: stop accepting, drain, then the lifespan ends
        for caller in callers:
            caller.join()
        assert not server.thread.is_alive()
        assert time.monotonic() - stopping >= 1.0  # it waited for them
        assert [a.status_code for a in answers] == [200, 200]
        assert [a.json()["loss"] for a in answers] == [5.0, 5.0]
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/v2/health/live")
