"""The sync client's transport (`lossreg._transport.HTTPTransport`) against real sockets:
keep-alive, a server that closed a pooled connection, timeouts, chunked answers, Unix sockets,
and answer buffers that are recycled only once nothing views them."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn

from lossreg import Client, errors
from lossreg._transport import HTTPTransport
from lossreg_service.server import create_app
from lossreg_service.settings import Settings
from tests.support.server import serve


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serve(Settings(device="cpu", log_level="warning")) as base:
        yield base


def _raw_server(handle: Callable[[socket.socket], None]) -> tuple[str, Callable[[], None]]:
    """A TCP server on 127.0.0.1 running ``handle`` for each connection, in threads."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve_one(conn: socket.socket) -> None:
        with conn:  # closed however the handler ends
            try:
                handle(conn)
            except OSError:
                pass

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()
        listener.close()

    threading.Thread(target=loop, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", stop.set


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n")
         if line.lower().startswith(b"content-length")),
        0,
    )  # fmt: skip
    while len(body) < length:
        body += conn.recv(65536)
    return body


def test_keep_alive_reuses_one_connection(url: str) -> None:
    transport = HTTPTransport()
    with httpx.Client(transport=transport) as http:
        for _ in range(5):
            assert http.get(url + "/v2/health/live").json() == {"live": True}
        idle = [c for pool in transport._idle.values() for c in pool]
        assert len(idle) == 1
    assert transport._idle == {}  # closed with the client


def test_a_connection_the_server_closed_is_retried_on_a_fresh_one() -> None:
    def one_answer_then_close(conn: socket.socket) -> None:
        body = _read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        time.sleep(0.05)
        conn.close()  # without saying Connection: close

    base, stop = _raw_server(one_answer_then_close)
    try:
        with httpx.Client(transport=HTTPTransport()) as http:
            for i in range(3):
                time.sleep(0.1)  # the previous connection is closed by now
                assert http.post(base + "/", content=b"x%d" % i).content == b"x%d" % i
    finally:
        stop()


def test_a_server_that_never_answers_is_a_timeout() -> None:
    base, stop = _raw_server(lambda conn: (_read_request(conn), time.sleep(0.6)))
    try:
        with Client(base, timeout=0.3, retries=0) as client, pytest.raises(errors.TimeoutError):
            client.health()
    finally:
        stop()


def test_chunked_answers_and_chunked_bodies() -> None:
    def chunked(conn: socket.socket) -> None:
        data = b""
        while not data.endswith(b"0\r\n\r\n"):
            data += conn.recv(65536)
        payload = b"".join(data.partition(b"\r\n\r\n")[2].split(b"\r\n")[1::2])
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload))  # fmt: skip
        conn.close()

    base, stop = _raw_server(chunked)
    try:
        with httpx.Client(transport=HTTPTransport()) as http:
            answer = http.post(base + "/", content=iter([b"hello ", b"world"]))
            assert answer.content == b"abchello world"
    finally:
        stop()


def test_unix_socket() -> None:
    path = str(Path(tempfile.mkdtemp()) / "lossreg.sock")
    app = create_app(Settings(device="cpu", log_level="warning"))
    server = uvicorn.Server(uvicorn.Config(app, uds=path, log_level="warning", lifespan="on"))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        with Client("http://localhost", transport=HTTPTransport(uds=path)) as client:
            result = client.evaluate("mse_loss", torch.ones(3), torch.zeros(3))
            assert result.item() == 1.0
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_answer_buffers_are_reused_only_when_nothing_views_them(url: str) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(512, 1000, generator=g), torch.randint(0, 1000, (512,), generator=g)
    with Client(url) as client:
        held = [client.evaluate("cross_entropy", x, y, grad=["input"]) for _ in range(2)]
        pointers = {r.grads["input"].data_ptr() for r in held}
        for _ in range(4):  # dropped at once: their buffers may be reused
            result = client.evaluate("cross_entropy", x, y, grad=["input"])
            assert result.grads["input"].data_ptr() not in pointers
            assert torch.equal(result.grads["input"], held[0].grads["input"])
        assert torch.equal(held[0].grads["input"], held[1].grads["input"])  # never overwritten
