"""``GET /v2/health/ready`` turns false while the registry loads, while a configured device is
unusable, and while the server shuts down; liveness stays true through all three."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
import torch
from torch import Tensor

from lossreg_service.registry import LossRegistry
from lossreg_service.server.readiness import DEVICE_CHECK_INTERVAL_S
from lossreg_service.settings import Settings
from tests.support.cli_server import lossreg_serve, wait_workers_ready
from tests.support.server import free_port, serve

BODY = {"inputs": {"input": [1.0, 3.0], "target": [0.0, 0.0]}}
V2 = {
    "inputs": [
        {"name": "input", "shape": [2], "datatype": "FP32", "data": [1.0, 3.0]},
        {"name": "target", "shape": [2], "datatype": "FP32", "data": [0.0, 0.0]},
    ]
}


def _ready(url: str) -> httpx.Response:
    return httpx.get(f"{url}/v2/health/ready", timeout=10)


def _until_ready(url: str, seconds: float) -> float:
    start = time.monotonic()
    while _ready(url).status_code != 200:
        assert time.monotonic() - start < seconds, _ready(url).text
        time.sleep(0.05)
    return time.monotonic() - start


class GatedSettings(Settings):
    """Settings whose registry build waits for the test (a plugin that is slow to import)."""

    gate: ClassVar[threading.Event] = threading.Event()

    def build_registry(self) -> LossRegistry:
        assert self.gate.wait(60), "the test never opened the gate"
        return super().build_registry()


def test_not_ready_while_the_registry_loads_and_requests_wait_for_it() -> None:
    GatedSettings.gate.clear()
    with serve(GatedSettings(device="cpu", log_level="warning"), ready=False) as url:
        with ThreadPoolExecutor(2) as pool:
            try:
                r = _ready(url)
                assert r.status_code == 503
                assert r.json() == {"ready": False, "reasons": ["loading the loss registry"]}
                assert httpx.get(f"{url}/v2/health/live").json() == {"live": True}
                # Requests sent now (v1, and v2 through the inference fast path) wait for it.
                v1 = pool.submit(
                    httpx.post, f"{url}/v1/losses/mse_loss/evaluate", json=BODY, timeout=30
                )
                v2 = pool.submit(httpx.post, f"{url}/v2/models/mse_loss/infer", json=V2, timeout=30)
                time.sleep(0.5)
                assert not v1.done() and not v2.done()
                assert _ready(url).status_code == 503
            finally:
                GatedSettings.gate.set()
            assert v1.result().status_code == 200 and v1.result().json()["loss"] == 5.0
            assert v2.result().status_code == 200
        _until_ready(url, 60)
        assert _ready(url).json() == {"ready": True}


def test_requests_waiting_for_the_registry_get_503_at_the_compute_timeout() -> None:
    GatedSettings.gate.clear()
    settings = GatedSettings(device="cpu", log_level="warning", compute_timeout_s=0.5)
    with serve(settings, ready=False) as url:
        try:
            busy = httpx.post(f"{url}/v1/losses/mse_loss/evaluate", json=BODY, timeout=30)
            assert busy.status_code == 503 and busy.json()["code"] == "server_not_ready"
            assert int(busy.headers["Retry-After"]) >= 1
            assert httpx.get(f"{url}/v2/models/mse_loss/ready").status_code == 503
        finally:
            GatedSettings.gate.set()
        _until_ready(url, 60)


def device_error_loss(input: Tensor) -> Tensor:
    """What torch raises once a CUDA device has failed (simulated, so CPU-only CI sees it)."""
    raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered (sim.)")


def plugin_bug_loss(input: Tensor) -> Tensor:
    """A loss with a bug of its own: the device is fine."""
    raise RuntimeError("index out of range in the plugin")


class DeviceFaultSettings(Settings):
    def build_registry(self) -> LossRegistry:
        registry = super().build_registry()
        registry.register(device_error_loss, "device_error_loss", distribution="lossreg-faults")
        registry.register(plugin_bug_loss, "plugin_bug_loss", distribution="lossreg-faults")
        return registry


def test_not_ready_while_a_device_is_unusable() -> None:
    one = {"inputs": {"input": [1.0, 2.0]}}
    with serve(DeviceFaultSettings(device="cpu", log_level="critical")) as url:
        # A loss's own bug says nothing about the device.
        bug = httpx.post(f"{url}/v1/losses/plugin_bug_loss/evaluate", json=one)
        assert bug.status_code == 422 and bug.json()["code"] == "loss_rejected_input"
        assert _ready(url).status_code == 200
        # A device error does: not ready, and compute refused, until a re-check passes.
        failed = httpx.post(f"{url}/v1/losses/device_error_loss/evaluate", json=one)
        assert failed.status_code == 503 and failed.json()["code"] == "server_not_ready"
        assert "device cpu failed (AcceleratorError: CUDA error" in failed.json()["error"]
        r = _ready(url)
        assert r.status_code == 503 and r.json()["ready"] is False
        (reason,) = r.json()["reasons"]
        assert reason.startswith("device cpu is unusable (AcceleratorError: CUDA error")
        refused = httpx.post(f"{url}/v1/losses/mse_loss/evaluate", json=BODY)
        assert refused.status_code == 503 and refused.json()["code"] == "server_not_ready"
        assert "device cpu is unusable" in refused.json()["error"]
        assert httpx.get(f"{url}/v2/health/live").status_code == 200
        # The CPU itself works, so the next check (after a whole interval) brings it back.
        waited = _until_ready(url, DEVICE_CHECK_INTERVAL_S * 5)
        assert waited > DEVICE_CHECK_INTERVAL_S / 2
        ok = httpx.post(f"{url}/v1/losses/mse_loss/evaluate", json=BODY)
        assert ok.status_code == 200 and ok.json()["loss"] == 5.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_a_cuda_device_passes_its_start_up_check() -> None:
    with serve(Settings(device="cuda:0", log_level="warning")) as url:
        assert _ready(url).json() == {"ready": True}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_not_ready_while_shutting_down_and_still_serving_during_the_drain(tmp_path: Path) -> None:
    drain_s = 4.0
    env = {"LOSSREG_DRAIN_S": str(drain_s), "LOSSREG_DEVICE": "cpu", "LOSSREG_WORKERS": "2"}
    with lossreg_serve(["serve"], env, tmp_path) as server:
        url = server.url
        wait_workers_ready(server, 2)
        server.process.send_signal(signal.SIGTERM)
        stopping = time.monotonic()
        seen: list[tuple[float, int]] = []  # (seconds after SIGTERM, readiness status)
        while time.monotonic() - stopping < drain_s - 1.5:  # well inside the drain window
            r = _ready(url)
            seen.append((time.monotonic() - stopping, r.status_code))
            if r.status_code == 503:
                assert r.json() == {"ready": False, "reasons": ["shutting down"]}
                assert httpx.get(f"{url}/v2/health/live").status_code == 200
                ok = httpx.post(f"{url}/v1/losses/mse_loss/evaluate", json=BODY)
                assert ok.status_code == 200 and ok.json()["loss"] == 5.0
            time.sleep(0.1)
        # Unready soon (uvicorn's supervisor passes SIGTERM on within its 0.5 s poll), then
        # unready for good.
        statuses = [status for _, status in seen]
        assert 503 in statuses, seen
        first = statuses.index(503)
        assert seen[first][0] < 1.5 and set(statuses[first:]) == {503}, seen
        code = server.process.wait(timeout=60)
        assert time.monotonic() - stopping >= drain_s - 0.5  # it waited out the drain
        assert code in (0, 128 + signal.SIGTERM, -signal.SIGTERM), server.log.read_text()
    with pytest.raises(httpx.TransportError):
        _ready(url)
    assert server.metrics_dirs == []


def test_grpc_health_and_server_ready_follow_readiness_while_the_registry_loads() -> None:
    grpc = pytest.importorskip("grpc")
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    tritongrpc = pytest.importorskip("tritonclient.grpc")
    port = free_port()
    GatedSettings.gate.clear()
    settings = GatedSettings(device="cpu", log_level="warning", grpc_port=port)
    with serve(settings, ready=False) as url, grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        client = tritongrpc.InferenceServerClient(f"127.0.0.1:{port}")

        def statuses() -> set[int]:
            return {
                health.Check(health_pb2.HealthCheckRequest(service=s), timeout=10).status
                for s in ("", "inference.GRPCInferenceService")
            }

        with ThreadPoolExecutor(2) as pool:
            try:
                assert _ready(url).status_code == 503
                assert statuses() == {health_pb2.HealthCheckResponse.NOT_SERVING}
                assert client.is_server_ready() is False
                assert client.is_server_live() is True
                # Model RPCs sent now wait for the registry, as REST's routes do.
                waiting = [
                    pool.submit(client.get_model_metadata, "mse_loss", as_json=True),
                    pool.submit(client.get_inference_statistics, "mse_loss", as_json=True),
                ]
                time.sleep(0.5)
                assert not any(w.done() for w in waiting)
            finally:
                GatedSettings.gate.set()
            metadata, stats = (w.result(timeout=30) for w in waiting)
        assert metadata["name"] == "mse_loss"
        assert [s["name"] for s in stats["model_stats"]] == ["mse_loss"]
        _until_ready(url, 60)
        assert statuses() == {health_pb2.HealthCheckResponse.SERVING}
        assert client.is_server_ready() is True
        client.close()
