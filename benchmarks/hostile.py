"""Figures under hostile load (README, "Hostile load"): each starts ``lossreg serve`` afresh.

    python benchmarks/hostile.py uploads --clients 8 16 24 --mb 64 --budget-mb 256
    python benchmarks/hostile.py slow --clients 150 --client-timeout 60
    python benchmarks/hostile.py timeout --terms 64 --timeout-s 0.5

- ``uploads``: N clients upload an ``--mb`` MB binary request each, all at once; the server's peak
  RSS (VmHWM) and the answers by status, per N.
- ``slow``: N connections trickle a request head one byte a second and N more stay idle; the
  latency of ``/v2/health/live`` meanwhile, and how many were closed by the header timeout.
- ``timeout``: a composition that overruns ``--timeout-s`` gets its 504; the server's CPU
  seconds in the 3 s after it (a computation that went on would use about 1 per second).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from lossreg.protocol import encode_body, encode_tensor


@contextlib.contextmanager
def server(env: dict[str, str]) -> Iterator[tuple[str, int]]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    full = {**os.environ, "LOSSREG_DEVICE": "cpu", "LOSSREG_LOG_LEVEL": "warning", **env}
    command = [sys.executable, "-m", "lossreg_service.cli", "serve", "--port", str(port)]
    process = subprocess.Popen(command, env=full, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(30)


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=120)


def _answer_status(sock: socket.socket) -> str:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return "closed"
        data += chunk
    return data.split(b" ", 2)[1].decode()


def _upload_one(
    url: str,
    head: bytes,
    body: bytes,
    gate: threading.Barrier,
    lock: threading.Lock,
    statuses: Counter[str],
) -> None:
    with _connect(url) as sock:
        gate.wait()
        try:
            sock.sendall(head)
            view = memoryview(body)
            for i in range(0, len(view), 1 << 20):
                sock.sendall(view[i : i + (1 << 20)])
            status = _answer_status(sock)
        except (BrokenPipeError, ConnectionResetError):
            status = "reset"  # the server answered and closed before the end
            with contextlib.suppress(OSError):
                status = _answer_status(sock)
    with lock:
        statuses[status] += 1


def uploads(args: argparse.Namespace) -> dict[str, Any]:
    n = int(args.mb * 1024 * 1024 / 8)
    x = np.ones(n, np.float32)
    entries, buffers = [], []
    for name in ("input", "target"):
        entry, raw = encode_tensor(name, x, binary=True)
        entries.append(entry)
        buffers.append(raw)
    body, length = encode_body({"inputs": entries}, buffers)
    head = (
        "POST /v2/models/mse_loss/infer HTTP/1.1\r\nHost: x\r\n"
        f"Inference-Header-Content-Length: {length}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    env = {"LOSSREG_MAX_BODY_BYTES_IN_FLIGHT": str(int(args.budget_mb * 1024 * 1024))}
    if args.budget_mb == 0:
        env = {}
    rows = []
    for clients in args.clients:
        with server(env) as (url, pid):
            base = _status_kb(pid, "VmRSS")
            statuses: Counter[str] = Counter()
            lock = threading.Lock()
            gate = threading.Barrier(clients)

            threads = [
                threading.Thread(target=_upload_one, args=(url, head, body, gate, lock, statuses))
                for _ in range(clients)
            ]
            start = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rows.append(
                {
                    "clients": clients,
                    "upload_mb": args.mb,
                    "seconds": round(time.monotonic() - start, 1),
                    "rss_before_mib": round(base / 1024),
                    "peak_rss_mib": round(_status_kb(pid, "VmHWM") / 1024),
                    "statuses": dict(statuses),
                }
            )
            print(rows[-1], flush=True)
    return {"budget_mb": args.budget_mb, "rows": rows}


def slow(args: argparse.Namespace) -> dict[str, Any]:
    env = {"LOSSREG_CLIENT_HEADER_TIMEOUT_S": str(args.client_timeout)}
    with server(env) as (url, _pid):
        stop = threading.Event()
        socks: list[socket.socket] = []

        def trickle(sock: socket.socket) -> None:
            head = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100_000
            with contextlib.suppress(OSError):
                for byte in head:
                    if stop.is_set():
                        return
                    sock.sendall(bytes([byte]))
                    time.sleep(1.0)

        for _ in range(args.clients):
            tricklers = _connect(url)
            socks.append(tricklers)
            threading.Thread(target=trickle, args=(tricklers,), daemon=True).start()
            socks.append(_connect(url))  # idle
        latencies = []
        end = time.monotonic() + args.client_timeout + 5
        with httpx.Client(base_url=url, timeout=30) as http:
            while time.monotonic() < end:
                start = time.perf_counter()
                assert http.get("/v2/health/live").status_code == 200
                latencies.append((time.perf_counter() - start) * 1000)
                time.sleep(0.1)
        stop.set()
        closed = 0
        for sock in socks:
            sock.setblocking(False)
            try:
                closed += sock.recv(1) == b""
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
            sock.close()
    return {
        "slow_connections": args.clients,
        "idle_connections": args.clients,
        "client_header_timeout_s": args.client_timeout,
        "health_ms": {
            "n": len(latencies),
            "p50": round(float(np.percentile(latencies, 50)), 1),
            "p99": round(float(np.percentile(latencies, 99)), 1),
            "max": round(max(latencies), 1),
        },
        "closed_after_timeout": closed,
        "of": len(socks),
    }


def timeout(args: argparse.Namespace) -> dict[str, Any]:
    import base64

    x = np.random.default_rng(0).standard_normal(args.elements).astype(np.float32)
    payload = {"dtype": "float32", "shape": [args.elements],
               "b64": base64.b64encode(x.tobytes()).decode()}  # fmt: skip
    body = {
        "terms": [{"loss": "mse_loss", "label": f"t{i}"} for i in range(args.terms)],
        "inputs": {"input": payload, "target": payload},
    }
    env = {"LOSSREG_COMPUTE_TIMEOUT_S": str(args.timeout_s)}
    with server(env) as (url, pid):
        start = time.monotonic()
        r = httpx.post(f"{url}/v1/evaluate", json=body, timeout=120)
        answered = time.monotonic() - start
        cpu0 = _cpu_s(pid)
        time.sleep(3.0)
        cpu_after = _cpu_s(pid) - cpu0
    return {
        "status": r.status_code,
        "answered_after_s": round(answered, 2),
        "terms": args.terms,
        "elements": args.elements,
        "server_cpu_s_in_3s_after": round(cpu_after, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", type=Path, help="also write the report here")
    p = sub.add_parser("uploads", parents=[common])
    p.add_argument("--clients", type=int, nargs="+", default=[8, 16, 24])
    p.add_argument("--mb", type=float, default=64)
    p.add_argument("--budget-mb", type=float, default=256, help="0: the automatic default")
    p = sub.add_parser("slow", parents=[common])
    p.add_argument("--clients", type=int, default=150)
    p.add_argument("--client-timeout", type=float, default=60)
    p = sub.add_parser("timeout", parents=[common])
    p.add_argument("--terms", type=int, default=64)
    p.add_argument("--elements", type=int, default=4_000_000)
    p.add_argument("--timeout-s", type=float, default=0.5)
    args = parser.parse_args(argv)
    report = {"uploads": uploads, "slow": slow, "timeout": timeout}[args.command](args)
    print(json.dumps(report, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
