"""lossreg on a real local Ray Serve: two replicas behind Ray's HTTP proxy and a DeploymentHandle,
both checked against torch; the builder's replica, GPU and concurrency options."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from lossreg.errors import LossNotFound
from tests.support.server import free_port

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
from lossreg_service.serving.ray import app, build_app  # noqa: E402

pytestmark = pytest.mark.timeout(600)

APP = "lossreg"


def _reference(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    x = torch.from_numpy(logits).requires_grad_()
    loss = torch.nn.functional.cross_entropy(x, torch.from_numpy(labels))
    loss.backward()
    assert x.grad is not None
    return loss.item(), x.grad.numpy()


@pytest.fixture(scope="module")
def ray_serve() -> Iterator[tuple[str, object]]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        handle = serve.run(
            build_app(num_replicas=2, num_cpus=0.5, log_level="warning"),
            name=APP,
            route_prefix="/",
        )
        yield f"http://127.0.0.1:{port}", handle
    finally:
        serve.shutdown()
        ray.shutdown()
    assert not ray.is_initialized()


def test_the_builder_sets_replicas_gpus_and_ongoing_requests_above_the_batch_size() -> None:
    built = app({"num_replicas": "3", "num_gpus": "1", "batch_max_size": "100"})
    deployment = built._bound_deployment  # what `serve run` deploys
    assert deployment.num_replicas == 3
    assert deployment.ray_actor_options["num_gpus"] == 1
    assert deployment.max_ongoing_requests >= 100
    default = app({})._bound_deployment
    assert default.max_ongoing_requests >= 64  # LOSSREG_BATCH_MAX_SIZE's default, not Ray's 5
    with pytest.raises(ValueError, match="max_queue"):
        app({"max_queue": "0"})


def test_two_replicas_answer_through_rays_http_proxy(ray_serve: tuple[str, object]) -> None:
    url, _ = ray_serve
    status = serve.status().applications[APP]
    (deployment,) = status.deployments.values()
    assert deployment.replica_states == {"RUNNING": 2}
    rng = np.random.default_rng(0)

    def one(i: int) -> None:
        logits = rng.standard_normal((4, 6)).astype(np.float32) + i
        labels = np.array([0, 5, 2, i % 6], dtype=np.int64)
        body = {
            "inputs": [
                {
                    "name": "input",
                    "shape": [4, 6],
                    "datatype": "FP32",
                    "data": logits.ravel().tolist(),
                },
                {"name": "target", "shape": [4], "datatype": "INT64", "data": labels.tolist()},
            ]
        }
        r = httpx.post(f"{url}/v2/models/cross_entropy/infer", json=body, timeout=60)
        assert r.status_code == 200, r.text
        outputs = {o["name"]: np.array(o["data"], np.float32) for o in r.json()["outputs"]}
        value, grad = _reference(logits, labels)
        assert outputs["loss"].item() == pytest.approx(value, rel=1e-5)
        np.testing.assert_allclose(outputs["grad_input"].reshape(4, 6), grad, rtol=1e-4, atol=1e-7)

    made = 24
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(one, range(made)))

    # Each replica is a whole lossreg server with its own /metrics. Scrapes sent 8 at a time
    # through the proxy reach both (Ray's router sends a request to the less busy of two
    # replicas; one at a time, an idle pair may keep answering from the same one), and the
    # two counts add up to the requests made (an even split shows one count: half of them).
    def scrape(_: int) -> set[float]:
        text = httpx.get(f"{url}/metrics", timeout=30).text
        return {
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "lossreg_requests_total" and s.labels["loss"] == "cross_entropy"
        }

    seen: set[float] = set()
    with ThreadPoolExecutor(8) as pool:
        for _ in range(10):
            for values in pool.map(scrape, range(16)):
                seen |= values
            if len(seen) == 2 or seen == {made / 2}:
                break
    assert sum(seen) == made if len(seen) == 2 else seen == {made / 2}, seen


def test_a_deployment_handle_returns_value_and_gradients_as_tensors(
    ray_serve: tuple[str, object],
) -> None:
    _, handle = ray_serve
    logits = np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32)
    labels = np.array([4, 0, 2], dtype=np.int64)
    out = handle.evaluate.remote(  # type: ignore[attr-defined]
        "cross_entropy", {"input": torch.from_numpy(logits), "target": torch.from_numpy(labels)}
    ).result()
    value, grad = _reference(logits, labels)
    assert isinstance(out["loss"], torch.Tensor) and isinstance(out["grad_input"], torch.Tensor)
    assert out["loss"].item() == pytest.approx(value, rel=1e-6)
    torch.testing.assert_close(out["grad_input"], torch.from_numpy(grad))
    assert set(out) == {"loss", "grad_input"}  # integer targets have no gradient
    only_value = handle.evaluate.remote(  # type: ignore[attr-defined]
        "mse_loss", {"input": torch.ones(3), "target": torch.zeros(3)}, {"reduction": "sum"}, []
    ).result()
    assert set(only_value) == {"loss"} and only_value["loss"].item() == 3.0
    with pytest.raises(LossNotFound):
        handle.evaluate.remote("no_such_loss", {}).result()  # type: ignore[attr-defined]
