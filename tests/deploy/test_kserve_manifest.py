"""Start ``lossreg serve`` exactly as deploy/kserve would run it (the runtime container's args,
env and port, with the InferenceService's overrides), wait on its readiness probe, send a
tritonclient request to the path KServe routes and one over gRPC to the h2c port, and find the
KEDA query's metric in /metrics."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cli_server import lossreg_serve, wait_workers_ready
from tests.support.kserve_manifests import (
    ENTRYPOINT,
    env_of,
    keda_metrics,
    metric_names,
    of_kind,
    pod_container,
    runtime_named,
)


def _until_ready(client: Any, timeout: float = 60) -> None:
    """Until ``client``'s server answers ready. The workers share the ports, and a worker that
    was not accepting yet while the readiness probes ran may take this client's connection
    while its registry still loads (it answers not-ready, then ready)."""
    deadline = time.monotonic() + timeout
    while not client.is_server_ready():
        assert time.monotonic() < deadline, "the server never answered ready"
        time.sleep(0.2)


pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("isvc", of_kind("InferenceService"), ids=lambda i: i["metadata"]["name"])
def test_the_manifest_container_serves_kserve_routes_and_the_keda_metric(
    isvc: dict[str, Any], tmp_path: Path
) -> None:
    container = pod_container(isvc)
    env = env_of(container)
    if env["LOSSREG_DEVICE"].startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("the GPU runtime needs CUDA")
    port, grpc_port = (p["containerPort"] for p in container["ports"])  # http1, then h2c
    for taken in (port, grpc_port):
        if not _port_free(taken):
            pytest.skip(f"port {taken}, the manifest's, is taken on this machine")
    args = container.get("command", ENTRYPOINT)[len(ENTRYPOINT) :] + container["args"]
    probe = container["readinessProbe"]["httpGet"]
    runtime = runtime_named(isvc["spec"]["predictor"]["model"]["runtime"])

    # Exactly the manifest's environment: no defaults of the test harness on top.
    with lossreg_serve(args, env, tmp_path, port=port, ready_path=probe["path"]) as server:
        assert probe["port"] == port
        wait_workers_ready(server, int(env.get("LOSSREG_WORKERS", "1")))

        http = pytest.importorskip("tritonclient.http")
        client = http.InferenceServerClient(f"127.0.0.1:{port}")
        _until_ready(client)
        logits = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
        labels = np.array([0, 4, 2, 1], dtype=np.int64)
        x = http.InferInput("input", list(logits.shape), "FP32")
        x.set_data_from_numpy(logits, binary_data=True)
        y = http.InferInput("target", list(labels.shape), "INT64")
        y.set_data_from_numpy(labels, binary_data=True)
        outputs = [http.InferRequestedOutput(n, binary_data=True) for n in ("loss", "grad_input")]
        # KServe routes /v2/models/<model>/infer unchanged; each loss is a model.
        result = client.infer("cross_entropy", [x, y], outputs=outputs)
        client.close()

        reference = torch.from_numpy(logits).requires_grad_()
        loss = torch.nn.functional.cross_entropy(reference, torch.from_numpy(labels))
        loss.backward()
        assert result.as_numpy("loss").item() == pytest.approx(loss.item(), rel=1e-6)
        np.testing.assert_allclose(result.as_numpy("grad_input"), reference.grad, rtol=1e-5)

        # grpc-v2: the container port named h2c answers the Open Inference Protocol over gRPC.
        grpc = pytest.importorskip("tritonclient.grpc")
        grpc_client = grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        _until_ready(grpc_client)
        gx = grpc.InferInput("input", list(logits.shape), "FP32")
        gx.set_data_from_numpy(logits)
        gy = grpc.InferInput("target", list(labels.shape), "INT64")
        gy.set_data_from_numpy(labels)
        over_grpc = grpc_client.infer("cross_entropy", [gx, gy])
        grpc_client.close()
        assert over_grpc.as_numpy("loss").item() == pytest.approx(loss.item(), rel=1e-6)
        np.testing.assert_allclose(over_grpc.as_numpy("grad_input"), reference.grad, rtol=1e-5)

        # The metric KEDA's query names is on the path/port KServe tells Prometheus to scrape.
        annotations = runtime["spec"]["annotations"]
        scraped = int(annotations["prometheus.kserve.io/port"])
        path = annotations["prometheus.kserve.io/path"]
        text = httpx.get(f"http://127.0.0.1:{scraped}{path}", timeout=10).text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        (external,) = keda_metrics(isvc)
        for name in metric_names(external["metric"]["query"]):
            assert name in families, f"{name} is not exported"
            (sample,) = families[name].samples
            assert sample.labels == {"device": env["LOSSREG_DEVICE"]}
            assert sample.value == 0  # nothing waits once the request is answered
