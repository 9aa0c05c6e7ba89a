"""Whole-server metrics with two worker processes: every scrape, whichever worker answers it,
counts every request the server handled (prometheus-client's multiprocess mode)."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.support.cli_server import lossreg_serve, per_worker, scrape, wait_workers_ready

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

BODY = {"inputs": {"input": [1.0, 3.0], "target": [0.0, 0.0]}}
SUCCESS = ("lossreg_requests_total", (("loss", "mse_loss"), ("outcome", "success")))
ROUTE = (
    "lossreg_request_duration_seconds_count",
    (("method", "POST"), ("route", "/v1/losses/{name}/evaluate")),
)
IN_FLIGHT = ("lossreg_requests_in_flight", ())


def _evaluate(url: str) -> None:
    """One request on a fresh connection (so the kernel may hand it to either worker)."""
    r = httpx.post(f"{url}/v1/losses/mse_loss/evaluate", json=BODY, timeout=30)
    assert r.status_code == 200 and r.json()["loss"] == 5.0, r.text


def _serve_two_workers(tmp_path: Path):  # noqa: ANN202 - a context manager
    return lossreg_serve(
        ["serve", "--workers", "2", "--device", "cpu"], {"LOSSREG_DRAIN_S": "0"}, tmp_path
    )


def test_every_scrape_counts_every_request_of_both_workers(tmp_path: Path) -> None:
    with _serve_two_workers(tmp_path) as server:
        wait_workers_ready(server, 2)
        made = 0
        history: list[float] = []
        # Batches of requests, each followed by several scrapes on fresh connections: every
        # scrape must read exactly the requests made so far (never one worker's share).
        while made < 200:
            for _ in range(5):
                _evaluate(server.url)
                made += 1
            for _ in range(4):
                samples = scrape(server.url)
                assert samples[SUCCESS] == made, (samples[SUCCESS], made)
                assert samples[ROUTE] == made
                history.append(samples[SUCCESS])
            shares = per_worker(server, "counter", "lossreg_requests_total", **dict(SUCCESS[1]))
            if made >= 20 and len(shares) == 2 and all(v > 0 for v in shares.values()):
                break
        assert history == sorted(history)  # monotonic across scrapes
        # Both workers really served requests, and their own counts add up to the total.
        assert len(shares) == 2 and min(shares.values()) > 0, shares
        assert sum(shares.values()) == made
        assert server.stop() in (0, 128 + signal.SIGTERM, -signal.SIGTERM)
    assert server.metrics_dirs == []  # the per-start metrics directory is removed on exit


def test_a_killed_worker_keeps_its_counts_and_loses_its_gauges(tmp_path: Path) -> None:
    with _serve_two_workers(tmp_path) as server:
        wait_workers_ready(server, 2)
        for _ in range(10):
            _evaluate(server.url)
        # A request whose body never finishes arriving: in flight in one worker.
        stalled = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
        stalled.sendall(
            b"POST /v1/losses/mse_loss/evaluate HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
        )
        deadline = time.monotonic() + 30
        while not (
            busy := [
                p
                for p, v in per_worker(
                    server, "gauge_livesum", "lossreg_requests_in_flight"
                ).items()
                if v == 1
            ]
        ):
            assert time.monotonic() < deadline, "the stalled request never started"
            time.sleep(0.05)
        assert scrape(server.url)[IN_FLIGHT] == 2  # the stalled request and this scrape
        os.kill(busy[0], signal.SIGKILL)
        stalled.close()
        # uvicorn replaces the worker; the dead one's gauges go, its counters stay.
        deadline = time.monotonic() + 60
        while len(server.worker_pids() - {busy[0]}) < 2:
            assert time.monotonic() < deadline, server.log.read_text()
            time.sleep(0.2)
        wait_workers_ready(server, 2)
        for _ in range(5):
            samples = scrape(server.url)
            assert samples[IN_FLIGHT] == 1  # only the scrape itself
            assert samples[SUCCESS] == 10
        assert busy[0] not in per_worker(server, "gauge_livesum", "lossreg_requests_in_flight")
        _evaluate(server.url)
        assert scrape(server.url)[SUCCESS] == 11
