"""Load generation that measures the server, not itself.

``wrk`` (C, epoll; ``apt-get install wrk``) POSTs one pre-built body over N keep-alive
connections; a small Lua script sets the body and headers. Without wrk, the fallback is this
module's own generator: worker processes, each driving its share of the connections with raw
non-blocking sockets and a pre-built request (no HTTP library in the loop). Both report
requests/s and latency percentiles.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import re
import selectors
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["LoadResult", "have_wrk", "run_load"]

_LUA = """\
wrk.method = "POST"
local f = io.open(os.getenv("LOSSREG_BENCH_BODY"), "rb")
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = os.getenv("LOSSREG_BENCH_CONTENT_TYPE")
local hl = os.getenv("LOSSREG_BENCH_HEADER_LENGTH")
if hl ~= nil and hl ~= "" then wrk.headers["Inference-Header-Content-Length"] = hl end
"""


@dataclasses.dataclass
class LoadResult:
    """Throughput and latency of one load run."""

    tool: str
    connections: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def run_load(
    url: str,
    body: bytes,
    *,
    connections: int,
    seconds: float,
    header_length: int | None = None,
    content_type: str = "application/octet-stream",
    tool: str = "auto",
) -> LoadResult:
    """POST ``body`` to ``url`` over ``connections`` keep-alive connections for ``seconds``."""
    if tool == "wrk" or (tool == "auto" and have_wrk()):
        return _wrk(url, body, connections, seconds, header_length, content_type)
    return _python(url, body, connections, seconds, header_length, content_type)


# -- wrk ----------------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _wrk(
    url: str,
    body: bytes,
    connections: int,
    seconds: float,
    header_length: int | None,
    content_type: str,
) -> LoadResult:
    with tempfile.TemporaryDirectory() as tmp:
        script, data = Path(tmp, "post.lua"), Path(tmp, "body.bin")
        script.write_text(_LUA)
        data.write_bytes(body)
        env = {
            **os.environ,
            "LOSSREG_BENCH_BODY": str(data),
            "LOSSREG_BENCH_CONTENT_TYPE": content_type,
            "LOSSREG_BENCH_HEADER_LENGTH": "" if header_length is None else str(header_length),
        }
        threads = min(connections, 2)
        duration = max(1, round(seconds))  # wrk takes whole seconds
        argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
        out = subprocess.run(
            [*argv, "-s", str(script), url], env=env, capture_output=True, text=True, check=True
        ).stdout
    requests = int(re.search(r"(\d+) requests in ([\d.]+)(\w+)", out).group(1))  # type: ignore[union-attr]
    elapsed = re.search(r"requests in ([\d.]+)(us|ms|s|m)", out)
    assert elapsed is not None
    took = _ms(elapsed.group(1) + elapsed.group(2)) / 1e3
    p50 = re.search(r"\s50%\s+(\S+)", out)
    p99 = re.search(r"\s99%\s+(\S+)", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    errors = int(bad.group(1)) if bad else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return LoadResult(
        "wrk",
        connections,
        requests,
        took,
        _ms(p50.group(1)) if p50 else float("nan"),
        _ms(p99.group(1)) if p99 else float("nan"),
        errors,
    )


# -- the Python fallback ------------------------------------------------------------------------


def _request_bytes(url: str, body: bytes, header_length: int | None, content_type: str) -> bytes:
    parts = urlsplit(url)
    head = [
        f"POST {parts.path or '/'} HTTP/1.1",
        f"Host: {parts.netloc}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
    ]
    if header_length is not None:
        head.append(f"Inference-Header-Content-Length: {header_length}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _read_response(buffer: bytearray) -> int | None:
    """Bytes taken by the first complete response in ``buffer`` (Content-Length bodies)."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).lower()
    match = re.search(rb"content-length:\s*(\d+)", head)
    size = end + 4 + (int(match.group(1)) if match else 0)
    return size if len(buffer) >= size else None


def _worker(
    address: tuple[str, int], request: bytes, connections: int, seconds: float, queue: mp.Queue
) -> None:
    selector = selectors.DefaultSelector()
    for _ in range(connections):
        sock = socket.create_connection(address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        state = {"buffer": bytearray(), "start": time.perf_counter()}
        sock.sendall(request)
        selector.register(sock, selectors.EVENT_READ, state)
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for key, _ in selector.select(timeout=0.1):
            sock, state = key.fileobj, key.data
            chunk = sock.recv(1 << 20)  # type: ignore[union-attr]
            if not chunk:
                selector.unregister(sock)
                errors += 1
                continue
            state["buffer"] += chunk
            size = _read_response(state["buffer"])
            if size is None:
                continue
            if not state["buffer"].startswith(b"HTTP/1.1 2"):
                errors += 1
            del state["buffer"][:size]
            now = time.perf_counter()
            latencies.append(now - state["start"])
            state["start"] = now
            sock.setblocking(True)
            sock.sendall(request)  # type: ignore[union-attr]
            sock.setblocking(False)
    queue.put((latencies, errors, time.perf_counter() - start))


def _python(
    url: str,
    body: bytes,
    connections: int,
    seconds: float,
    header_length: int | None,
    content_type: str,
) -> LoadResult:
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    request = _request_bytes(url, body, header_length, content_type)
    processes = min(connections, max(1, (os.cpu_count() or 2) // 2))
    shares = [connections // processes + (i < connections % processes) for i in range(processes)]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    workers = [
        ctx.Process(target=_worker, args=(address, request, share, seconds, queue))
        for share in shares
    ]
    for worker in workers:
        worker.start()
    results = [queue.get() for _ in workers]
    for worker in workers:
        worker.join()
    latencies = sorted(x for r in results for x in r[0])
    took = max(r[2] for r in results)

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3 if latencies else 0

    return LoadResult(
        "python", connections, len(latencies), took, pct(0.5), pct(0.99), sum(r[1] for r in results)
    )
