"""Dynamic batching: the engine's batched evaluation and the server's batcher, against unbatched.

Batched results are compared with `evaluate` on each request alone (itself tested against
plain torch): bit for bit one by one, and bit for bit gradients with vmap (a vmapped mean may
round its last bits differently, so the loss value is compared to a few ulp).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest
import torch

from lossreg.errors import ComputeTimeout, InvalidInput, LossRejectedInput, ServerBusy
from lossreg_service.engine import evaluate
from lossreg_service.engine.batching import evaluate_batch
from lossreg_service.registry import LossRegistry
from lossreg_service.server.batcher import DynamicBatcher
from lossreg_service.server.executor import ComputeExecutor
from lossreg_service.server.metrics import Metrics


@pytest.fixture(scope="module")
def registry() -> LossRegistry:
    return LossRegistry.from_entry_points()


def _ce_items(n: int, seed: int = 0) -> list[tuple[dict[str, torch.Tensor], None]]:
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        x, y = torch.randn(8, 5, generator=g), torch.randint(0, 5, (8,), generator=g)
        items.append(({"input": x, "target": y}, None))
    return items


def _assert_same(batched: Any, alone: Any) -> None:
    assert torch.equal(batched.loss, alone.loss)
    assert batched.grads.keys() == alone.grads.keys()
    for name in alone.grads:
        assert torch.equal(batched.grads[name], alone.grads[name]), name
    assert batched.nonfinite == alone.nonfinite


def test_one_by_one_is_bit_identical_to_unbatched(registry: LossRegistry) -> None:
    loss = registry.get("cross_entropy")
    items = _ce_items(6)
    results = evaluate_batch(loss, items, {"label_smoothing": 0.1}, grad=["input"])
    assert len(results) == len(items)
    for (inputs, _), result in zip(items, results):
        _assert_same(result, evaluate(loss, inputs, {"label_smoothing": 0.1}, grad=["input"]))


def test_each_request_gets_its_own_error(registry: LossRegistry) -> None:
    loss = registry.get("cross_entropy")
    items = _ce_items(4)
    items[2][0]["target"][0] = 99  # out of range: only this request is wrong
    for vmap in (False, True):
        results = evaluate_batch(loss, items, grad=["input"], vmap=vmap)
        for i, ((inputs, _), result) in enumerate(zip(items, results)):
            if i == 2:
                with pytest.raises(type(result)):
                    evaluate(loss, inputs, grad=["input"])
                assert isinstance(result, (InvalidInput, LossRejectedInput))
            else:
                _assert_same(result, evaluate(loss, inputs, grad=["input"]))


def test_vmap_gives_the_same_gradients(registry: LossRegistry) -> None:
    loss = registry.get("cross_entropy")
    items = _ce_items(8, seed=1)
    results = evaluate_batch(loss, items, grad=["input"], vmap=True)
    for (inputs, _), result in zip(items, results):
        alone = evaluate(loss, inputs, grad=["input"])
        assert torch.equal(result.grads["input"], alone.grads["input"])
        torch.testing.assert_close(result.loss, alone.loss, rtol=8 * 2**-23, atol=0)  # ulp


def test_vmap_with_upstream_gradients_and_no_reduction(registry: LossRegistry) -> None:
    loss = registry.get("mse_loss")
    g = torch.Generator().manual_seed(2)
    items = [
        ({"input": torch.randn(4, 3, generator=g), "target": torch.randn(4, 3, generator=g)},
         torch.randn(4, 3, generator=g))
        for _ in range(5)
    ]  # fmt: skip
    params = {"reduction": "none"}
    results = evaluate_batch(loss, items, params, vmap=True)
    for (inputs, upstream), result in zip(items, results):
        _assert_same(result, evaluate(loss, inputs, params, grad_loss=upstream))


def test_a_loss_vmap_cannot_run_falls_back_one_by_one() -> None:
    loss = LossRegistry.from_entry_points().get("gaussian_nll_loss")  # a fresh registry entry
    g = torch.Generator().manual_seed(3)  # torch's own loss asks torch.any(var < 0): no vmap
    items = [
        ({"input": torch.randn(4, 3, generator=g), "target": torch.randn(4, 3, generator=g),
          "var": torch.rand(4, 3, generator=g) + 0.5}, None)
        for _ in range(3)
    ]  # fmt: skip
    assert loss.vmappable is None
    for _ in range(2):  # the second batch skips the vmap attempt
        results = evaluate_batch(loss, items, grad=["input"], vmap=True)
        for (inputs, _), result in zip(items, results):
            _assert_same(result, evaluate(loss, inputs, grad=["input"]))
            assert not result.vmapped
        assert loss.vmappable is False  # remembered on the loss's registry entry


# -- the server's batcher ---------------------------------------------------------------------


def _executor(threads: int = 1, max_queue: int = 64, timeout_s: float = 10.0) -> ComputeExecutor:
    return ComputeExecutor([torch.device("cpu")], threads=threads, max_queue=max_queue,
                           timeout_s=timeout_s, retry_after_s=1.0, metrics=Metrics())  # fmt: skip


def test_concurrent_requests_with_one_key_share_batches() -> None:
    calls: list[list[int]] = []

    def run(items: Sequence[Any], device: torch.device) -> list[Any]:
        calls.append(list(items))
        return [x * 10 for x in items]

    async def main() -> list[Any]:
        batcher = DynamicBatcher(_executor(), max_size=4, max_delay_s=0.0)
        return await asyncio.gather(*(batcher.submit("k", i, run) for i in range(10)))

    results = asyncio.run(main())
    assert results == [i * 10 for i in range(10)]  # every request gets its own answer
    assert sorted(x for call in calls for x in call) == list(range(10))
    assert max(len(call) for call in calls) <= 4  # max_size holds
    assert len(calls) < 10  # and requests really were batched


def test_keys_are_never_mixed_and_errors_stay_per_request() -> None:
    def run(items: Sequence[Any], device: torch.device) -> list[Any]:
        assert len({key for key, _ in items}) == 1
        return [ValueError(v) if v < 0 else v for _, v in items]

    async def main() -> list[Any]:
        batcher = DynamicBatcher(_executor(), max_size=8, max_delay_s=0.0)
        jobs = [batcher.submit(k, (k, v), run) for k in "ab" for v in (1, -1, 2)]
        return await asyncio.gather(*jobs, return_exceptions=True)

    results = asyncio.run(main())
    assert [r if not isinstance(r, Exception) else "error" for r in results] == [
        1, "error", 2, 1, "error", 2
    ]  # fmt: skip


def test_the_queue_delay_lets_a_batch_fill() -> None:
    sizes: list[int] = []

    def run(items: Sequence[Any], device: torch.device) -> list[Any]:
        sizes.append(len(items))
        return list(items)

    async def main(delay: float) -> None:
        batcher = DynamicBatcher(_executor(), max_size=64, max_delay_s=delay)
        first = asyncio.ensure_future(batcher.submit("k", 0, run))
        await asyncio.sleep(0.02)  # later requests, well within the delay
        await asyncio.gather(first, *(batcher.submit("k", i, run) for i in range(1, 5)))

    asyncio.run(main(0.5))
    assert sizes == [5]
    sizes.clear()
    asyncio.run(main(0.0))  # no delay: the first request does not wait for the others
    assert sizes[0] == 1


def test_a_full_queue_is_refused_and_a_slow_batch_times_out() -> None:
    def slow(items: Sequence[Any], device: torch.device) -> list[Any]:
        time.sleep(0.3)
        return list(items)

    async def main() -> list[Any]:
        batcher = DynamicBatcher(_executor(max_queue=2, timeout_s=0.2), max_size=1, max_delay_s=0)
        first = asyncio.ensure_future(batcher.submit("k", 0, slow))
        await asyncio.sleep(0.05)  # the only worker is busy now
        rest = [batcher.submit("k", i, slow) for i in range(1, 5)]
        results = await asyncio.gather(first, *rest, return_exceptions=True)
        await asyncio.sleep(0.4)  # let the abandoned computations end before the loop does
        return results

    results = asyncio.run(main())
    assert isinstance(results[0], ComputeTimeout)  # ran past the 0.2 s limit
    assert sum(isinstance(r, ServerBusy) for r in results) == 2  # past the queue of 2
    assert all(isinstance(r, (ServerBusy, ComputeTimeout)) for r in results)


@pytest.mark.parametrize("vmap", [False, True])
def test_a_non_scalar_batch_without_grad_loss_is_refused_per_request(
    registry: LossRegistry, vmap: bool
) -> None:
    """Batched or not, vmapped or not: the same refusal as one request alone, and with an
    upstream gradient the same vector-Jacobian product."""
    loss = registry.get("mse_loss")
    g = torch.Generator().manual_seed(0)
    inputs = [{"input": torch.randn(3, generator=g), "target": torch.randn(3, generator=g)}
              for _ in range(3)]  # fmt: skip
    params = {"reduction": "none"}
    refused = evaluate_batch(loss, [(i, None) for i in inputs], params, vmap=vmap)
    assert all(isinstance(r, InvalidInput) and r.field == "grad_loss" for r in refused)
    up = torch.tensor([1.0, 2.0, 0.5])
    results = evaluate_batch(loss, [(i, up) for i in inputs], params, vmap=vmap)
    for item, result in zip(inputs, results, strict=True):
        assert not isinstance(result, Exception)
        alone = evaluate(loss, item, params, grad_loss=up)
        torch.testing.assert_close(result.grads["input"], alone.grads["input"])
