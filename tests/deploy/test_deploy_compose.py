"""docker-compose.yml, validated against the Compose Specification's schema and read for the
promises the README makes: `docker compose up` starts the GPU service, `--profile cpu` runs without
GPUs, `--profile monitoring` adds Prometheus scraping /metrics and Grafana with a dashboard.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from lossreg_service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
SCHEMA_FILE = REPO / ".." / "shared" / "compose-spec.json"


def image_env(target: str) -> dict[str, str]:
    """The ``LOSSREG_*`` ENV of the Dockerfile stage ``target`` (where the image listens)."""
    text = (REPO / "Dockerfile").read_text()
    stage = re.split(r"^FROM \S+ AS ", text, flags=re.MULTILINE)
    (body,) = [part for part in stage if part.startswith(f"{target}\n")]
    return dict(re.findall(r"(LOSSREG_\w+)=(\S+)", body))


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def dotenv() -> dict[str, str]:
    pairs = {}
    for line in (REPO / ".env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def started(cli_profiles: list[str], environ: dict[str, str] | None = None) -> set[str]:
    """The services `docker compose [--profile P]... up` starts.

    Compose's rules (compose-go `WithDefaultProfiles`): --profile flags replace COMPOSE_PROFILES,
    which comes from the shell or else the project's .env; a service without `profiles` always
    starts, one with `profiles` only when one of them is active.
    """
    env = {**dotenv(), **(environ or {})}
    active = set(cli_profiles) or {p.strip() for p in env.get("COMPOSE_PROFILES", "").split(",")}
    return {
        name
        for name, service in compose()["services"].items()
        if not service.get("profiles") or active & set(service["profiles"])
    }


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    if not SCHEMA_FILE.is_file():
        pytest.skip(f"the Compose Specification schema is not at {SCHEMA_FILE} (../shared/)")
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_compose_file_is_valid_against_the_compose_spec(
    validator: jsonschema.Draft7Validator,
) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose())]
    assert errors == []


def test_schema_catches_a_misspelled_key(validator: jsonschema.Draft7Validator) -> None:
    broken = copy.deepcopy(compose())
    broken["services"]["lossreg"]["healthchek"] = broken["services"]["lossreg"].pop("healthcheck")
    assert not validator.is_valid(broken)
    broken = copy.deepcopy(compose())
    broken["services"]["lossreg"]["deploy"]["resources"]["reservations"]["devices"][0].pop(
        "capabilities"
    )
    assert not validator.is_valid(broken)


def test_plain_up_starts_the_gpu_service_only() -> None:
    assert dotenv()["COMPOSE_PROFILES"] == "gpu"
    assert started([]) == {"lossreg"}


def test_cpu_profile_runs_without_any_gpu_service() -> None:
    services = compose()["services"]
    names = started(["cpu"])
    assert names == {"lossreg-cpu"}
    for name in names:
        assert "deploy" not in services[name] and "gpus" not in services[name]
        assert services[name]["environment"]["LOSSREG_DEVICE"] == "cpu"
        assert services[name]["build"]["target"] == "cpu"


def test_monitoring_profile_adds_prometheus_and_grafana_to_either_service() -> None:
    monitoring = {"prometheus", "grafana"}
    assert started(["gpu", "monitoring"]) == {"lossreg", *monitoring}
    assert started(["cpu", "monitoring"]) == {"lossreg-cpu", *monitoring}
    assert started([], {"COMPOSE_PROFILES": "gpu,monitoring"}) == {"lossreg", *monitoring}


def test_gpu_service_reserves_nvidia_gpus() -> None:
    service = compose()["services"]["lossreg"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert service["build"]["target"] == "gpu"
    assert service["environment"]["LOSSREG_DEVICE"] == "${LOSSREG_DEVICE:-auto}"


@pytest.mark.parametrize("name", ["lossreg", "lossreg-cpu"])
def test_lossreg_services_are_built_from_the_dockerfile_with_health_and_restart(name: str) -> None:
    service = compose()["services"][name]
    stages = re.findall(r"^FROM \S+ AS (\S+)$", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert service["build"]["context"] == "."
    assert service["build"]["target"] in stages
    assert service["build"]["args"] == {"EXTRA_PACKAGES": "${EXTRA_PACKAGES:-}"}
    assert service["restart"] == "unless-stopped"
    # HTTP and gRPC are published where the image listens (its LOSSREG_PORT, LOSSREG_GRPC_PORT)
    image = image_env(service["build"]["target"])
    published = dict(reversed(p.rsplit(":", 1)) for p in service["ports"])
    assert published == {
        image["LOSSREG_PORT"]: "${LOSSREG_PUBLISH_PORT:-8000}",
        image["LOSSREG_GRPC_PORT"]: "${LOSSREG_PUBLISH_GRPC_PORT:-8001}",
    }
    assert "LOSSREG_PORT" not in service["environment"]
    assert "LOSSREG_GRPC_PORT" not in service["environment"]
    # The same probe as the image's HEALTHCHECK.
    image_check = re.search(
        r"HEALTHCHECK .*?CMD (\[.*?\])", (REPO / "Dockerfile").read_text(), re.S
    )
    assert image_check
    assert service["healthcheck"]["test"] == ["CMD", *json.loads(image_check.group(1))]
    assert {"interval", "timeout", "retries", "start_period"} <= set(service["healthcheck"])


def test_environment_passes_only_real_settings() -> None:
    fields = {f"LOSSREG_{name.upper()}" for name in Settings.model_fields}
    for name in ("lossreg", "lossreg-cpu"):
        environment = compose()["services"][name]["environment"]
        assert set(environment) <= fields, set(environment) - fields
        assert {"LOSSREG_DEVICE", "LOSSREG_API_KEYS", "LOSSREG_MAX_QUEUE"} <= set(environment)
        for key, value in environment.items():
            if key != "LOSSREG_DEVICE":
                # An unset variable becomes "", which the settings ignore: the default applies.
                assert value == f"${{{key}:-}}"
    assert Settings.model_config.get("env_ignore_empty") is True


def test_prometheus_scrapes_the_lossreg_metrics_under_either_profile() -> None:
    services = compose()["services"]
    prometheus = services["prometheus"]
    mount = next(
        v for v in prometheus["volumes"] if v.endswith(":/etc/prometheus/prometheus.yml:ro")
    )
    config_path = REPO / mount.split(":")[0]
    assert config_path.is_file()
    config = yaml.safe_load(config_path.read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (targets,) = [c["targets"] for c in job["static_configs"]]
    for profile in ("gpu", "cpu"):
        (lossreg,) = started([profile]) - {"prometheus", "grafana"}
        aliases = services[lossreg].get("networks", {}).get("default", {}).get("aliases", [])
        port = image_env(services[lossreg]["build"]["target"])["LOSSREG_PORT"]
        reachable = {f"{host}:{port}" for host in [lossreg, *aliases]}
        assert set(targets) & reachable, (profile, targets)


def _mounted(service: dict[str, Any], target: str) -> Path:
    (source,) = [v.split(":")[0] for v in service["volumes"] if v.split(":")[1] == target]
    return REPO / source


def test_grafana_is_provisioned_with_prometheus_and_the_lossreg_dashboard() -> None:
    services = compose()["services"]
    grafana = services["grafana"]
    provisioning = _mounted(grafana, "/etc/grafana/provisioning")
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["type"] == "prometheus"
    prometheus_port = services["prometheus"]["ports"][0].rsplit(":", 1)[1].strip('"')
    assert datasource["url"] == f"http://prometheus:{prometheus_port}"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "lossreg.yml").read_text())[
        "providers"
    ]
    dashboards = _mounted(grafana, provider["options"]["path"])
    dashboard = json.loads((dashboards / "lossreg.json").read_text())
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/lossreg.json"
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in [p, *p["targets"]]}
    assert uids == {datasource["uid"]}  # every panel and query reads the provisioned source
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("request rate", "latency", "queue", "memory", "batch"):
        assert topic in titles
