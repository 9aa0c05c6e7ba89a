"""The soak's hostile phase (``soak.py --hostile``): attackers beside the correct clients.

Each attacker loops until the deadline and records what the server did, as a status string:

- ``head-trickler``: a request head sent one byte every 0.5 s -> closed (header timeout);
- ``body-staller``: a head and a few body bytes, then silence -> closed (body timeout);
- ``idle-burst``: 20 connections that send nothing -> every one closed (header timeout);
- ``big-header``: a 200 KB header value -> 431;
- ``huge-name``: a 1 MB input name -> a 400 whose body is small.

The health prober measures ``/v2/health/live`` latency meanwhile. A server that keeps a hostile
connection open past its timeout plus a slack, or answers otherwise, is a failure.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

__all__ = ["ATTACKERS", "health_prober"]

SLACK_S = 5.0
Record = Callable[[str, str, float, str | None], None]


def _connect(url: str, timeout: float) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def _wait_closed(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def head_trickler(url: str, limits: dict[str, float], deadline: float, record: Record) -> None:
    while time.monotonic() < deadline:
        start = time.monotonic()
        with _connect(url, 10) as sock:
            sock.settimeout(0.5)
            closed = False
            try:
                for byte in b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000:
                    sock.sendall(bytes([byte]))
                    try:
                        if sock.recv(100) == b"":
                            closed = True
                            break
                    except TimeoutError:
                        pass
                    if time.monotonic() - start > limits["header"] + SLACK_S:
                        break
            except (BrokenPipeError, ConnectionResetError):
                closed = True
        took = time.monotonic() - start
        failure = None if closed else f"still open after {took:.1f} s"
        record("head-trickler", "closed" if closed else "open", took, failure)


def body_staller(url: str, limits: dict[str, float], deadline: float, record: Record) -> None:
    while time.monotonic() < deadline:
        start = time.monotonic()
        with _connect(url, 10) as sock:
            sock.sendall(
                b"POST /v2/models/mse_loss/infer HTTP/1.1\r\nHost: x\r\n"
                b'Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"inputs":'
            )
            closed = _wait_closed(sock, limits["body"] + SLACK_S)
        took = time.monotonic() - start
        failure = None if closed else f"still open after {took:.1f} s"
        record("body-staller", "closed" if closed else "open", took, failure)


def idle_burst(url: str, limits: dict[str, float], deadline: float, record: Record) -> None:
    while time.monotonic() < deadline:
        start = time.monotonic()
        socks = [_connect(url, 10) for _ in range(20)]
        try:
            closed = sum(_wait_closed(s, max(0.1, start + limits["header"] + SLACK_S -
                                              time.monotonic())) for s in socks)  # fmt: skip
        finally:
            for s in socks:
                s.close()
        took = time.monotonic() - start
        failure = None if closed == len(socks) else f"{len(socks) - closed} idle still open"
        record("idle-burst", "closed" if failure is None else "open", took, failure)


def big_header(url: str, limits: dict[str, float], deadline: float, record: Record) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                r = http.get("/v2/health/live", headers={"X-Big": "a" * 200_000})
                status, failure = str(r.status_code), None
                if r.status_code != 431:
                    failure = f"status {r.status_code}, expected 431"
            except httpx.HTTPError as exc:  # closed while sending: also a refusal
                status, failure = "closed", None if "RemoteProtocol" in repr(exc) else repr(exc)
            record("big-header", status, time.perf_counter() - start, failure)
            time.sleep(0.2)


def huge_name(url: str, limits: dict[str, float], deadline: float, record: Record) -> None:
    body = json.dumps(
        {"inputs": [{"name": "n" * 1_000_000, "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    ).encode()
    with httpx.Client(base_url=url, timeout=30) as http:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                r = http.post(
                    "/v2/models/mse_loss/infer",
                    content=body,
                    headers={"Content-Type": "application/json"},
                )
            except httpx.HTTPError as exc:
                record("huge-name", "transport", time.perf_counter() - start, repr(exc))
                continue
            failure = None
            if r.status_code != 400 or len(r.content) > 4096:
                failure = f"status {r.status_code}, {len(r.content)} bytes of answer"
            record("huge-name", str(r.status_code), time.perf_counter() - start, failure)
            time.sleep(0.2)


ATTACKERS = (head_trickler, body_staller, idle_burst, big_header, huge_name)


def health_prober(url: str, deadline: float, out: list[float], errors: list[str]) -> None:
    """``/v2/health/live`` every 0.2 s; latencies (seconds) into ``out``."""
    with httpx.Client(base_url=url, timeout=10) as http:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                r = http.get("/v2/health/live")
                if r.status_code != 200:
                    errors.append(f"health: status {r.status_code}")
            except httpx.HTTPError as exc:
                errors.append(f"health: {exc!r}")
                continue
            out.append(time.perf_counter() - start)
            time.sleep(0.2)


def start_attackers(
    url: str, limits: dict[str, float], deadline: float, record: Record
) -> list[threading.Thread]:
    """One thread per attacker (not started)."""
    return [
        threading.Thread(target=fn, args=(url, limits, deadline, record), daemon=True)
        for fn in ATTACKERS
    ]


def metrics_at_rest(url: str, scrapes: int = 8) -> list[str]:
    """Scrape ``/metrics`` (each scrape may reach another worker): every worker must show no
    body bytes and no request in flight but the scrape. Problems found, as lines."""
    problems = []
    with httpx.Client(base_url=url, timeout=10) as http:
        for _ in range(scrapes):
            text = http.get("/metrics").text
            values: dict[str, Any] = {}
            for line in text.splitlines():
                if line.startswith(("lossreg_request_body_bytes_in_flight ",
                                    "lossreg_requests_in_flight ")):  # fmt: skip
                    name, value = line.split()
                    values[name] = float(value)
            if values.get("lossreg_request_body_bytes_in_flight") != 0:
                problems.append(f"body bytes in flight at rest: {values}")
            if values.get("lossreg_requests_in_flight") != 1:
                problems.append(f"requests in flight at rest (1 is the scrape): {values}")
    return problems
