"""Run a real uvicorn server for given `Settings` in a background thread (httpx's test style).

    with serve(Settings(api_keys=["k"])) as base_url:
        httpx.get(f"{base_url}/v2/health/ready")

The server binds 127.0.0.1 on a free port, is ready (``/v2/health/ready`` answers 200) when the
block starts, and is shut down cleanly when it ends. Reused by the server and client tests:
keep it stable.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import uvicorn
from fastapi import FastAPI

from lossreg_service.server import create_app
from lossreg_service.settings import Settings

__all__ = ["free_port", "serve", "wait_ready"]


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, deadline: float) -> None:
    """Poll ``GET /v2/health/ready`` until 200 (the registry loads after the port opens)."""
    while True:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not turn ready in time")
        time.sleep(0.02)


class _ThreadServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # signals belong to the main thread (pytest)
        pass


@contextlib.contextmanager
def serve(
    settings: Settings | None = None,
    *,
    app: FastAPI | None = None,
    startup_timeout: float = 60.0,
    ready: bool = True,
) -> Iterator[str]:
    """Yield the base URL (``http://127.0.0.1:<port>``) of a server running ``settings``.

    Args:
        settings: the app's settings (default: the environment's, quiet logs).
        app: an app already built (tests that add a route); ``settings`` is then ignored.
        startup_timeout: seconds to wait for the server to turn ready.
        ready: wait for ``/v2/health/ready`` (False: yield as soon as the port is open).
    """
    if app is None:
        app = create_app(settings or Settings(log_level="warning"))
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = _ThreadServer(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the test server failed to start (see its log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError(f"the test server did not start within {startup_timeout} s")
        time.sleep(0.01)
    url = f"http://127.0.0.1:{port}"
    try:
        if ready:
            wait_ready(url, deadline)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def gauge(http: httpx.Client, name: str) -> float:
    """A sample's value in ``GET /metrics`` (its first series; 0 when absent)."""
    for line in http.get("/metrics").text.splitlines():
        if line.startswith((name + "{", name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_for_gauge(http: httpx.Client, name: str, value: float, timeout: float = 10) -> None:
    """Until `gauge` reads ``value``; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while gauge(http, name) != value:
        assert time.monotonic() < deadline, f"{name} never reached {value}"
        time.sleep(0.02)
