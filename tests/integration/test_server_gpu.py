"""On CUDA: one pool per device, results matching torch, memory metrics, and out-of-memory
answered 503 with the server recovered. Skipped without a GPU."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import torch
from torch import Tensor

from lossreg_service.registry import LossRegistry
from lossreg_service.settings import Settings
from tests.support.loss_cases import make_case, reference
from tests.support.server import serve

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def greedy_loss(input: Tensor) -> Tensor:
    """Asks for far more memory than any GPU has."""
    waste = torch.empty(1 << 45, dtype=torch.uint8, device=input.device)
    return input.sum() + waste[:1].float().sum()


class GpuSettings(Settings):
    def build_registry(self) -> LossRegistry:
        registry = super().build_registry()
        registry.register(greedy_loss, "greedy_loss", distribution="lossreg-tests")
        return registry


@pytest.fixture(scope="module")
def gpu_url() -> Iterator[str]:
    with serve(GpuSettings(device="auto", log_level="warning")) as url:
        yield url


def test_cross_entropy_on_the_gpu_matches_torch(gpu_url: str) -> None:
    tensors, params = make_case("cross_entropy")
    body = {"inputs": {k: v.tolist() for k, v in tensors.items()}, "params": params}
    r = httpx.post(f"{gpu_url}/v1/losses/cross_entropy/evaluate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    value, grads = reference("cross_entropy", tensors, params, ["input"])
    assert r.json()["loss"] == pytest.approx(value.item(), rel=1e-5)
    torch.testing.assert_close(torch.tensor(r.json()["grads"]["input"]), grads["input"])


def test_every_cuda_device_has_a_pool_and_memory_metrics(gpu_url: str) -> None:
    text = httpx.get(f"{gpu_url}/metrics").text
    for i in range(torch.cuda.device_count()):
        assert f'lossreg_requests_queued{{device="cuda:{i}"}}' in text
        assert f'lossreg_device_memory_bytes{{device="cuda:{i}",kind="reserved"}}' in text


def test_out_of_memory_is_503_and_the_server_recovers(gpu_url: str) -> None:
    r = httpx.post(
        f"{gpu_url}/v1/losses/greedy_loss/evaluate",
        json={"inputs": {"input": [1.0, 2.0]}},
        timeout=60,
    )
    assert r.status_code == 503 and r.json()["code"] == "device_out_of_memory"
    assert "Retry-After" in r.headers
    ok = httpx.post(
        f"{gpu_url}/v1/losses/mse_loss/evaluate",
        timeout=60,
        json={"inputs": {"input": [1.0, 3.0], "target": [0.0, 0.0]}},
    )
    assert ok.status_code == 200 and ok.json()["loss"] == 5.0
