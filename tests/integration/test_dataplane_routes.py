"""Compositions (``POST /v1/evaluate``) and sweeps go through the same dataplane as inference:
the model statistics count them (a composition once per distinct loss among its terms), and
they share the executor's one admission (503 + Retry-After before the body is read)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch
import torch.nn.functional as F

from lossreg_service.settings import Settings
from tests.support.losses import SlowSettings
from tests.support.server import gauge, serve, wait_for_gauge

X = [[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]]
Y = [[0.0, 1.0, 1.0], [1.0, -1.0, 0.0]]


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with serve(Settings(device="cpu", log_level="warning")) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client


def _stats(http: httpx.Client, name: str) -> dict[str, Any]:
    r = http.get(f"/v2/models/{name}/stats")
    assert r.status_code == 200, r.text
    (entry,) = r.json()["model_stats"]
    return entry  # type: ignore[no-any-return]


def _counts(http: httpx.Client, name: str) -> tuple[int, int, int, int]:
    """(successes, failures, executions, executions of batch size 1)."""
    s = _stats(http, name)
    ones = sum(b["compute_infer"]["count"] for b in s["batch_stats"] if b["batch_size"] == 1)
    inference = s["inference_stats"]
    return inference["success"]["count"], inference["fail"]["count"], s["execution_count"], ones


def test_a_composition_counts_once_for_each_distinct_term_loss(http: httpx.Client) -> None:
    mse0, l10, smooth0 = (_counts(http, n) for n in ("mse_loss", "l1_loss", "smooth_l1_loss"))
    body = {
        "terms": [
            {"loss": "mse_loss", "label": "a"},
            {"loss": "mse_loss", "label": "b", "weight": 2.0},
            {"loss": "l1_loss", "weight": 0.5},
        ],
        "inputs": {"input": X, "target": Y},
    }
    r = http.post("/v1/evaluate", json=body)
    assert r.status_code == 200, r.text
    x, y = torch.tensor(X), torch.tensor(Y)
    expected = 3 * F.mse_loss(x, y) + 0.5 * F.l1_loss(x, y)
    assert r.json()["loss"] == pytest.approx(expected.item(), rel=1e-6)

    mse1, l11 = _counts(http, "mse_loss"), _counts(http, "l1_loss")
    # one request: one success and one execution (batch size 1) for each distinct loss,
    # although mse_loss is two of the terms
    assert [a - b for a, b in zip(mse1, mse0)] == [1, 0, 1, 1]
    assert [a - b for a, b in zip(l11, l10)] == [1, 0, 1, 1]
    assert _counts(http, "smooth_l1_loss") == smooth0  # not a term: untouched
    stats = _stats(http, "l1_loss")["inference_stats"]
    assert stats["compute_infer"]["ns"] > 0 and stats["queue"]["count"] == l11[0]

    # a term that fails (non-scalar) fails the composition for each of its losses
    bad = {
        **body,
        "terms": [{"loss": "mse_loss"}, {"loss": "l1_loss", "params": {"reduction": "none"}}],
    }
    r = http.post("/v1/evaluate", json=bad)
    assert r.status_code in (400, 422) and r.json()["field"] == "terms"
    assert _counts(http, "mse_loss")[1] == mse1[1] + 1
    assert _counts(http, "l1_loss")[1] == l11[1] + 1
    # a composition naming an unknown loss names no model: counted nowhere
    r = http.post("/v1/evaluate", json={**body, "terms": [{"loss": "no_such_loss"}]})
    assert r.status_code == 404
    assert _counts(http, "mse_loss")[:2] == (mse1[0], mse1[1] + 1)


def test_a_sweep_counts_as_one_inference_and_one_execution(http: httpx.Client) -> None:
    before = _counts(http, "huber_loss")
    body = {
        "inputs": {"input": X, "target": Y},
        "sweep": {"input": "input", "index": [0, 1], "start": -1.0, "stop": 1.0, "points": 9},
    }
    r = http.post("/v1/losses/huber_loss/sweep", json=body)
    assert r.status_code == 200, r.text
    assert len(r.json()["loss"]) == 9
    after = _counts(http, "huber_loss")
    assert [a - b for a, b in zip(after, before)] == [1, 0, 1, 1]
    r = http.post(
        "/v1/losses/huber_loss/sweep", json={**body, "sweep": {**body["sweep"], "index": [5, 5]}}
    )
    assert r.status_code in (400, 422) and r.json()["field"] == "sweep.index"
    assert _counts(http, "huber_loss")[1] == after[1] + 1
    stats = _stats(http, "huber_loss")["inference_stats"]
    assert stats["compute_infer"]["ns"] > 0 and stats["compute_input"]["count"] == after[0]


# -- one admission for every kind of request ---------------------------------------------------


def test_compositions_and_sweeps_share_the_one_admission() -> None:
    settings = SlowSettings(
        device="cpu", log_level="warning", compute_threads=1, max_queue=1, retry_after_s=2
    )
    slow = {
        "terms": [{"loss": "slow_loss", "params": {"seconds": 0.8}}],
        "inputs": {"input": [1.0, 2.0]},
    }
    sweep = {
        "inputs": {"input": [1.0, 2.0]},
        "params": {"seconds": 0.0},
        "sweep": {"input": "input", "index": [0], "values": [0.0, 1.0]},
    }
    with serve(settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        statuses: dict[str, int] = {}

        def call(key: str, path: str, body: dict[str, Any]) -> None:
            with httpx.Client(base_url=url, timeout=30) as own:
                statuses[key] = own.post(path, json=body).status_code

        running = threading.Thread(target=call, args=("running", "/v1/evaluate", slow))
        running.start()
        wait_for_gauge(http, "lossreg_requests_running", 1)
        queued = threading.Thread(target=call, args=("queued", "/v1/losses/slow_loss/sweep", sweep))
        queued.start()
        wait_for_gauge(http, "lossreg_requests_queued", 1)

        for path, body in (("/v1/evaluate", slow), ("/v1/losses/slow_loss/sweep", sweep)):
            r = http.post(path, json=body)
            assert r.status_code == 503 and r.json()["code"] == "server_busy", path
            assert r.headers["Retry-After"] == "2"
        # refused on its headers alone: the body is never waited for
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(
                b"POST /v1/evaluate HTTP/1.1\r\nHost: test\r\n"
                b"Content-Type: application/json\r\nContent-Length: 50000\r\n\r\n"
            )
            assert sock.recv(4096).startswith(b"HTTP/1.1 503")
        running.join()
        queued.join()
        assert statuses == {"running": 200, "queued": 200}
        stats = _stats(http, "slow_loss")["inference_stats"]
        assert stats["success"]["count"] == 2  # the composition and the sweep
        assert stats["fail"]["count"] == 1  # the refused sweep (the refused composition and
        # the raw request named no loss yet)
        assert stats["queue"]["ns"] > 0.5e9  # the sweep waited for the composition


def test_uploads_in_progress_hold_no_queue_place() -> None:
    """Slow clients trickling bodies cannot fill the queue and lock everyone else out: a request
    joins its device's queue only once its body has arrived (the client timeouts and the body
    budget bound the uploads themselves)."""
    settings = Settings(device="cpu", log_level="warning", compute_threads=1, max_queue=1)
    body = b'{"inputs": {"input": [1.0, 3.0], "target": [0.0, 0.0]}}'
    v2 = (
        b'{"inputs": [{"name": "input", "shape": [2], "datatype": "FP32", "data": [1, 3]},'
        b' {"name": "target", "shape": [2], "datatype": "FP32", "data": [0, 0]}]}'
    )
    bodies = {"/v1/losses/mse_loss/evaluate": body, "/v2/models/mse_loss/infer": v2}
    with serve(settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        host, port = url.removeprefix("http://").split(":")
        uploads = []
        try:
            for path in list(bodies) * 3:
                sock = socket.create_connection((host, int(port)), timeout=5)
                uploads.append((sock, bodies[path]))
                sock.sendall(
                    f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(bodies[path])}\r\n\r\n".encode()
                    + bodies[path][:10]
                )
            time.sleep(0.3)  # the server has admitted them and is waiting for their bodies
            for _ in range(3):
                r = http.post("/v1/losses/mse_loss/evaluate", content=body)
                assert r.status_code == 200 and r.json()["loss"] == 5.0, r.text
            assert gauge(http, "lossreg_requests_queued") == 0
            for sock, sent in uploads:  # the slow uploads finish, and are answered
                sock.sendall(sent[10:])
                assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        finally:
            for sock, _ in uploads:
                sock.close()
