"""Requests bounded before they cost: a composition past its timeout stops computing, the
number of terms, tensors and parameters and the length of names are capped (4xx naming the
field), and error bodies and log lines quote only a bounded prefix of what the client sent,
with every line-breaking character escaped.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from torch import Tensor

from lossreg.protocol.limits import MAX_NAME_LENGTH, MAX_PARAMETERS, MAX_TENSORS, MAX_TERMS
from lossreg_service.registry import LossRegistry
from lossreg_service.server.logs import JsonFormatter, RequestIdFilter

from ._harness import FaultSettings, assert_still_serving, running

TIMEOUT_S = 0.5
CALLS: list[float] = []
_LOCK = threading.Lock()


def counting_loss(input: Tensor, *, seconds: float = 0.05) -> Tensor:
    """Sleeps, counts the call: how far a composition got."""
    time.sleep(seconds)
    with _LOCK:
        CALLS.append(time.monotonic())
    return (input * input).sum()


class _Settings(FaultSettings):
    def build_registry(self) -> LossRegistry:
        registry = super().build_registry()
        registry.register(counting_loss, "counting_loss", distribution="lossreg-faults")
        return registry


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.addFilter(RequestIdFilter())
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def logs() -> Iterator[_Collect]:
    handler = _Collect()
    logger = logging.getLogger("lossreg")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.fixture(scope="module")
def http(logs: _Collect) -> Iterator[httpx.Client]:
    settings = _Settings(device="cpu", log_level="info")
    with running(settings) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def short(logs: _Collect) -> Iterator[httpx.Client]:
    """A server whose computations time out after `TIMEOUT_S`."""
    settings = _Settings(device="cpu", log_level="info", compute_timeout_s=TIMEOUT_S)
    with running(settings) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def _terms(n: int, seconds: float = 0.05) -> list[dict]:
    return [
        {"loss": "counting_loss", "label": f"t{i}", "params": {"seconds": seconds}}
        for i in range(n)
    ]


def test_a_composition_past_its_timeout_stops_computing(short: httpx.Client) -> None:
    http = short
    CALLS.clear()
    n = MAX_TERMS  # 64 x 50 ms = 3.2 s of work against a 0.5 s timeout
    r = http.post("/v1/evaluate", json={"terms": _terms(n), "inputs": {"input": [1.0, 2.0]}})
    assert r.status_code == 504, r.text
    time.sleep(0.5)
    done = len(CALLS)
    time.sleep(1.0)
    assert len(CALLS) == done, "the abandoned composition kept computing after its 504"
    assert done < n // 2
    assert_still_serving(http)


def test_a_batch_past_its_timeout_stops_between_items(logs: _Collect) -> None:
    """Eight small requests for the same loss run as one batch, one item after another (CPU);
    at the timeout the batch stops at its next item instead of computing all eight."""
    settings = _Settings(
        device="cpu",
        log_level="info",
        compute_timeout_s=TIMEOUT_S,
        compute_threads=1,
        batch_max_delay_us=100_000,  # gather all eight into one batch
    )
    body = {
        "inputs": [{"name": "input", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}],
        "parameters": {"seconds": 0.2},
    }
    CALLS.clear()
    statuses: list[int] = []
    with running(settings) as server:

        def one() -> None:
            r = httpx.post(f"{server.url}/v2/models/counting_loss/infer", json=body, timeout=30)
            statuses.append(r.status_code)

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        time.sleep(0.5)
        done = len(CALLS)
        time.sleep(1.0)
        assert len(CALLS) == done, "the abandoned batch kept computing after its 504s"
    assert statuses.count(504) >= 4, statuses
    assert done < 8


def test_too_many_terms_is_a_400_naming_terms_at_once(http: httpx.Client) -> None:
    body = {"terms": _terms(60_000, 0.0), "inputs": {"input": [1.0]}}
    start = time.monotonic()
    r = http.post("/v1/evaluate", json=body)
    assert r.status_code == 400 and r.json()["field"] == "terms", r.text
    assert str(MAX_TERMS) in r.json()["error"]
    assert time.monotonic() - start < 5  # parsed and refused, never checked pairwise
    assert_still_serving(http)


def test_duplicate_labels_are_found_in_linear_time(http: httpx.Client) -> None:
    terms = _terms(MAX_TERMS, 0.0)
    terms[-1]["label"] = "t0"
    r = http.post("/v1/evaluate", json={"terms": terms, "inputs": {"input": [1.0]}})
    assert r.status_code == 422 and "'t0'" in r.json()["error"], r.text


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/losses/mse_loss/evaluate",
            {"inputs": {"input": [1.0], "target": [1.0]}, "params": {}},
        ),
        ("/v1/evaluate", {"terms": [{"loss": "mse_loss"}], "inputs": {"input": [1.0]}}),
    ],
)
@pytest.mark.parametrize("where", ["inputs", "params"])
def test_too_many_tensors_or_parameters(
    http: httpx.Client, path: str, body: dict, where: str
) -> None:
    body = json.loads(json.dumps(body))
    if where == "params" and path == "/v1/evaluate":
        body["terms"][0]["params"] = {f"p{i}": 1 for i in range(MAX_PARAMETERS + 1)}
        field = "terms.0.params"
    else:
        count = MAX_TENSORS if where == "inputs" else MAX_PARAMETERS
        body[where] = {f"x{i}": 1.0 for i in range(count + 1)}
        field = where
    r = http.post(path, json=body)
    assert r.status_code == 400 and r.json()["field"] == field, r.text


def test_v2_too_many_outputs_and_parameters(http: httpx.Client) -> None:
    base = {"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    r = http.post(
        "/v2/models/mse_loss/infer",
        json={**base, "outputs": [{"name": f"o{i}"} for i in range(MAX_TENSORS + 1)]},
    )
    assert r.status_code == 400 and r.json()["field"] == "outputs", r.text
    params = {f"p{i}": 1 for i in range(MAX_PARAMETERS + 1)}
    r = http.post("/v2/models/mse_loss/infer", json={**base, "parameters": params})
    assert r.status_code == 400 and r.json()["field"] == "parameters", r.text


HUGE = "n" * 4_000_000  # 4 MB: answered with the whole name twice before the cap


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/losses/mse_loss/evaluate", {"inputs": {HUGE: [1.0]}}),
        ("/v1/losses/mse_loss/evaluate", {"inputs": {"input": [1.0]}, "params": {HUGE: 1}}),
        ("/v1/losses/mse_loss/evaluate", {"inputs": {"input": [1.0]}, "grad": [HUGE]}),
        ("/v1/evaluate", {"terms": [{"loss": HUGE}], "inputs": {"input": [1.0]}}),
        (
            "/v2/models/mse_loss/infer",
            {"inputs": [{"name": HUGE, "shape": [1], "datatype": "FP32", "data": [1.0]}]},
        ),
        (
            "/v2/models/mse_loss/infer",
            {
                "inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [1.0]}],
                "outputs": [{"name": HUGE}],
            },
        ),
        (
            "/v2/models/mse_loss/infer",
            {
                "inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [1.0]}],
                "parameters": {HUGE: 1},
            },
        ),
    ],
)
def test_oversized_names_are_refused_with_a_bounded_echo(
    http: httpx.Client, logs: _Collect, path: str, body: dict
) -> None:
    logs.lines.clear()
    r = http.post(path, json=body)
    assert 400 <= r.status_code < 500, r.text[:300]
    assert r.json()["field"] is not None
    assert len(r.content) < 4 * MAX_NAME_LENGTH + 1000  # a bounded prefix, not the name
    assert logs.lines and max(len(line) for line in logs.lines) < 8 * MAX_NAME_LENGTH


def test_an_oversized_loss_name_in_the_path_is_bounded(http: httpx.Client, logs: _Collect) -> None:
    logs.lines.clear()
    r = http.post("/v1/losses/" + "m" * 30_000 + "/evaluate", json={"inputs": {}})
    assert r.status_code == 404
    assert len(r.content) < 4 * MAX_NAME_LENGTH + 1000
    assert max(len(line) for line in logs.lines) < 8 * MAX_NAME_LENGTH


@pytest.mark.parametrize("char", ["\u0085", "\u2028", "\u2029", "\x7f", "\x9b", "\n", "\x1b"])
def test_line_breaking_characters_from_the_path_are_escaped_in_logs(
    http: httpx.Client, logs: _Collect, char: str
) -> None:
    from urllib.parse import quote

    logs.lines.clear()
    r = http.get("/v1/losses/evil" + quote(char) + "name")
    assert r.status_code == 404
    deadline = time.monotonic() + 5  # the access line is written just after the response
    while not any('"lossreg.access"' in line for line in logs.lines):
        assert time.monotonic() < deadline, logs.lines
        time.sleep(0.01)
    for line in logs.lines:
        assert char not in line
        assert len(line.splitlines()) == 1  # str.splitlines breaks at NEL, LS, PS
        json.loads(line)  # still valid JSON, the character restored by the parser
    assert any(char in json.loads(line)["message"] for line in logs.lines)
