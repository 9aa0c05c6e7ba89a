"""API keys on compute and catalog routes (health and metrics stay open), and metrics that move
as requests are made."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lossreg_service.settings import Settings
from tests.support.server import serve

KEYS = ["alpha-key", "beta-key"]
EVALUATE = {"inputs": {"input": [1.0, 2.0], "target": [0.0, 0.0]}}


@pytest.fixture(scope="module")
def keyed_url() -> Iterator[str]:
    with serve(Settings(device="cpu", log_level="warning", api_keys=KEYS)) as url:
        yield url


OPEN = ["/v2/health/live", "/v2/health/ready", "/v2", "/metrics", "/openapi.json"]
GUARDED = [
    ("GET", "/v1/losses", None),
    ("GET", "/v1/losses/mse_loss", None),
    ("POST", "/v1/losses/mse_loss/evaluate", EVALUATE),
    ("POST", "/v1/evaluate", {"terms": [{"loss": "mse_loss"}], **EVALUATE}),
    ("GET", "/v2/models/mse_loss", None),
    ("GET", "/v2/models/mse_loss/ready", None),
    ("POST", "/v2/models/mse_loss/infer", {"inputs": []}),
]


@pytest.mark.parametrize("path", OPEN)
def test_open_routes_need_no_key(keyed_url: str, path: str) -> None:
    assert httpx.get(keyed_url + path).status_code == 200


@pytest.mark.parametrize(("method", "path", "body"), GUARDED)
def test_guarded_routes_need_a_valid_key(
    keyed_url: str, method: str, path: str, body: dict | None
) -> None:
    missing = httpx.request(method, keyed_url + path, json=body)
    assert missing.status_code == 401 and missing.json()["code"] == "unauthorized"
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    assert missing.json()["field"] == "Authorization"
    wrong = httpx.request(
        method, keyed_url + path, json=body, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401 and "not valid" in wrong.json()["error"]
    for key in KEYS:
        ok = httpx.request(
            method, keyed_url + path, json=body, headers={"Authorization": f"Bearer {key}"}
        )
        assert ok.status_code != 401, ok.text


def test_tritonclient_with_the_key_in_headers(keyed_url: str) -> None:
    http = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    client = http.InferenceServerClient(keyed_url.removeprefix("http://"))
    x = http.InferInput("input", [2], "FP32")
    x.set_data_from_numpy(np.array([1.0, 2.0], np.float32))
    y = http.InferInput("target", [2], "FP32")
    y.set_data_from_numpy(np.zeros(2, np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("mse_loss", [x, y])
    assert info.value.status() == "401"
    result = client.infer("mse_loss", [x, y], headers={"Authorization": "Bearer beta-key"})
    assert float(result.as_numpy("loss")) == pytest.approx(2.5)
    client.close()


def _samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url + "/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _get(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_with_requests(server_url: str) -> None:
    before = _samples(server_url)
    assert httpx.post(server_url + "/v1/losses/mse_loss/evaluate", json=EVALUATE).is_success
    assert httpx.post(server_url + "/v1/losses/mse_loss/evaluate", json=EVALUATE).is_success
    bad = {"inputs": {"input": [1.0], "target": [0.0]}, "params": {"nope": 1}}
    assert httpx.post(server_url + "/v1/losses/mse_loss/evaluate", json=bad).status_code == 422
    assert httpx.get(server_url + "/v2/models/no_such_loss").status_code == 404
    after = _samples(server_url)

    def delta(name: str, **labels: str) -> float:
        return _get(after, name, **labels) - _get(before, name, **labels)

    assert delta("lossreg_requests_total", loss="mse_loss", outcome="success") == 2
    assert delta("lossreg_requests_total", loss="mse_loss", outcome="invalid_parameter") == 1
    assert delta("lossreg_compute_duration_seconds_count", loss="mse_loss", device="cpu") == 3
    assert delta("lossreg_queue_duration_seconds_count", device="cpu") == 3
    route = "/v1/losses/{name}/evaluate"
    assert delta("lossreg_request_duration_seconds_count", route=route, method="POST") == 3
    assert (
        delta("lossreg_request_duration_seconds_count", route="/v2/models/{name}", method="GET")
        == 1
    )
    assert _get(after, "lossreg_requests_in_flight") == 1  # the scrape itself
    assert _get(after, "lossreg_requests_queued", device="cpu") == 0
    assert _get(after, "lossreg_device_memory_bytes", device="cpu", kind="resident") > 0
