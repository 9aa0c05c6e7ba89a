"""How connections enter ``lossreg serve``: heads capped in bytes and fields, slow and idle
clients closed, open connections capped below the file-descriptor limit with health still
answering, and request bodies in flight held under a budget (503 + Retry-After past it).

Each test runs against the real CLI server with small limits so it stays quick.
"""

from __future__ import annotations

import re
import select
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import uvicorn

from lossreg_service.server import create_app
from lossreg_service.server.protocol import uvicorn_options
from tests.support.server import free_port

from ._harness import RELEASE, FaultSettings, binary_body
from ._served import Served, lossreg_serve, peak_rss, raw, rss

HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
BUDGET = 32 * 1024 * 1024
NOFILE = 256  # the server's descriptor limit: 128 open connections at most by default


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    env = {
        "LOSSREG_CLIENT_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "LOSSREG_CLIENT_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "LOSSREG_MAX_BODY_BYTES_IN_FLIGHT": str(BUDGET),
    }
    with lossreg_serve(env, nofile=NOFILE) as server:
        yield server


def _status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:80]
    return int(answer.split(b" ", 2)[1])


def _answer(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True if the server closes ``sock`` (EOF or reset) within ``seconds``."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _health_ms(url: str) -> float:
    start = time.perf_counter()
    r = httpx.get(f"{url}/v2/health/live", timeout=10)
    assert r.status_code == 200
    return (time.perf_counter() - start) * 1000


def test_one_huge_header_value_is_431_at_once(served: Served) -> None:
    with raw(served.url) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        try:
            while sent < 32 * 1024 * 1024:  # stops long before: the server answers and closes
                sock.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert _status(_answer(sock)) == 431
    assert sent < 4 * 1024 * 1024
    assert _health_ms(served.url) < 1000


def test_too_many_header_fields_is_431(served: Served) -> None:
    head = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 2000 + b"\r\n"
    with raw(served.url) as sock:
        sock.sendall(head)
        assert _status(_answer(sock)) == 431


def test_a_long_url_is_431(served: Served) -> None:
    with raw(served.url) as sock:
        sock.sendall(b"GET /" + b"a" * 200_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _status(_answer(sock)) == 431


def test_normal_requests_still_pass(served: Served) -> None:
    headers = {f"X-Custom-{i}": "v" * 100 for i in range(50)}
    r = httpx.get(f"{served.url}/v2/health/live", headers=headers, timeout=10)
    assert r.status_code == 200


def test_a_connection_that_sends_nothing_is_closed(served: Served) -> None:
    with raw(served.url) as sock:
        assert _closed_within(sock, HEADER_TIMEOUT_S + 3)


def test_a_byte_trickling_head_is_closed(served: Served) -> None:
    head = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    closed = False
    start = time.monotonic()
    with raw(served.url) as sock:
        try:
            for byte in head:
                sock.sendall(bytes([byte]))
                if select.select([sock], [], [], 0.2)[0]:
                    closed = sock.recv(100) == b""
                    break
        except (BrokenPipeError, ConnectionResetError):
            closed = True
    assert closed and time.monotonic() - start < HEADER_TIMEOUT_S + 3


def test_a_stalled_body_is_closed(served: Served) -> None:
    with raw(served.url) as sock:
        sock.sendall(
            b"POST /v1/losses/mse_loss/evaluate HTTP/1.1\r\nHost: x\r\n"
            b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"inputs":'
        )
        start = time.monotonic()
        assert _closed_within(sock, BODY_TIMEOUT_S + 3)
        assert time.monotonic() - start > BODY_TIMEOUT_S - 0.5  # not before its timeout


def test_a_slow_but_steady_body_is_served(served: Served) -> None:
    body = b'{"inputs": {"input": [1.0, 2.0], "target": [0.0, 0.0]}}'
    with raw(served.url) as sock:
        sock.sendall(
            b"POST /v1/losses/mse_loss/evaluate HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        for i in range(0, len(body), 16):  # 4 pieces over ~3 s: each pause under the timeout
            sock.sendall(body[i : i + 16])
            time.sleep(BODY_TIMEOUT_S / 2)
        assert _status(_answer(sock)) == 200


def test_idle_connections_cannot_exhaust_descriptors(served: Served) -> None:
    """More idle connections than the server has descriptors: health still answers."""
    socks = []
    try:
        for _ in range(NOFILE + 44):
            socks.append(raw(served.url))
        time.sleep(0.2)
        start = time.monotonic()
        assert _health_ms(served.url) < 2000
        r = httpx.post(
            f"{served.url}/v1/losses/mse_loss/evaluate",
            json={"inputs": {"input": [1.0], "target": [0.0]}},
            timeout=10,
        )
        assert r.status_code == 200
        assert time.monotonic() - start < HEADER_TIMEOUT_S  # not rescued by the timeout
        shed = sum(_closed_within(s, 0.01) for s in socks[:40])
        assert shed == 40  # the oldest idle connections made room
    finally:
        for s in socks:
            s.close()


def _upload(url: str, body: bytes, headers: dict[str, str], gate: threading.Barrier,
            out: list[int]) -> None:  # fmt: skip
    head = (
        "POST /v2/models/mse_loss/infer HTTP/1.1\r\nHost: x\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        + f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with raw(url, timeout=60) as sock:
        sock.sendall(head + body[:4096])
        gate.wait(60)  # every uploader has started
        time.sleep(0.5)
        if select.select([sock], [], [], 0)[0]:  # answered before the body was read
            out.append(_status(_answer(sock)))
            return
        try:
            sock.sendall(body[4096:])
        except (BrokenPipeError, ConnectionResetError):
            out.append(-1)
            return
        out.append(_status(_answer(sock)))


def test_bodies_in_flight_stay_under_the_budget(served: Served) -> None:
    n = 4 * 1024 * 1024 - 64  # two float32 tensors: a 32 MiB body
    x = np.ones(n, np.float32)
    body, headers = binary_body({"input": x, "target": x})
    clients = 12  # 384 MiB attempted against a 32 MiB budget... each body alone fills it
    before = rss(served.pid)
    gate = threading.Barrier(clients)
    out: list[int] = []
    threads = [
        threading.Thread(target=_upload, args=(served.url, body, headers, gate, out))
        for _ in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert out.count(200) >= 1 and out.count(200) <= BUDGET // len(body)
    assert out.count(503) == clients - out.count(200), out
    assert peak_rss(served.pid) - before < BUDGET + 200 * 1024 * 1024


def test_refusal_carries_retry_after_and_metrics_show_bytes_in_flight(served: Served) -> None:
    size = BUDGET // 2 + 1024
    with raw(served.url) as holder:
        holder.sendall(
            b"POST /v1/losses/mse_loss/evaluate HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n[" % size
        )
        time.sleep(0.3)
        metrics = httpx.get(f"{served.url}/metrics", timeout=10).text
        value = re.search(r"^lossreg_request_body_bytes_in_flight (\S+)$", metrics, re.M)
        assert value is not None and float(value.group(1)) == size
        r = httpx.post(
            f"{served.url}/v1/losses/mse_loss/evaluate",
            content=b"[" + b" " * size,
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        assert r.status_code == 503 and r.json()["code"] == "server_busy", r.text[:200]
        assert int(r.headers["Retry-After"]) >= 1
    deadline = time.monotonic() + 10  # the holder's disconnect gives its reservation back
    while True:
        metrics = httpx.get(f"{served.url}/metrics", timeout=10).text
        if re.search(r"^lossreg_request_body_bytes_in_flight 0\.0$", metrics, re.M):
            break
        assert time.monotonic() < deadline, "the reservation was never given back"
        time.sleep(0.1)


def test_at_the_cap_with_every_connection_computing_a_new_one_gets_503() -> None:
    """Nothing to shed (every connection waits on the server): the newcomer is refused with a
    503 at once instead of queueing beyond the descriptor budget; once the work ends, room."""
    RELEASE.clear()
    settings = FaultSettings(device="cpu", log_level="critical", max_connections=3)
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="critical",
        access_log=False, **uvicorn_options(settings, in_process=True),
    )  # fmt: skip
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    socks: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        body = b'{"inputs": {"input": [1.0]}}'
        for _ in range(3):  # three requests computing (hanging) hold every connection
            sock = raw(url)
            sock.sendall(
                b"POST /v1/losses/hanging_loss/evaluate HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            socks.append(sock)
        time.sleep(0.3)
        with raw(url) as late:
            late.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _status(_answer(late)) == 503
    finally:
        RELEASE.set()
        for sock in socks:
            sock.close()
    time.sleep(0.3)
    assert httpx.get(f"{url}/v2/health/live", timeout=10).status_code == 200
    server.should_exit = True
    thread.join(15)


def test_a_slow_upload_cannot_sit_on_the_budget(served: Served) -> None:
    """A client declares most of the budget and sends a few bytes: when a real request needs
    the room, the slow one gives way (503) instead of the real one being refused."""
    with raw(served.url) as slow:
        slow.sendall(
            b"POST /v1/losses/mse_loss/evaluate HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n[" % (BUDGET - 1024)
        )
        time.sleep(1.3)  # slower than LOSSREG_CLIENT_BODY_MIN_RATE for over a second
        n = 1024 * 1024
        x = np.linspace(-1, 1, n, dtype=np.float32)
        body, headers = binary_body({"input": x, "target": np.zeros(n, np.float32)})
        r = httpx.post(
            f"{served.url}/v2/models/mse_loss/infer",
            content=body,
            headers={**headers, "Content-Type": "application/octet-stream"},
            timeout=30,
        )
        assert r.status_code == 200, r.text[:300]
        slow.sendall(b" ")
        assert _status(_answer(slow)) == 503
