"""The issue's targets, checked against one run's numbers (ratios measured side by side)."""

from __future__ import annotations

from typing import Any

__all__ = ["evaluate"]

BIG = "CE 4096x1000"
SMALL = "CE 32x10"


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
    for row in results.get("concurrency", []):
        if row["server"] == "lossreg, batching" and row["connections"] == 16:
            met = row["rps"] >= 5000 and row["errors"] == 0
            targets.append(
                _target("CE 32x10 req/s, 16 connections", f"{row['rps']:.0f}", ">= 5000", met)
            )
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
