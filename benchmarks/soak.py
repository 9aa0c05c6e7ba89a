"""Soak test: concurrent mixed requests against a lossreg server, every answer checked.

    python benchmarks/soak.py --duration 300              # starts its own server on 127.0.0.1
    python benchmarks/soak.py --url http://host:8000 --pid 1234 --duration 60
    python benchmarks/soak.py --duration 60 --hostile --workers 2   # with attackers beside

For ``--duration`` seconds, ``--concurrency`` clients send a weighted mix of requests: small
KServe v2 binary and JSON requests and /v1 JSON evaluations and compositions over several losses,
16 MB binary requests, and invalid ones (unknown loss, mismatched shapes, malformed JSON, NaN
inputs, and a gzip bomb when the script runs the server). Every expected value and gradient was
computed beforehand with plain torch; every answer is compared with it, and every invalid request
must get its own 4xx. The report gives requests, answers by status, p50/p99 latency per kind of
request, and the server's RSS over time. The exit status is 1 on any wrong answer, unexpected
status, 5xx or transport error (0 otherwise), so CI can run a short version.

``--hostile`` adds the attackers of ``soak_hostile.py`` (slow heads and bodies, idle bursts,
oversized headers and names) and a health prober; ``--workers N`` runs the started server with N
worker processes. After either, every worker's ``/metrics`` must be back at rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from soak_cases import Case, build_cases
from soak_hostile import health_prober, metrics_at_rest, start_attackers


@dataclasses.dataclass
class Tally:
    """What the clients saw; shared by the client threads under a lock."""

    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    statuses: Counter[str] = dataclasses.field(default_factory=Counter)
    latencies: dict[str, list[float]] = dataclasses.field(default_factory=lambda: defaultdict(list))
    failures: list[str] = dataclasses.field(default_factory=list)
    per_case: Counter[str] = dataclasses.field(default_factory=Counter)

    def record(self, case: Case, status: str, seconds: float, failure: str | None) -> None:
        with self.lock:
            self.statuses[status] += 1
            self.per_case[case.name] += 1
            self.latencies[case.kind].append(seconds)
            if failure is not None and len(self.failures) < 50:
                self.failures.append(f"{case.name}: {failure}")


@dataclasses.dataclass
class _HostileCase:
    """What `Tally.record` needs of a case, for an attacker."""

    name: str
    kind: str = "hostile"


def client_loop(url: str, cases: list[Case], deadline: float, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    weights = [c.weight for c in cases]
    with httpx.Client(base_url=url, timeout=120) as http:
        while time.monotonic() < deadline:
            case = rng.choices(cases, weights)[0]
            start = time.perf_counter()
            try:
                r = http.post(case.path, content=case.body, headers=case.headers)
            except httpx.HTTPError as exc:
                tally.record(case, "transport", time.perf_counter() - start, repr(exc))
                continue
            seconds = time.perf_counter() - start
            failure = None
            if r.status_code != case.status:
                failure = f"status {r.status_code}, expected {case.status}: {r.text[:200]}"
            else:
                try:
                    case.check(r)
                except (AssertionError, KeyError, ValueError) as exc:
                    failure = f"wrong answer: {str(exc)[:300]}"
            tally.record(case, str(r.status_code), seconds, failure)


def _one_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def rss_mb(pid: int) -> float | None:
    """The resident memory of ``pid`` and its worker processes together."""
    values = [_one_rss_mb(p) for p in [pid, *_children(pid)]]
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str]:
    """A server process on a free port of 127.0.0.1, ready to serve."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "LOSSREG_DEVICE": args.device,
        "LOSSREG_LOG_LEVEL": "warning",
        "LOSSREG_MAX_REQUEST_BYTES": str(args.cap_mb * 1024 * 1024),
        "LOSSREG_CLIENT_HEADER_TIMEOUT_S": str(args.client_timeout),
        "LOSSREG_CLIENT_BODY_TIMEOUT_S": str(args.client_timeout),
    }
    # `lossreg serve`, as deployed: its connection limits and timeouts, and its worker processes
    command = [sys.executable, "-m", "lossreg_service.cli", "serve", "--host", "127.0.0.1",
               "--port", str(port), "--workers", str(args.workers)]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with status {process.returncode}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not turn ready within 120 s")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else float("nan")


def run(args: argparse.Namespace) -> dict[str, Any]:
    process = None
    url, pid = args.url, args.pid
    if url is None:
        process, url = start_server(args)
        pid = process.pid
    try:
        cases = build_cases(args.big_mb, bomb=process is not None, seed=args.seed)
        tally = Tally()
        start = time.monotonic()
        deadline = start + args.duration
        rss: list[tuple[float, float]] = []
        clients = [
            threading.Thread(target=client_loop, args=(url, cases, deadline, tally, args.seed + i))
            for i in range(args.concurrency)
        ]
        health: list[float] = []
        health_errors: list[str] = []
        if args.hostile:
            limits = {"header": args.client_timeout, "body": args.client_timeout}

            def record(name: str, status: str, seconds: float, failure: str | None) -> None:
                tally.record(_HostileCase(name), status, seconds, failure)

            clients += start_attackers(url, limits, deadline, record)
            clients.append(
                threading.Thread(target=health_prober, args=(url, deadline, health, health_errors))
            )
        for client in clients:
            client.start()
        while any(c.is_alive() for c in clients):
            if pid is not None and (value := rss_mb(pid)) is not None:
                rss.append((round(time.monotonic() - start, 1), round(value, 1)))
            for client in clients:
                client.join(timeout=args.sample_every / len(clients))
        elapsed = time.monotonic() - start
        if args.hostile or args.workers > 1:
            time.sleep(1.0)  # the last attackers' connections close
            tally.failures.extend(metrics_at_rest(url))
        tally.failures.extend(health_errors[:10])
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
    total = sum(tally.statuses.values())
    server_errors = sum(n for s, n in tally.statuses.items() if s.startswith("5"))
    hostile = {
        "health_ms": {
            "n": len(health),
            "p50": round(percentile(health, 50), 1),
            "p99": round(percentile(health, 99), 1),
            "max": round(max(health, default=float("nan")) * 1000, 1),
        }
    }
    return {
        **(hostile if args.hostile else {}),
        "workers": args.workers,
        "url": url,
        "duration_s": round(elapsed, 1),
        "concurrency": args.concurrency,
        "requests": total,
        "requests_per_s": round(total / elapsed, 1),
        "statuses": dict(sorted(tally.statuses.items())),
        "per_case": dict(sorted(tally.per_case.items())),
        "latency_ms": {
            kind: {
                "n": len(v),
                "p50": round(percentile(v, 50), 1),
                "p99": round(percentile(v, 99), 1),
                "max": round(max(v) * 1000, 1),
            }
            for kind, v in sorted(tally.latencies.items())
        },
        "rss_mb": rss,
        "rss_growth_mb": round(rss[-1][1] - rss[min(len(rss) - 1, 2)][1], 1) if rss else None,
        "server_errors": server_errors,
        "failures": tally.failures,
        "ok": not tally.failures and server_errors == 0,
    }


def print_report(report: dict[str, Any]) -> None:
    print(
        f"{report['requests']} requests in {report['duration_s']} s "
        f"({report['requests_per_s']}/s, {report['concurrency']} clients) against {report['url']}"
    )
    print("answers by status: " + ", ".join(f"{s}: {n}" for s, n in report["statuses"].items()))
    for kind, lat in report["latency_ms"].items():
        print(
            f"  {kind:8s} n={lat['n']:6d}  p50={lat['p50']:8.1f} ms  p99={lat['p99']:8.1f} ms"
            f"  max={lat['max']:8.1f} ms"
        )
    if report["rss_mb"]:
        series = report["rss_mb"]
        step = max(1, len(series) // 12)
        print("server RSS (s, MB): " + ", ".join(f"{t:g}: {m:g}" for t, m in series[::step]))
        print(f"RSS growth after warm-up: {report['rss_growth_mb']} MB")
    if "health_ms" in report:
        h = report["health_ms"]
        print(
            f"health under attack: n={h['n']} p50={h['p50']} ms p99={h['p99']} ms max={h['max']} ms"
        )
    for failure in report["failures"]:
        print(f"FAIL {failure}")
    print("OK: no wrong answer, no 5xx" if report["ok"] else "FAILED")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server (default: start one on 127.0.0.1)")
    parser.add_argument("--pid", type=int, help="that server's process id, to sample its RSS")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds to run")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients")
    parser.add_argument("--big-mb", type=float, default=16.0, help="size of the big requests")
    parser.add_argument("--cap-mb", type=int, default=64, help="body cap of the started server")
    parser.add_argument("--device", default="cpu", help="LOSSREG_DEVICE of the started server")
    parser.add_argument("--sample-every", type=float, default=2.0, help="RSS sampling, seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hostile", action="store_true", help="add attackers (soak_hostile.py)")
    parser.add_argument("--workers", type=int, default=1, help="workers of the started server")
    parser.add_argument(
        "--client-timeout", type=float, default=3.0, help="header/body timeouts of the server"
    )
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    report = run(args)
    print_report(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
