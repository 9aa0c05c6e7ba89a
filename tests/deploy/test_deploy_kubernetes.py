"""The Kubernetes manifests in deploy/kubernetes: schema-valid (kubernetes-validate ships the API
schemas, so this runs offline) and wired together (selectors, ports, probes, autoscaler target).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from lossreg_service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((REPO / "deploy" / "kubernetes").glob("*.yaml"))
# The oldest Kubernetes release whose API these manifests claim to fit, and the newest known.
KUBERNETES_VERSIONS = ["1.27.0", "latest"]


def documents() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in documents() if doc["kind"] == kind]
    return found


def container() -> dict[str, Any]:
    (only,) = by_kind("Deployment")["spec"]["template"]["spec"]["containers"]
    return only


def test_manifests_hold_a_deployment_a_service_and_an_autoscaler() -> None:
    kinds = sorted(doc["kind"] for doc in documents())
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "Service"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_match_the_kubernetes_api_schema(version: str) -> None:
    utils = pytest.importorskip(
        "kubernetes_validate.utils", reason="kubernetes-validate is in the test extra"
    )
    wanted = utils.latest_version() if version == "latest" else version
    for doc in documents():
        # strict: unknown fields (a misspelled key) fail too.
        utils.validate(doc, wanted, strict=True)


def test_schema_validation_rejects_a_misspelled_field() -> None:
    utils = pytest.importorskip(
        "kubernetes_validate.utils", reason="kubernetes-validate is in the test extra"
    )
    broken = by_kind("Deployment")
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(utils.ValidationError):
        utils.validate(broken, utils.latest_version(), strict=True)


def test_service_and_autoscaler_point_at_the_deployment() -> None:
    deployment, service, hpa = (
        by_kind(k) for k in ("Deployment", "Service", "HorizontalPodAutoscaler")
    )
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    port_names = {p["name"]: p["containerPort"] for p in container()["ports"]}
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(service_ports) == {"http", "grpc"}
    assert all(p["targetPort"] in port_names for p in service_ports.values())
    assert service_ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"  # HTTP/2, no TLS
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_container_listens_where_the_image_serves_and_probes_health() -> None:
    image_env = dict(re.findall(r"(LOSSREG_\w+)=(\S+)", (REPO / "Dockerfile").read_text()))
    ports = {p["name"]: p for p in container()["ports"]}
    assert set(ports) == {"http", "grpc"}
    port = ports["http"]
    env = {e["name"]: e.get("value") for e in container()["env"]}
    settings = {**image_env, **{k: v for k, v in env.items() if v is not None}}
    assert port["containerPort"] == int(settings["LOSSREG_PORT"])
    assert ports["grpc"]["containerPort"] == int(settings["LOSSREG_GRPC_PORT"])
    assert "args" not in container() and "command" not in container()  # the image's `serve`
    for probe, path in (
        ("startupProbe", "/v2/health/ready"),
        ("readinessProbe", "/v2/health/ready"),
        ("livenessProbe", "/v2/health/live"),
    ):
        assert container()[probe]["httpGet"] == {"path": path, "port": port["name"]}


def test_pod_runs_as_the_image_user_with_one_gpu() -> None:
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    (image_user,) = set(re.findall(r"^USER (\d+)$", (REPO / "Dockerfile").read_text(), re.M))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(image_user)
    assert container()["resources"]["limits"]["nvidia.com/gpu"] == 1
    # The autoscaler's CPU utilisation is measured against this request.
    assert container()["resources"]["requests"]["cpu"]
    # Kubernetes would otherwise set LOSSREG_PORT=tcp://... for the Service named lossreg.
    assert pod["enableServiceLinks"] is False


def test_environment_names_real_settings() -> None:
    fields = {f"LOSSREG_{name.upper()}" for name in Settings.model_fields}
    names = {variable["name"] for variable in container()["env"]}
    assert names <= fields, names - fields
    env = {v["name"]: v for v in container()["env"]}
    assert env["LOSSREG_DEVICE"]["value"] == "cuda:0"
    assert env["LOSSREG_API_KEYS"]["valueFrom"]["secretKeyRef"]["optional"] is True
