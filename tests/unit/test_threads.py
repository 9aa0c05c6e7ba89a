"""A computation's intra-op threads follow its size (`engine.threads`)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from lossreg_service.engine.threads import SMALL_BYTES, set_most_threads, threads_for
from lossreg_service.registry import Loss, LossRegistry
from lossreg_service.server.dataplane import Computation, compute, compute_batch, single


@pytest.fixture
def most_two() -> Iterator[None]:
    before = torch.get_num_threads()
    set_most_threads(2)
    yield
    set_most_threads(before)


@pytest.mark.usefixtures("most_two")
def test_small_blocks_run_on_one_thread_big_ones_on_the_most_and_the_count_comes_back() -> None:
    with threads_for(1024):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with threads_for(SMALL_BYTES + 1):
        assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), threads_for(8):
        raise RuntimeError("a loss failed")
    assert torch.get_num_threads() == 2  # restored when the block raises too


def _thread_recorder() -> tuple[Loss, list[int]]:
    seen: list[int] = []

    def threads_seen(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return torch.nn.functional.mse_loss(input, target)

    registry = LossRegistry()
    return registry.register(threads_seen, "threads_seen"), seen


def _computation(loss: Loss, elements: int) -> Computation:
    x = np.ones(elements, dtype=np.float32)
    return Computation(single(loss, {}), {"input": (x, "FP32"), "target": (x.copy(), "FP32")})


@pytest.mark.usefixtures("most_two")
@pytest.mark.parametrize(("elements", "threads"), [(320, 1), (1 << 20, 2)])
def test_the_dataplane_gives_a_computation_threads_by_its_tensors_bytes(
    elements: int, threads: int
) -> None:
    loss, seen = _thread_recorder()
    result = compute(_computation(loss, elements), torch.device("cpu"))
    assert float(result.loss[0]) == 0.0
    assert seen == [threads]
    seen.clear()
    compute_batch(loss, [_computation(loss, elements)] * 2, torch.device("cpu"))
    assert seen == [threads, threads]
    assert torch.get_num_threads() == 2
