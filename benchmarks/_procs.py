"""Servers under test, each in its own process, and what the benchmark reads about them.

Every server runs as a separate process (uvicorn with uvloop and httptools, one worker, no
access log), so the client's work and the server's never share a GIL, and the numbers are what
a deployment sees on the same machine. Memory is read from ``/proc/<pid>/status``: ``VmRSS``
now and ``VmHWM``, the peak since start (or since `reset_peak`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

__all__ = ["Server", "free_port", "launch", "lossreg_server", "peak_rss", "reset_peak", "rss"]

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running server process: its URL and pid (the process whose memory is read)."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    uds: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid


def _status(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` memory field in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def rss(pid: int) -> int:
    """Resident memory now, in bytes."""
    return _status(pid, "VmRSS")


def peak_rss(pid: int) -> int:
    """Peak resident memory since start or the last `reset_peak`, in bytes."""
    return _status(pid, "VmHWM")


def reset_peak(pid: int) -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0; needs to own the process)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _wait_ready(server: Server, path: str | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    if path is None:  # not HTTP: wait until it accepts connections
        port = int(server.url.rsplit(":", 1)[1])
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"{server.name} was not ready within {timeout} s")
    transport = httpx.HTTPTransport(uds=server.uds) if server.uds else None
    with httpx.Client(transport=transport, timeout=2) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"{server.name} exited with {server.process.returncode}")
            try:
                if client.get(server.url + path).status_code < 500:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{server.name} was not ready within {timeout} s")


@contextlib.contextmanager
def launch(
    name: str,
    argv: list[str],
    *,
    port: int,
    ready_path: str | None,
    env: Mapping[str, str] | None = None,
    uds: str | None = None,
    timeout: float = 90.0,
) -> Iterator[Server]:
    """Start ``argv`` (a server listening on ``port``), wait for ``ready_path``, stop at exit."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    process = subprocess.Popen(
        argv, cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL, start_new_session=True
    )
    server = Server(name, f"http://127.0.0.1:{port}", process, uds=uds, env=dict(env or {}))
    try:
        _wait_ready(server, ready_path, timeout)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def uvicorn_argv(
    app: str, port: int, *, factory: bool = False, uds: str | None = None, workers: int = 1
) -> list[str]:
    argv = [sys.executable, "-m", "uvicorn", app, "--log-level", "warning", "--no-access-log"]
    argv += ["--factory"] if factory else []
    argv += ["--workers", str(workers)] if workers > 1 else []
    argv += ["--uds", uds] if uds else ["--host", "127.0.0.1", "--port", str(port)]
    return argv


def lossreg_server(
    settings: Mapping[str, str] | None = None, *, uds: str | None = None
) -> contextlib.AbstractContextManager[Server]:
    """lossreg as ``lossreg serve`` runs it, configured by ``LOSSREG_*`` variables (worker
    processes from ``LOSSREG_WORKERS``); its gRPC target is `grpc_target`."""
    port = free_port()
    env = {"LOSSREG_LOG_LEVEL": "warning", "LOSSREG_DEVICE": "cpu", **(settings or {})}
    env.setdefault("LOSSREG_GRPC_PORT", str(free_port()))  # its own: servers run side by side
    workers = int(env.get("LOSSREG_WORKERS", "1"))
    argv = uvicorn_argv(
        "lossreg_service.server:create_app", port, factory=True, uds=uds, workers=workers
    )
    return launch("lossreg", argv, port=port, ready_path="/v2/health/ready", env=env, uds=uds)


def grpc_target(server: Server) -> str:
    """``host:port`` of a lossreg server's gRPC service."""
    return f"127.0.0.1:{server.env['LOSSREG_GRPC_PORT']}"


def baseline_server(workers: int = 1) -> contextlib.AbstractContextManager[Server]:
    """The hand-written FastAPI app (pydantic nested lists, and the empty endpoint)."""
    port = free_port()
    argv = uvicorn_argv("benchmarks.apps.baseline:app", port, workers=workers)
    return launch("baseline", argv, port=port, ready_path="/docs")


def litserve_server() -> contextlib.AbstractContextManager[Server]:
    """LitServe serving the same function (needs the ``bench`` extra)."""
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.apps.litserve_app", str(port)]
    return launch("litserve", argv, port=port, ready_path="/health", timeout=120)


def echo_server() -> contextlib.AbstractContextManager[Server]:
    """The raw-TCP transport floor (no HTTP, no compute)."""
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.apps.echo", str(port)]
    return launch("tcp echo", argv, port=port, ready_path=None)
