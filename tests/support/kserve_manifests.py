"""Read deploy/kserve: the serving runtimes, the InferenceServices, and what a pod would run.

KServe builds the predictor's container from its runtime's container, with the
InferenceService's ``model`` fields laid over it (args appended, env entries replaced by name).
`pod_container` does that merge, so tests start exactly what a cluster would.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
KSERVE = REPO / "deploy" / "kserve"
CRDS = REPO.parent / "shared" / "kserve-crds"
CRD_FILES = {
    "ClusterServingRuntime": "serving.kserve.io_clusterservingruntimes.yaml",
    "ServingRuntime": "serving.kserve.io_servingruntimes.yaml",
    "InferenceService": "serving.kserve.io_inferenceservices.yaml",
}
# The image's ENTRYPOINT (Dockerfile): the container's args follow it.
ENTRYPOINT = ["lossreg"]


def documents() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, doc)
        for path in sorted(KSERVE.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in documents() if doc["kind"] == kind]


def runtime_named(name: str) -> dict[str, Any]:
    (found,) = [
        doc
        for doc in of_kind("ClusterServingRuntime") + of_kind("ServingRuntime")
        if doc["metadata"]["name"] == name
    ]
    return found


def pod_container(isvc: dict[str, Any]) -> dict[str, Any]:
    """The predictor container KServe would run for ``isvc``."""
    model = isvc["spec"]["predictor"]["model"]
    (base,) = runtime_named(model["runtime"])["spec"]["containers"]
    merged = dict(base)
    env = {e["name"]: e for e in base.get("env", [])}
    env.update({e["name"]: e for e in model.get("env", [])})
    merged["env"] = list(env.values())
    merged["args"] = list(base.get("args", [])) + list(model.get("args", []))
    for key in ("image", "resources", "ports", "readinessProbe", "livenessProbe"):
        if key in model:
            merged[key] = model[key]
    return merged


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}


def keda_metrics(isvc: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        m["external"]
        for m in isvc["spec"]["predictor"].get("autoScaling", {}).get("metrics", [])
        if m["type"] == "External"
    ]


def metric_names(query: str) -> list[str]:
    """The metric names a PromQL query selects (``name{...}`` or a bare lossreg_* name)."""
    return re.findall(r"\b(lossreg_[a-zA-Z0-9_:]*)", query)


@functools.lru_cache
def crd_schema(kind: str, api_version: str) -> dict[str, Any]:
    """The openAPIV3Schema of ``kind`` at the version its apiVersion names (strict)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are megabytes of YAML
    crd = yaml.load((CRDS / CRD_FILES[kind]).read_text(), Loader=loader)  # noqa: S506
    version = api_version.split("/")[1]
    (found,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return strict(found["schema"]["openAPIV3Schema"])


def strict(schema: Any) -> Any:
    """Unknown fields become errors, as with ``kubectl apply --validate=strict`` (a structural
    CRD schema would otherwise prune a misspelled key silently)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out
