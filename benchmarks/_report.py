"""Turning measurements into the table on stdout, the JSON file and the latency plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["print_tables", "save_json", "save_plot"]

LABELS = {
    "inprocess": "in-process",
    "tcp_floor": "raw TCP floor",
    "default": "default: tritonclient",
    "default_client": "default: lossreg client",
    "client": "lossreg client",
    "uds": "client, unix socket",
    "shm": "lossreg shm",
    "tritonclient": "tritonclient",
    "tritonclient_grpc": "tritonclient gRPC",
    "json_api": "lossreg JSON",
    "baseline": "FastAPI+pydantic",
    "litserve": "LitServe",
    "ray_serve": "Ray Serve",
    "pytriton": "PyTriton",
}
"""Columns; ``default*`` are against ``lossreg serve`` with no settings, the rest (of lossreg)
against the tuned latency server."""


def _fmt(ms: float | None) -> str:
    if ms is None or math.isnan(ms):
        return "-"
    if ms >= 1000:
        return f"{ms / 1000:.2f} s"
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}"


def print_tables(results: dict[str, Any], console: Console) -> None:
    latency = results.get("latency", {})
    if latency:
        methods = [m for m in LABELS if any(m in row["methods"] for row in latency.values())]
        table = Table(title="Value + gradient, sequential requests: median ms (x in-process)")
        table.add_column("payload")
        table.add_column("MB", justify="right")
        for method in methods:
            table.add_column(LABELS[method], justify="right")
        for label, row in latency.items():
            base = row["methods"].get("inprocess", {}).get("median_ms")
            cells = []
            for method in methods:
                entry = row["methods"].get(method)
                if entry is None:
                    cells.append("-")
                elif entry.get("skipped"):
                    cells.append(f"[dim]{entry['skipped']}[/]")
                else:
                    shown = base and method != "inprocess"
                    ratio = f" ({entry['median_ms'] / base:.1f}x)" if shown else ""
                    cells.append(_fmt(entry["median_ms"]) + ratio)
            table.add_row(label, f"{row['mbytes']:.2f}", *cells)
        console.print(table)
        floor = results.get("floor_ms")
        if floor is not None:
            console.print(f"empty-endpoint floor (same HTTP client, sequential): {floor:.3f} ms")
    load = results.get("concurrency", [])
    if load:
        table = Table(title="CE 32x10, concurrent keep-alive connections")
        for col in ("server", "conns", "req/s", "p50 ms", "p99 ms", "errors", "tool"):
            table.add_column(col, justify="right" if col != "server" else "left")
        for row in load:
            table.add_row(
                row["server"], str(row["connections"]), f"{row['rps']:.0f}", _fmt(row["p50_ms"]),
                _fmt(row["p99_ms"]), str(row["errors"]), row["tool"],
            )  # fmt: skip
        console.print(table)
    gpu = results.get("gpu", [])
    if gpu:
        table = Table(title="GPU: CE 32x10, 256 concurrent connections")
        for col in ("server", "req/s", "p50 ms", "p99 ms", "errors"):
            table.add_column(col, justify="right" if col != "server" else "left")
        for row in gpu:
            table.add_row(row["server"], f"{row['rps']:.0f}", _fmt(row["p50_ms"]),
                          _fmt(row["p99_ms"]), str(row["errors"]))  # fmt: skip
        console.print(table)
        for label, row in results.get("gpu_latency", {}).items():
            console.print(f"GPU {label}: in-process {_fmt(row['inprocess_ms'])} ms, "
                          f"client {_fmt(row['client_ms'])} ms")  # fmt: skip
    memory, default = results.get("memory"), results.get("memory_default", {})
    if memory:
        table = Table(title="Server memory (RSS, summed over the server's processes)")
        table.add_column("measure")
        table.add_column("tuned (1 worker)", justify="right")
        table.add_column("default", justify="right")
        for key, value in memory.items():
            other = default.get(key, "-")
            table.add_row(key, *(f"{v:.1f}" if isinstance(v, float) else str(v)
                                 for v in (value, other)))  # fmt: skip
        console.print(table)
    targets = results.get("targets", [])
    if targets:
        table = Table(title="Targets")
        for col in ("target", "measured", "goal", "met"):
            table.add_column(col)
        for t in targets:
            met = "[green]yes[/]" if t["met"] else ("[red]no[/]" if t["met"] is False else "-")
            table.add_row(t["name"], t["measured"], t["goal"], met)
        console.print(table)


def save_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=float) + "\n")


def save_plot(results: dict[str, Any], path: Path) -> bool:
    """Latency vs payload size, log-log, one line per method; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    latency = results.get("latency", {})
    fig, ax = plt.subplots(figsize=(8, 5))
    for method, label in LABELS.items():
        points = sorted(
            (row["mbytes"], row["methods"][method]["median_ms"])
            for row in latency.values()
            if method in row["methods"] and "median_ms" in row["methods"][method]
        )
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("request tensors (MB)")
    ax.set_ylabel("median latency (ms)")
    ax.set_title("Loss value + gradient: latency vs payload size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True
