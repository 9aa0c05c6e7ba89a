"""``lossreg serve --workers 2``: when the supervisor is killed, its workers go with it, so a
restarted server can bind the port again; while it runs, each worker's metrics stay
consistent under a mix of good and refused requests."""

from __future__ import annotations

import os
import re
import signal
import socket
import time

import httpx

from ._served import Served, children, lossreg_serve


def _can_bind(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill_supervisor(served: Served) -> None:
    """SIGKILL the supervisor: its workers must go, and the port must be free again."""
    workers = children(served.pid)
    assert len(workers) >= 2
    assert httpx.get(f"{served.url}/v2/health/live", timeout=5).status_code == 200
    os.kill(served.pid, signal.SIGKILL)
    served.process.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers), "workers outlived their supervisor"
    assert _can_bind(served.port)


def _sample(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match is not None, name
    return float(match.group(1))


def test_two_workers_under_mixed_traffic_then_the_supervisor_is_killed() -> None:
    """One server start (two workers take a while on two cores) for both claims."""
    env = {"LOSSREG_MAX_BODY_BYTES_IN_FLIGHT": str(1024 * 1024)}
    with lossreg_serve(env, workers=2) as served, httpx.Client(base_url=served.url) as http:
        good = {"inputs": {"input": [1.0, 2.0], "target": [0.0, 0.0]}}
        statuses = []
        for i in range(60):
            if i % 3 == 0:  # over this worker's body budget alone: refused before reading
                r = http.post("/v1/losses/mse_loss/evaluate", content=b"[" * (2 * 1024 * 1024))
            elif i % 3 == 1:
                r = http.post("/v1/losses/mse_loss/evaluate", json={"inputs": {"x" * 300: 1}})
            else:
                r = http.post("/v1/losses/mse_loss/evaluate", json=good)
                assert r.json()["loss"] == 2.5
            statuses.append(r.status_code)
        assert statuses.count(200) == 20 and statuses.count(413) == 20
        assert statuses.count(400) == 20
        for _ in range(6):  # both workers answer scrapes: each must be at rest
            text = http.get("/metrics").text
            assert _sample(text, "lossreg_request_body_bytes_in_flight") == 0
            assert _sample(text, "lossreg_requests_in_flight") == 1  # the scrape itself
        _kill_supervisor(served)
