"""The issues' targets, checked against one run's numbers (ratios measured side by side).

Issue 8's (the client against in-process, shared memory, memory) and issue 18's (the default
server against the best tuned one, small-request overhead, throughput, the peers, the access
log's cost, the scaling curve). A target whose numbers the run lacks is left out."""

from __future__ import annotations

from typing import Any

__all__ = ["evaluate"]

BIG = "CE 4096x1000"
SMALL = "CE 32x10"
PEERS = ("baseline", "litserve", "ray_serve", "pytriton")
PEER_ROWS = ("LitServe", "Ray Serve", "PyTriton")
DEFAULT_ROW = "default (lossreg serve)"
TUNED_ROWS = ("tuned, batching", "tuned, no batching")
LOG_OFF_ROW = "default, LOSSREG_ACCESS_LOG=false"


def _median(results: dict[str, Any], case: str, method: str) -> float | None:
    entry = results.get("latency", {}).get(case, {}).get("methods", {}).get(method, {})
    return entry.get("median_ms")


def _target(name: str, measured: str, goal: str, met: bool | None) -> dict[str, Any]:
    return {"name": name, "measured": measured, "goal": goal, "met": met}


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured value; ``met`` is None when the run lacks the numbers."""
    targets = []
    inproc, client = _median(results, BIG, "inprocess"), _median(results, BIG, "client")
    if inproc and client:
        ratio = client / inproc
        targets.append(_target("16 MB CE via Python client / in-process", f"{ratio:.2f}x",
                               "<= 3x", ratio <= 3))  # fmt: skip
    baseline = _median(results, BIG, "baseline")
    if baseline and client:
        speedup = baseline / client
        targets.append(_target("16 MB CE: pydantic-JSON baseline / Python client",
                               f"{speedup:.0f}x", ">= 200x", speedup >= 200))  # fmt: skip
    shm = _median(results, BIG, "shm")
    if inproc and shm:
        ratio = shm / inproc
        targets.append(_target("16 MB CE via system shared memory / in-process", f"{ratio:.2f}x",
                               "<= 1.5x", ratio <= 1.5))  # fmt: skip
    floor = results.get("floor_ms")
    small_client = _median(results, SMALL, "client")
    small_inproc = _median(results, SMALL, "inprocess")
    if floor and small_client and small_inproc:
        overhead = (small_client - small_inproc) / floor
        targets.append(_target("CE 32x10 per-request overhead (client - in-process) / floor",
                               f"{overhead:.2f}x", "<= 1.3x", overhead <= 1.3))  # fmt: skip
    targets += issue_18(results)
    gpu = {row["server"]: row for row in results.get("gpu", [])}
    batched, alone = gpu.get("lossreg cuda, batching (vmap)"), gpu.get("lossreg cuda, no batching")
    if batched and alone and alone["rps"]:
        gain = batched["rps"] / alone["rps"]
        targets.append(
            _target("GPU: 256 concurrent CE 32x10, batched / unbatched req/s", f"{gain:.1f}x",
                    ">= 10x", gain >= 10)
        )  # fmt: skip
    memory = results.get("memory")
    if memory:
        per = memory["peak per in-flight request / payload"]
        targets.append(_target("peak RSS per in-flight 16 MB request / payload", f"{per:.2f}x",
                               "<= 4x", per <= 4))  # fmt: skip
        growth = memory["growth 100 -> many (MB)"]
        targets.append(_target(f"RSS growth, 100 -> {memory['small requests']} requests",
                               f"{growth:.1f} MB", "~0 (< 5 MB)", growth < 5))  # fmt: skip
    return targets


def _rps(results: dict[str, Any], server: str, connections: int = 16) -> float | None:
    """Requests/s of one concurrency row over HTTP, or None (absent, or with errors)."""
    for row in results.get("concurrency", []):
        if row["server"] == server and row["connections"] == connections:
            return float(row["rps"]) if row["errors"] == 0 else None
    return None


def issue_18(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 18's targets: the default as fast as the best tuned server, small requests near
    the floor, 5,000 req/s, well ahead of the peers, the access log's cost, linear scaling."""
    out = []
    default, tuned = _median(results, BIG, "default"), _median(results, BIG, "tritonclient")
    if default and tuned:
        ratio = default / tuned
        out.append(_target("16 MB CE, tritonclient: default / tuned server", f"{ratio:.2f}x",
                           "<= 1.10x", ratio <= 1.10))  # fmt: skip
    default_rps = _rps(results, DEFAULT_ROW)
    tuned_rps = [r for r in (_rps(results, t) for t in TUNED_ROWS) if r]
    if default_rps and tuned_rps:
        ratio = default_rps / max(tuned_rps)
        out.append(_target("CE 32x10 req/s, 16 connections: default / best tuned",
                           f"{ratio:.2f}x", ">= 0.90x", ratio >= 0.90))  # fmt: skip
    floor = results.get("floor_ms")
    small = _median(results, SMALL, "default_client")
    small_inproc = _median(results, SMALL, "inprocess")
    if floor and small and small_inproc:
        overhead = (small - small_inproc) / floor
        out.append(_target("CE 32x10 overhead, default server (client - in-process) / floor",
                           f"{overhead:.2f}x", "<= 2x", overhead <= 2))  # fmt: skip
    if DEFAULT_ROW in {row["server"] for row in results.get("concurrency", [])}:
        rps = default_rps or 0.0
        out.append(_target("CE 32x10 req/s, 16 connections, default server", f"{rps:.0f}",
                           ">= 5000", rps >= 5000))  # fmt: skip
    peers = [m for m in (_median(results, BIG, p) for p in PEERS) if m]
    if default and peers:
        speedup = min(peers) / default
        out.append(_target("16 MB CE: best peer / default lossreg", f"{speedup:.1f}x",
                           ">= 5x", speedup >= 5))  # fmt: skip
    peer_rps = [r for r in (_rps(results, p) for p in PEER_ROWS) if r]
    if default_rps and peer_rps:
        gain = default_rps / max(peer_rps)
        out.append(_target("CE 32x10 req/s, 16 connections: default / best peer",
                           f"{gain:.1f}x", ">= 10x", gain >= 10))  # fmt: skip
    log_off = _rps(results, LOG_OFF_ROW)
    if default_rps and log_off:
        cost = 1 - default_rps / log_off
        out.append(_target("access log's cost: 1 - req/s with it / without", f"{cost:.0%}",
                           "<= 10%", cost <= 0.10))  # fmt: skip
    slopes = results.get("scaling", {}).get("per_mb_ms", {})
    if slopes.get("client") and slopes.get("tcp_floor"):
        ratio = slopes["client"] / slopes["tcp_floor"]
        out.append(_target("scaling, 1-64 MB: ms per MB, default client / raw TCP floor",
                           f"{ratio:.2f}x", "<= 2x", ratio <= 2))  # fmt: skip
    return out
