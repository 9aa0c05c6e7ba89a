"""System shared memory over gRPC, driven by tritonclient.grpc and its ``utils.shared_memory``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lossreg_service.settings import Settings
from tests.support.server import free_port, serve

grpcclient = pytest.importorskip("tritonclient.grpc")
shm = pytest.importorskip("tritonclient.utils.shared_memory")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    port = free_port()
    settings = Settings(device="cpu", log_level="warning", allow_client_shm=True, grpc_port=port)
    with serve(settings):
        c = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        yield c
        c.unregister_system_shared_memory()
        c.close()


@pytest.fixture()
def region() -> Iterator[Any]:
    made: list[Any] = []

    def make(size: int) -> tuple[str, str, Any]:
        tag = uuid.uuid4().hex[:10]
        name, key = f"g{tag}", f"/lossreg-grpc-test-{tag}"
        handle = shm.create_shared_memory_region(name, key, size)
        made.append(handle)
        return name, key, handle

    yield make
    for handle in made:
        shm.destroy_shared_memory_region(handle)


def test_register_status_unregister(client: Any, region: Any) -> None:
    name, key, _ = region(512)
    client.register_system_shared_memory(name, key, 500, offset=12)
    status = client.get_system_shared_memory_status(name).regions[name]
    assert (status.key, status.offset, status.byte_size) == (key, 12, 500)
    client.unregister_system_shared_memory(name)
    assert name not in client.get_system_shared_memory_status().regions


def test_one_input_in_shared_memory_one_raw_and_the_gradient_written_back(
    client: Any, region: Any
) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 5), dtype=np.float32)
    y = rng.integers(0, 5, 16)
    xn, xk, xh = region(x.nbytes)
    shm.set_shared_memory_region(xh, [x])
    gn, gk, gh = region(x.nbytes)
    client.register_system_shared_memory(xn, xk, x.nbytes)
    client.register_system_shared_memory(gn, gk, x.nbytes)
    inputs = [grpcclient.InferInput("input", [16, 5], "FP32"),
              grpcclient.InferInput("target", [16], "INT64")]  # fmt: skip
    inputs[0].set_shared_memory(xn, x.nbytes)
    inputs[1].set_data_from_numpy(y)
    grad = grpcclient.InferRequestedOutput("grad_input")
    grad.set_shared_memory(gn, x.nbytes)
    result = client.infer("cross_entropy", inputs,
                          outputs=[grpcclient.InferRequestedOutput("loss"), grad])  # fmt: skip
    leaf = torch.from_numpy(x.copy()).requires_grad_(True)
    expected = F.cross_entropy(leaf, torch.from_numpy(y))
    (expected_grad,) = torch.autograd.grad(expected, leaf)
    assert float(result.as_numpy("loss")) == pytest.approx(expected.item(), rel=1e-6)
    written = shm.get_contents_as_numpy(gh, np.float32, [16, 5])
    np.testing.assert_allclose(written, expected_grad.numpy(), rtol=1e-6)


def test_shared_memory_is_refused_when_the_setting_is_off(
    grpc_server: tuple[str, str], region: Any
) -> None:
    name, key, _ = region(64)
    c = grpcclient.InferenceServerClient(grpc_server[1])
    with pytest.raises(InferenceServerException) as caught:
        c.register_system_shared_memory(name, key, 64)
    assert caught.value.status() == str(grpc.StatusCode.PERMISSION_DENIED)
    assert "LOSSREG_ALLOW_CLIENT_SHM" in caught.value.message()
    c.close()
