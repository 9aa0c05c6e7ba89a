"""The scaling curve: latency and server time against payload size, 1 KB to 64 MB.

Cross-entropy on float32 logits of N x 256 (1 KB a row), value + gradient through
``tritonclient.http`` against the default ``lossreg serve``, beside the raw TCP floor (the same
bytes there and back over a socket) and the in-process time. The server's own time per request
comes from its statistics extension (``/v2/models/cross_entropy/stats``: the ``success``
duration, arrival to answer, and ``compute_infer``). A least-squares line over the points from
1 MB on gives each curve's cost per MB, so growth can be compared with the floor's.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.progress import Progress

from . import _cases, _procs

__all__ = ["per_mb", "run_scaling", "save_plot"]

KB = 1024
MB = 1024 * KB
SIZES_KB = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536]
QUICK_SIZES_KB = [1, 16, 256, 4096, 16384]
CLASSES = 256  # float32: one row is 1 KB


def _case(kb: int) -> _cases.Case:
    rng = np.random.default_rng(kb)
    return _cases.Case(
        f"CE {kb}x{CLASSES}",
        "cross_entropy",
        {
            "input": rng.standard_normal((kb, CLASSES), dtype=np.float32),
            "target": rng.integers(0, CLASSES, kb, dtype=np.int64),
        },
    )


def _server_seconds(url: str) -> tuple[int, float, float]:
    """Successful requests so far, their summed server time and compute time (seconds)."""
    stats = httpx.get(url + "/v2/models/cross_entropy/stats", timeout=10).json()
    inference = stats["model_stats"][0]["inference_stats"]
    success, compute = inference["success"], inference["compute_infer"]
    return int(success["count"]), success["ns"] / 1e9, compute["ns"] / 1e9


def run_scaling(args: argparse.Namespace, results: dict[str, Any], progress: Progress) -> None:
    sizes = QUICK_SIZES_KB if args.quick else SIZES_KB
    task = progress.add_task("scaling", total=len(sizes))
    points: list[dict[str, Any]] = []
    with _procs.default_server() as server, _procs.echo_server() as echo:
        for kb in sizes:
            progress.update(task, description=f"scaling {kb} KB")
            case = _case(kb)
            inprocess = _cases.make_inprocess(case)
            client = _cases.make_tritonclient(case, server.url)
            np.testing.assert_allclose(client(), inprocess(), rtol=1e-4, atol=1e-6)
            small = case.nbytes < MB
            runs, block = (60, 20) if small else (12 if kb <= 16384 else 6, 3)
            before = _server_seconds(server.url)
            timings = _cases.time_interleaved(
                {"inprocess": (inprocess, runs), "client": (client, runs),
                 "tcp_floor": (_cases.make_tcp_floor(case, echo.url), runs)},
                block=block, budget_s=3.0 if args.quick else 8.0,
            )  # fmt: skip
            after = _server_seconds(server.url)
            count = max(1, after[0] - before[0])
            points.append({
                "kb": kb,
                "mbytes": case.nbytes / MB,
                **{f"{name}_ms": timing.median_ms for name, timing in timings.items()},
                "server_ms": (after[1] - before[1]) / count * 1e3,
                "compute_ms": (after[2] - before[2]) / count * 1e3,
            })  # fmt: skip
            progress.advance(task)
    results["scaling"] = {"points": points, "per_mb_ms": per_mb(points)}


def per_mb(points: list[dict[str, Any]], from_mb: float = 1.0) -> dict[str, float]:
    """Each curve's slope (ms per MB of request tensors), least squares over the points of at
    least ``from_mb``; empty with fewer than two such points."""
    big = [p for p in points if p["mbytes"] >= from_mb]
    if len(big) < 2:
        return {}
    x = np.array([p["mbytes"] for p in big])
    slopes = {}
    for key in ("client_ms", "server_ms", "compute_ms", "tcp_floor_ms", "inprocess_ms"):
        if all(key in p for p in big):
            slope, _ = np.polyfit(x, np.array([p[key] for p in big]), 1)
            slopes[key.removesuffix("_ms")] = float(slope)
    return slopes


LINES = {
    "client_ms": "tritonclient, default lossreg serve",
    "server_ms": "server time (statistics: success)",
    "compute_ms": "server compute (compute_infer)",
    "tcp_floor_ms": "raw TCP floor",
    "inprocess_ms": "in-process",
}


def save_plot(results: dict[str, Any], path: Path) -> bool:
    """Latency and server time vs payload, log-log; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    points = results["scaling"]["points"]
    fig, ax = plt.subplots(figsize=(8, 5))
    x = [p["mbytes"] for p in points]
    for key, label in LINES.items():
        ax.plot(x, [p[key] for p in points], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("request tensors (MB)")
    ax.set_ylabel("median ms per request")
    span = f"{points[0]['kb']} KB - {points[-1]['kb'] // 1024} MB" if points else ""
    ax.set_title(f"CE value + gradient: latency and server time vs payload ({span})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True
