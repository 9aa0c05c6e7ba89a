"""Servers under test, each in its own process, and what the benchmark reads about them.

Every server runs as a separate process (uvicorn with uvloop and httptools, one worker, no
access log), so the client's work and the server's never share a GIL, and the numbers are what
a deployment sees on the same machine. Memory is read from ``/proc/<pid>/status``: ``VmRSS``
now and ``VmHWM``, the peak since start (or since `reset_peak`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "Server", "default_server", "free_port", "launch", "lossreg_server", "peak_rss",
    "pytriton_server", "ray_serve_server", "reset_peak", "rss", "start_all", "tree_pids",
]  # fmt: skip

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


def tree_pids(pid: int) -> list[int]:
    """``pid`` and every process below it (a supervisor and its workers)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by ``pid`` and every process below it; workers
    that exited are not counted, so read it around a measure, not across restarts."""
    ticks = 0
    for member in tree_pids(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _wait_ready(server: Server, path: str | None, timeout: float, exact: bool = False) -> None:
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
                status = client.get(server.url + path).status_code
                if status == 200 or (status < 500 and not exact):
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
    clean_env: bool = False,
    log: Path | None = None,
    ready_exact: bool = False,
    leader_only: bool = False,
) -> Iterator[Server]:
    """Start ``argv`` (a server listening on ``port``), wait for ``ready_path``, stop at exit.

    ``clean_env`` drops the caller's ``LOSSREG_*`` variables and ``OMP_WAIT_POLICY`` (the
    ``lossreg`` command sets its own): a server with no settings;
    ``log`` takes the server's stdout and stderr (its access log); ``ready_exact`` waits for a
    200, not any answer under 500; ``leader_only`` stops the server by its main process alone,
    so it can stop its helpers in order (PyTriton's shared-memory store, Ray's actors)."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not (clean_env and (k.startswith("LOSSREG_") or k == "OMP_WAIT_POLICY"))
    }
    full_env = {**base, "PYTHONUNBUFFERED": "1", **(env or {})}
    out = log.open("ab") if log else None
    process = subprocess.Popen(
        argv, cwd=ROOT, env=full_env, stdout=out or subprocess.DEVNULL,
        stderr=out, start_new_session=True,
    )  # fmt: skip
    server = Server(name, f"http://127.0.0.1:{port}", process, uds=uds, env=dict(env or {}))
    try:
        _wait_ready(server, ready_path, timeout, ready_exact)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            if leader_only:
                process.terminate()
            else:
                os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # what the leader left behind
        if out:
            out.close()


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


@contextlib.contextmanager
def default_server(
    settings: Mapping[str, str] | None = None, *, lossreg: str | None = None
) -> Iterator[Server]:
    """``lossreg serve`` exactly as the README starts it, with no ``LOSSREG_*`` settings (only
    its ports, as flags, so servers run side by side; ``settings`` for the variants that
    change one); its output (the access log) goes to a file, as a container's would.
    ``lossreg``: another install's executable (default: this interpreter's)."""
    port, grpc_port = free_port(), free_port()
    lossreg = lossreg or str(Path(sys.executable).with_name("lossreg"))
    argv = [lossreg, "serve", "--port", str(port), "--grpc-port", str(grpc_port)]
    with tempfile.TemporaryDirectory(prefix="lossreg-bench-") as tmp:
        log = Path(tmp, "serve.log")
        with launch("lossreg serve", argv, port=port, ready_path="/v2/health/ready",
                    env=settings, clean_env=True, log=log) as server:  # fmt: skip
            server.env["LOSSREG_GRPC_PORT"] = str(grpc_port)
            _wait_workers(server)
            yield server


def _wait_workers(server: Server, timeout: float = 90) -> None:
    """Until every worker of a multi-worker server has loaded (each answers readiness)."""
    deadline = time.monotonic() + timeout
    workers = int(server.env.get("LOSSREG_WORKERS", "0")) or len(os.sched_getaffinity(0))
    while time.monotonic() < deadline and len(tree_pids(server.pid)) < 1 + workers:
        time.sleep(0.2)
    with httpx.Client(timeout=5) as client:  # new connections land on each worker in turn
        ok = 0
        while time.monotonic() < deadline and ok < 4 * workers:
            ready = client.get(server.url + "/v2/health/ready", headers={"Connection": "close"})
            ok = ok + 1 if ready.status_code == 200 else 0


@contextlib.contextmanager
def start_all(
    servers: Mapping[str, contextlib.AbstractContextManager[Server] | None],
) -> Iterator[dict[str, Server]]:
    """Start several servers at once (their start-ups, Ray's and Triton's tens of seconds,
    overlap instead of adding up); ``None`` entries are skipped. All stop at exit, and if one
    fails to start, those already up are stopped before the error goes on."""
    chosen = {name: cm for name, cm in servers.items() if cm is not None}
    with contextlib.ExitStack() as stack:
        with concurrent.futures.ThreadPoolExecutor(max(1, len(chosen))) as pool:
            futures = {name: pool.submit(cm.__enter__) for name, cm in chosen.items()}
            concurrent.futures.wait(futures.values())
        started: dict[str, Server] = {}
        for name, future in futures.items():
            if future.exception() is None:
                started[name] = future.result()
                stack.push(chosen[name].__exit__)
        for future in futures.values():
            if future.exception() is not None:
                raise future.exception()  # type: ignore[misc]
        yield started


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


@contextlib.contextmanager
def _quiet(
    name: str, argv: list[str], port: int, ready_path: str, **options: Any
) -> Iterator[Server]:
    """`launch` with the server's chatty output (Ray's, Triton's) in a file, not the console."""
    with tempfile.TemporaryDirectory(prefix="lossreg-bench-") as tmp:
        log = Path(tmp, f"{name.replace(' ', '-')}.log")
        with launch(name, argv, port=port, ready_path=ready_path, log=log, **options) as server:
            yield server


def ray_serve_server() -> contextlib.AbstractContextManager[Server]:
    """Ray Serve with a FastAPI ingress taking raw bytes (``ray[serve]``)."""
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.apps.ray_serve_app", str(port)]
    return _quiet("ray serve", argv, port, "/ce?shape=0", timeout=180, leader_only=True)


def _mapped_shm(pids: list[int]) -> set[Path]:
    """The ``/dev/shm`` files these processes have mapped."""
    found = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        for line in maps.splitlines():
            path = line.split(maxsplit=5)[-1]
            if path.startswith("/dev/shm/"):
                found.add(Path(path.removesuffix(" (deleted)")))
    return found


@contextlib.contextmanager
def pytriton_server() -> Iterator[Server]:
    """PyTriton: Triton's server with a Python callable and dynamic batching.

    Triton's Python stub links the system's libpython of the same minor version; the
    interpreter's own library directory comes first so both sides are one Python build.
    PyTriton leaves its tensor store's shared-memory blocks behind when it stops: those its
    processes had mapped are removed after it."""
    with _pytriton() as server:
        try:
            yield server
        finally:
            leftovers = _mapped_shm(tree_pids(server.pid))
    for path in leftovers:
        path.unlink(missing_ok=True)


def _pytriton() -> contextlib.AbstractContextManager[Server]:
    http, grpc, metrics = free_port(), free_port(), free_port()
    app = "benchmarks.apps.pytriton_app"
    argv = [sys.executable, "-m", app, str(http), str(grpc), str(metrics)]
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    paths = [libdir, os.environ.get("LD_LIBRARY_PATH", "")]
    env = {"LD_LIBRARY_PATH": ":".join(p for p in paths if p)}
    return _quiet("pytriton", argv, http, "/v2/models/dice/ready", env=env, timeout=180,
                  ready_exact=True, leader_only=True)  # fmt: skip


def echo_server() -> contextlib.AbstractContextManager[Server]:
    """The raw-TCP transport floor (no HTTP, no compute)."""
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.apps.echo", str(port)]
    return launch("tcp echo", argv, port=port, ready_path=None)
