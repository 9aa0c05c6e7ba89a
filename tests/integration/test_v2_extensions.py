"""Triton's statistics, model-configuration and model-repository extensions over REST, read by
the stock ``tritonclient.http`` against a live server of their own (so counts start at zero)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from lossreg_service.settings import Settings
from tests.support.plugins import make_distribution
from tests.support.server import serve

tritonclient_http = pytest.importorskip("tritonclient.http")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException

BROKEN = "import lossreg_dependency_that_is_not_installed  # noqa: F401\n"


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("plugin")
    make_distribution(
        root,
        "lossreg-ext-broken",
        {"ext_broken_loss": "lossreg_ext_broken:loss"},
        modules={"lossreg_ext_broken": BROKEN},
    )
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(root))
    try:
        settings = Settings(device="cpu", log_level="warning", batch_max_delay_us=200_000)
        with serve(settings) as base:
            yield base
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[Any]:
    c = tritonclient_http.InferenceServerClient(url.removeprefix("http://"), concurrency=8)
    yield c
    c.close()


def _mse(client: Any, values: np.ndarray, target: np.ndarray) -> Any:
    inputs = []
    for name, array in (("input", values), ("target", target)):
        item = tritonclient_http.InferInput(name, list(array.shape), "FP32")
        item.set_data_from_numpy(array, binary_data=True)
        inputs.append(item)
    return client.infer("mse_loss", inputs)


def _by_name(stats: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in stats["model_stats"] if s["name"] == name)


def test_server_metadata_advertises_the_extensions(client: Any) -> None:
    extensions = client.get_server_metadata()["extensions"]
    assert {"statistics", "model_configuration", "model_repository"} <= set(extensions)


def test_statistics_count_successes_failures_and_stages(client: Any) -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    for _ in range(5):
        assert _mse(client, a, a * 0).as_numpy("loss") == pytest.approx((a**2).mean())
    for _ in range(3):  # input and target shapes differ: a 422 from the loss's shape check
        with pytest.raises(InferenceServerException):
            _mse(client, a, np.zeros(7, np.float32))
    stats = _by_name(client.get_inference_statistics("mse_loss"), "mse_loss")
    inference = stats["inference_stats"]
    assert inference["success"]["count"] == 5 and inference["fail"]["count"] == 3
    assert inference["success"]["ns"] > 0 and inference["fail"]["ns"] > 0
    for stage in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert inference[stage]["count"] == 5, stage
    assert inference["compute_infer"]["ns"] > 0 and inference["compute_input"]["ns"] > 0
    assert stats["inference_count"] == 5
    assert stats["last_inference"] > 1_600_000_000_000  # milliseconds since the epoch
    batches = stats["batch_stats"]
    executed = sum(int(b["batch_size"]) * b["compute_infer"]["count"] for b in batches)
    assert executed >= 5  # failed requests that reached compute also ran
    assert stats["execution_count"] == sum(b["compute_infer"]["count"] for b in batches)

    versioned = client.get_inference_statistics("mse_loss", model_version=stats["version"])
    assert _by_name(versioned, "mse_loss")["inference_count"] == 5
    everything = client.get_inference_statistics()
    assert _by_name(everything, "mse_loss")["inference_count"] == 5
    assert _by_name(everything, "l1_loss")["inference_count"] == 0  # listed, never called


def test_dynamic_batching_makes_fewer_executions_than_inferences(client: Any) -> None:
    before = _by_name(client.get_inference_statistics("huber_loss"), "huber_loss")
    a = np.ones((2, 2), np.float32)

    def inputs(i: int) -> list[Any]:
        out = []
        for name, array in (("input", a * i), ("target", a)):
            item = tritonclient_http.InferInput(name, [2, 2], "FP32")
            item.set_data_from_numpy(array, binary_data=True)
            out.append(item)
        return out

    # tritonclient.http's own concurrency (gevent): 8 requests in flight at once
    pending = [client.async_infer("huber_loss", inputs(i)) for i in range(8)]
    for request in pending:
        request.get_result()
    after = _by_name(client.get_inference_statistics("huber_loss"), "huber_loss")
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == 8
    assert executions < inferences  # the 200 ms batching window merged concurrent requests
    assert any(int(b["batch_size"]) > 1 for b in after["batch_stats"])


def test_statistics_of_an_unknown_model_is_an_error(client: Any, url: str) -> None:
    with pytest.raises(InferenceServerException):
        client.get_inference_statistics("no_such_loss")
    r = httpx.get(f"{url}/v2/models/no_such_loss/stats")
    assert r.status_code == 404 and r.json()["code"] == "loss_not_found"


def test_model_config_is_a_minimal_triton_config(client: Any) -> None:
    config = client.get_model_config("cross_entropy")
    metadata = client.get_model_metadata("cross_entropy")
    assert config["name"] == "cross_entropy" and config["backend"] == "lossreg"
    assert config["max_batch_size"] == 0
    assert [t["name"] for t in config["input"]] == [t["name"] for t in metadata["inputs"]]
    assert [t["name"] for t in config["output"]] == [t["name"] for t in metadata["outputs"]]
    first = config["input"][0]
    assert first["data_type"] == "TYPE_" + metadata["inputs"][0]["datatype"]
    assert all(d == -1 for d in first["dims"])
    optional = {t["name"]: t["optional"] for t in config["input"]}
    assert optional["input"] is False and optional["weight"] is True
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": 200_000}


def test_repository_index_lists_ready_and_unavailable_losses(client: Any) -> None:
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index["mse_loss"]["state"] == "READY" and index["mse_loss"]["version"]
    broken = index["ext_broken_loss"]
    assert broken["state"] == "UNAVAILABLE"
    assert "lossreg_dependency_that_is_not_installed" in broken["reason"]


def test_repository_index_ready_only(url: str) -> None:
    listed = httpx.post(f"{url}/v2/repository/index", json={"ready": True}).json()
    names = {m["name"] for m in listed}
    assert "mse_loss" in names and "ext_broken_loss" not in names


@pytest.mark.parametrize("action", ["load", "unload"])
def test_load_and_unload_refuse_naming_the_settings(client: Any, url: str, action: str) -> None:
    with pytest.raises(InferenceServerException) as caught:
        getattr(client, f"{action}_model")("mse_loss")
    assert "LOSSREG_ALLOW" in str(caught.value) and "LOSSREG_DENY" in str(caught.value)
    r = httpx.post(f"{url}/v2/repository/models/mse_loss/{action}", json={"config": "{}"})
    assert r.status_code == 409 and r.json()["code"] == "model_control_disabled"
    assert client.is_model_ready("mse_loss")  # nothing changed


def test_extensions_need_the_api_key_when_keys_are_set() -> None:
    with serve(Settings(device="cpu", log_level="warning", api_keys=["k1"])) as base:
        assert httpx.get(f"{base}/v2/models/stats").status_code == 401
        assert httpx.get(f"{base}/v2/models/mse_loss/config").status_code == 401
        assert httpx.post(f"{base}/v2/repository/index").status_code == 401
        ok = httpx.get(f"{base}/v2/models/mse_loss/config", headers={"Authorization": "Bearer k1"})
        assert ok.status_code == 200 and ok.json()["name"] == "mse_loss"


def test_v1_evaluate_goes_through_the_same_dataplane_and_statistics(client: Any, url: str) -> None:
    def count() -> int:
        stats = _by_name(client.get_inference_statistics("smooth_l1_loss"), "smooth_l1_loss")
        return int(stats["inference_count"])

    before = count()
    body = {"inputs": {"input": [1.0, 2.0], "target": [0.0, 0.0]}, "grad": ["input"]}
    r = httpx.post(f"{url}/v1/losses/smooth_l1_loss/evaluate", json=body, timeout=30)
    assert r.status_code == 200 and r.json()["loss"] == pytest.approx(1.0)
    assert r.json()["grads"]["input"] == [0.5, 0.5]  # answered in the form it was sent
    bad = httpx.post(f"{url}/v1/losses/smooth_l1_loss/evaluate", json={"inputs": {}}, timeout=30)
    assert bad.status_code == 422
    stats = _by_name(client.get_inference_statistics("smooth_l1_loss"), "smooth_l1_loss")
    assert count() == before + 1 and stats["inference_stats"]["fail"]["count"] >= 1
