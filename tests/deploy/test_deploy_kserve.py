"""The KServe manifests in deploy/kserve: valid against KServe's own CRD schemas (strictly:
an unknown field fails), and wired the way KServe and KEDA read them."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import pytest

from lossreg_service.settings import Settings
from tests.support.kserve_manifests import (
    CRDS,
    crd_schema,
    documents,
    env_of,
    keda_metrics,
    metric_names,
    of_kind,
    pod_container,
    runtime_named,
)

pytestmark = pytest.mark.skipif(
    not CRDS.is_dir(), reason=f"KServe CRDs not found at {CRDS} (the project's shared folder)"
)

ISVCS = of_kind("InferenceService")
RUNTIMES = of_kind("ClusterServingRuntime")


def _validate(doc: dict[str, Any]) -> None:
    jsonschema.Draft7Validator(crd_schema(doc["kind"], doc["apiVersion"])).validate(doc)


def test_the_crds_say_where_they_come_from() -> None:
    source = (CRDS / "SOURCE").read_text()
    assert "kserve/kserve" in source and "commit" in source


def test_a_gpu_and_a_cpu_runtime_and_an_inferenceservice_for_each() -> None:
    assert sorted(r["metadata"]["name"] for r in RUNTIMES) == ["lossreg-cpu", "lossreg-gpu"]
    used = sorted(i["spec"]["predictor"]["model"]["runtime"] for i in ISVCS)
    assert used == ["lossreg-cpu", "lossreg-gpu"]


@pytest.mark.parametrize(
    "doc", [d for _, d in documents()], ids=[f"{p.name}:{d['kind']}" for p, d in documents()]
)
def test_manifest_matches_the_kserve_crd_schema(doc: dict[str, Any]) -> None:
    _validate(doc)


def test_strict_validation_rejects_a_misspelled_field() -> None:
    runtime = copy.deepcopy(RUNTIMES[0])
    runtime["spec"]["containers"][0]["readinesProbe"] = runtime["spec"]["containers"][0].pop(
        "readinessProbe"
    )
    with pytest.raises(jsonschema.ValidationError, match="readinesProbe"):
        _validate(runtime)
    isvc = copy.deepcopy(ISVCS[0])
    isvc["spec"]["predictor"]["autoScaling"]["metrics"][0]["external"]["target"]["type"] = "Avg"
    with pytest.raises(jsonschema.ValidationError):
        _validate(isvc)


@pytest.mark.parametrize("runtime", RUNTIMES, ids=lambda r: r["metadata"]["name"])
def test_runtime_listens_where_kserve_expects(runtime: dict[str, Any]) -> None:
    spec = runtime["spec"]
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
    env = env_of(container)
    http, *others = container["ports"]  # KServe's Service sends port 80 to the first one
    assert http["containerPort"] == 8080 and env["LOSSREG_PORT"] == "8080"
    # grpc-v2: the port KServe marks h2c is where the server's gRPC listens
    (grpc,) = [p for p in others if "h2c" in p["name"] or "grpc" in p["name"]]
    assert grpc["containerPort"] == int(env["LOSSREG_GRPC_PORT"]) != http["containerPort"]
    assert env["LOSSREG_HOST"] == "0.0.0.0"
    settings = Settings(**{k.removeprefix("LOSSREG_").lower(): v for k, v in env.items()})
    assert settings.port == 8080  # every env entry is a setting the service accepts
    probe = container["readinessProbe"]["httpGet"]
    assert probe == {"path": "/v2/health/ready", "port": 8080}
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert spec["annotations"]["prometheus.kserve.io/port"] == "8080"
    assert spec["annotations"]["prometheus.kserve.io/path"] == "/metrics"
    gpu = container["resources"]["limits"].get("nvidia.com/gpu")
    assert (gpu == "1") == env["LOSSREG_DEVICE"].startswith("cuda")


@pytest.mark.parametrize("isvc", ISVCS, ids=lambda i: i["metadata"]["name"])
def test_inferenceservice_scales_with_keda_on_the_queue(isvc: dict[str, Any]) -> None:
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/autoscalerClass"] == "keda"
    assert annotations["serving.kserve.io/deploymentMode"] == "Standard"  # KEDA needs it
    model = isvc["spec"]["predictor"]["model"]
    runtime = runtime_named(model["runtime"])
    formats = [f["name"] for f in runtime["spec"]["supportedModelFormats"]]
    assert model["modelFormat"]["name"] in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    (external,) = keda_metrics(isvc)
    assert external["metric"]["backend"] == "prometheus"
    assert metric_names(external["metric"]["query"]) == ["lossreg_requests_queued"]
    assert f'pod=~"{isvc["metadata"]["name"]}-predictor-' in external["metric"]["query"]
    # The threshold is half of each replica's queue: scale out before one has to refuse.
    max_queue = int(env_of(pod_container(isvc))["LOSSREG_MAX_QUEUE"])
    assert external["target"] == {"type": "Value", "value": str(max_queue // 2)}
    termination = isvc["spec"]["predictor"]["terminationGracePeriodSeconds"]
    env = env_of(pod_container(isvc))
    assert termination > float(env["LOSSREG_DRAIN_S"]) + Settings().compute_timeout_s
