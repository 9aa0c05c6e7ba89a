"""Dynamic batching on a real server: concurrent requests share computations, and every answer
is the one the request would get alone (checked against the engine, itself checked against
plain torch)."""

from __future__ import annotations

import concurrent.futures
import re
from collections.abc import Iterator

import httpx
import pytest
import torch

from lossreg import Client
from lossreg_service.engine import evaluate
from lossreg_service.registry import LossRegistry
from lossreg_service.settings import Settings
from tests.support.server import serve

REGISTRY = LossRegistry.from_entry_points()


def _requests(n: int) -> list[tuple[str, dict[str, torch.Tensor], dict[str, float]]]:
    """A burst mixing losses, parameters and shapes: only like requests may share a batch."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        rows = 16 if i % 3 else 8
        x, y = torch.randn(rows, 10, generator=g), torch.randint(0, 10, (rows,), generator=g)
        if i % 5 == 4:
            out.append(("mse_loss", {"input": x, "target": torch.randn(rows, 10, generator=g)}, {}))
        else:
            params = {"label_smoothing": 0.1} if i % 2 else {}
            out.append(("cross_entropy", {"input": x, "target": y}, params))
    return out


def _counts(url: str, device: str = "cpu") -> tuple[float, float]:
    """(computations run, requests answered) for cross_entropy, from /metrics."""
    text = httpx.get(url + "/metrics").text
    computations = re.search(
        rf'^lossreg_compute_duration_seconds_count\{{device="{device}[:0-9]*",'
        r'loss="cross_entropy"\} (\S+)',
        text,
        re.M,
    )
    requests = re.search(
        r'^lossreg_requests_total\{loss="cross_entropy",outcome="success"\} (\S+)', text, re.M
    )
    return (float(computations.group(1)) if computations else 0.0,
            float(requests.group(1)) if requests else 0.0)  # fmt: skip


def _burst(url: str, n: int = 48) -> list[tuple[str, dict[str, torch.Tensor], dict, object]]:
    burst = _requests(n)
    with Client(url) as client, concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(
            pool.map(lambda r: client.evaluate(r[0], params=r[2], grad=["input"], **r[1]), burst)
        )
    return [(*request, answer) for request, answer in zip(burst, answers)]


@pytest.fixture(scope="module")
def batching_url() -> Iterator[str]:
    settings = Settings(device="cpu", log_level="warning", batch_max_delay_us=20_000)
    with serve(settings) as url:
        yield url


def test_concurrent_requests_are_batched_and_answered_as_alone(batching_url: str) -> None:
    for name, tensors, params, answer in _burst(batching_url):
        alone = evaluate(REGISTRY.get(name), tensors, params, grad=["input"])
        assert torch.equal(answer.loss, alone.loss), name
        assert torch.equal(answer.grads["input"], alone.grads["input"]), name
    computations, requests = _counts(batching_url)
    assert requests >= 38  # the cross-entropy requests of the burst
    assert computations < requests / 2  # they shared computations


def test_without_batching_every_request_computes_alone() -> None:
    with serve(Settings(device="cpu", log_level="warning", batch_max_size=1)) as url:
        for name, tensors, params, answer in _burst(url, 24):
            alone = evaluate(REGISTRY.get(name), tensors, params, grad=["input"])
            assert torch.equal(answer.grads["input"], alone.grads["input"])
        computations, requests = _counts(url)
        assert computations == requests > 0


def test_vmapped_batches_give_the_same_gradients() -> None:
    settings = Settings(device="cpu", log_level="warning", batch_vmap="on",
                        batch_max_delay_us=20_000)  # fmt: skip
    with serve(settings) as url:
        for name, tensors, params, answer in _burst(url, 32):
            alone = evaluate(REGISTRY.get(name), tensors, params, grad=["input"])
            assert torch.equal(answer.grads["input"], alone.grads["input"]), name
            torch.testing.assert_close(answer.loss, alone.loss, rtol=8 * 2**-23, atol=0)  # ulp


def test_a_bad_request_in_a_batch_fails_alone(batching_url: str) -> None:
    good = torch.randint(0, 10, (16,))
    bad = good.clone()
    bad[3] = 42

    def send(target: torch.Tensor) -> object:
        with Client(batching_url) as client:
            try:
                return client.evaluate("cross_entropy", torch.randn(16, 10), target)
            except Exception as exc:  # noqa: BLE001 - the outcome under test
                return exc

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(send, [bad if i == 5 else good for i in range(8)]))
    assert [isinstance(o, Exception) for o in outcomes] == [i == 5 for i in range(8)]
    assert getattr(outcomes[5], "status_code", None) == 422


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batches_are_vmapped_on_the_gpu_and_agree_with_unbatched() -> None:
    settings = Settings(device="cuda", log_level="warning", batch_max_delay_us=20_000)
    with serve(settings) as url:
        for name, tensors, params, answer in _burst(url, 64):
            on_gpu = {k: v.cuda() for k, v in tensors.items()}
            alone = evaluate(REGISTRY.get(name), on_gpu, params, grad=["input"], device="cuda")
            torch.testing.assert_close(answer.grads["input"], alone.grads["input"].cpu())
            torch.testing.assert_close(answer.loss, alone.loss.cpu())
        computations, requests = _counts(url, "cuda")
        assert computations < requests / 2
