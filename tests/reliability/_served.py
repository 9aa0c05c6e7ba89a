"""A real ``lossreg serve`` process (the CLI, as deployed) for tests of how connections enter.

The in-thread servers of the other tests build their own `uvicorn.Config`; these tests need
what the CLI configures (the guarded protocol, timeouts, worker processes), so they start it.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from benchmarks._procs import peak_rss, rss
from tests.support.server import free_port

__all__ = ["Served", "children", "lossreg_serve", "peak_rss", "raw", "rss"]


@dataclass
class Served:
    url: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid


def _limit_fds(nofile: int | None) -> None:
    if nofile is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))


@contextlib.contextmanager
def lossreg_serve(
    env: dict[str, str], *, workers: int = 1, nofile: int | None = None, startup_s: float = 90
) -> Iterator[Served]:
    """Run ``lossreg serve`` on a free port with ``LOSSREG_*`` ``env``; stop it afterwards."""
    port = free_port()
    full_env = {
        **os.environ,
        "LOSSREG_DEVICE": "cpu",
        "LOSSREG_LOG_LEVEL": "warning",
        "LOSSREG_DISABLE_PLUGIN_AUTOLOAD": "true",
        **env,
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lossreg_service.cli",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],  # fmt: skip
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: _limit_fds(nofile),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + startup_s
    try:
        while True:
            assert process.poll() is None, "lossreg serve exited at start-up"
            assert time.monotonic() < deadline, "lossreg serve did not start"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield Served(url, port, process)
    finally:
        for pid in children(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
        process.wait(10)


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.append(int(entry))
    return out


def raw(url: str, timeout: float = 10) -> socket.socket:
    """A fresh TCP connection to the server."""
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)
