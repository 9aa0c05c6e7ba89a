"""System shared memory, driven by tritonclient's own client and ``utils.shared_memory``.

Register / status / unregister exactly as tritonclient calls them; inputs read from and the
gradient written into registered regions, compared with plain torch; and every way to get it
wrong is a 4xx naming what was wrong.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lossreg_service.settings import Settings
from tests.support.server import serve

triton = pytest.importorskip("tritonclient.http")
shm = pytest.importorskip("tritonclient.utils.shared_memory")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serve(Settings(device="cpu", log_level="warning", allow_client_shm=True)) as base:
        yield base


@pytest.fixture()
def client(url: str) -> Iterator[Any]:
    c = triton.InferenceServerClient(url.removeprefix("http://"))
    yield c
    c.unregister_system_shared_memory()
    c.close()


@pytest.fixture()
def regions() -> Iterator[Any]:
    """Creates shared-memory objects with unique keys; destroys them afterwards."""
    made: list[Any] = []

    def make(size: int, data: np.ndarray | None = None) -> tuple[str, str, Any]:
        tag = uuid.uuid4().hex[:10]
        name, key = f"r{tag}", f"/lossreg-test-{tag}"
        handle = shm.create_shared_memory_region(name, key, size)
        if data is not None:
            shm.set_shared_memory_region(handle, [data])
        made.append(handle)
        return name, key, handle

    yield make
    for handle in made:
        shm.destroy_shared_memory_region(handle)


def _reference(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    loss = F.cross_entropy(xt, torch.from_numpy(y))
    (grad,) = torch.autograd.grad(loss, [xt])
    return loss.item(), grad.numpy()


def test_metadata_lists_the_extension(client: Any) -> None:
    assert "system_shared_memory" in client.get_server_metadata()["extensions"]


def test_register_status_unregister(client: Any, regions: Any) -> None:
    a, key_a, _ = regions(1024)
    b, key_b, _ = regions(4096)
    client.register_system_shared_memory(a, key_a, 1024)
    client.register_system_shared_memory(b, key_b, 1000, offset=96)
    status = {r["name"]: r for r in client.get_system_shared_memory_status()}
    assert status[a] == {"name": a, "key": key_a, "offset": 0, "byte_size": 1024}
    assert status[b] == {"name": b, "key": key_b, "offset": 96, "byte_size": 1000}
    assert client.get_system_shared_memory_status(a) == [status[a]]
    client.unregister_system_shared_memory(a)
    assert [r["name"] for r in client.get_system_shared_memory_status()] == [b]
    client.unregister_system_shared_memory(a)  # unknown now: still fine, as in Triton
    client.unregister_system_shared_memory()
    assert client.get_system_shared_memory_status() == []


def test_tensors_in_and_gradient_out_by_reference(client: Any, regions: Any) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 10), dtype=np.float32)
    y = rng.integers(0, 10, 64)
    xn, xk, xh = regions(x.nbytes + 128)
    shm.set_shared_memory_region(xh, [x], offset=128)
    yn, yk, _ = regions(y.nbytes, y)
    gn, gk, gh = regions(x.nbytes + 64)
    client.register_system_shared_memory(xn, xk, x.nbytes + 128)
    client.register_system_shared_memory(yn, yk, y.nbytes)
    client.register_system_shared_memory(gn, gk, x.nbytes + 64)
    inputs = [
        triton.InferInput("input", list(x.shape), "FP32").set_shared_memory(xn, x.nbytes, 128),
        triton.InferInput("target", list(y.shape), "INT64").set_shared_memory(yn, y.nbytes),
    ]
    grad = triton.InferRequestedOutput("grad_input")
    grad.set_shared_memory(gn, x.nbytes, offset=64)
    result = client.infer("cross_entropy", inputs, outputs=[
        triton.InferRequestedOutput("loss", binary_data=True), grad])  # fmt: skip
    loss, expected = _reference(x, y)
    entry = result.get_output("grad_input")
    assert entry["parameters"] == {
        "shared_memory_region": gn, "shared_memory_byte_size": x.nbytes,
        "shared_memory_offset": 64,
    }  # fmt: skip
    assert "data" not in entry
    np.testing.assert_array_equal(shm.get_contents_as_numpy(gh, np.float32, x.shape, 64), expected)
    assert result.as_numpy("loss") == np.float32(loss)


def _infer_error(client: Any, inputs: list[Any], outputs: list[Any] | None = None) -> str:
    with pytest.raises(InferenceServerException) as info:
        client.infer("cross_entropy", inputs, outputs=outputs)
    assert info.value.status() == "400"
    return str(info.value.message())


def test_bad_references_are_400s_naming_the_tensor(client: Any, regions: Any) -> None:
    x = np.zeros((4, 3), np.float32)
    y = np.zeros(4, np.int64)
    xn, xk, _ = regions(x.nbytes, x)
    client.register_system_shared_memory(xn, xk, x.nbytes)
    target = triton.InferInput("target", [4], "INT64")
    target.set_data_from_numpy(y, binary_data=True)

    unknown = triton.InferInput("input", [4, 3], "FP32").set_shared_memory("nope", x.nbytes)
    assert "'nope'" in _infer_error(client, [unknown, target])
    past_end = triton.InferInput("input", [4, 3], "FP32").set_shared_memory(xn, x.nbytes, 8)
    assert "run past" in _infer_error(client, [past_end, target])
    wrong_size = triton.InferInput("input", [4, 3], "FP32").set_shared_memory(xn, 8)
    assert "input" in _infer_error(client, [wrong_size, target])
    small_out = triton.InferRequestedOutput("grad_input")
    small_out.set_shared_memory(xn, 8)
    good = triton.InferInput("input", [4, 3], "FP32").set_shared_memory(xn, x.nbytes)
    assert "grad_input" in _infer_error(client, [good, target], [small_out])


def test_registration_errors(client: Any, regions: Any, url: str) -> None:
    name, key, _ = regions(64)
    for bad_key in ("../../etc/passwd", "a/b", "", "/" + "x" * 300):
        with pytest.raises(InferenceServerException, match="key"):
            client.register_system_shared_memory("bad", bad_key, 8)
    with pytest.raises(InferenceServerException, match="cannot open"):
        client.register_system_shared_memory("bad", "/lossreg-test-missing-object", 8)
    with pytest.raises(InferenceServerException, match="do not fit"):
        client.register_system_shared_memory(name, key, 65)
    client.register_system_shared_memory(name, key, 64)
    with pytest.raises(InferenceServerException, match="already registered"):
        client.register_system_shared_memory(name, key, 64)
    with pytest.raises(InferenceServerException, match="no shared memory region"):
        client.get_system_shared_memory_status("missing")
    answer = httpx.post(f"{url}/v2/systemsharedmemory/region/x/register", content=b"{")
    assert answer.status_code == 400 and answer.json()["field"] == "body"
    answer = httpx.post(f"{url}/v2/systemsharedmemory/region/x/register",
                        json={"key": key, "byte_size": -1})  # fmt: skip
    assert answer.status_code == 400 and answer.json()["field"] == "byte_size"


def test_disabled_by_default(regions: Any) -> None:
    name, key, _ = regions(64)
    with serve(Settings(device="cpu", log_level="warning")) as base:
        c = triton.InferenceServerClient(base.removeprefix("http://"))
        assert "system_shared_memory" not in c.get_server_metadata()["extensions"]
        with pytest.raises(InferenceServerException, match="disabled"):
            c.register_system_shared_memory(name, key, 64)
        assert c.get_system_shared_memory_status() == []
        inputs = [triton.InferInput("input", [4, 4], "FP32").set_shared_memory(name, 64)]
        assert "disabled" in _infer_error(c, inputs)
