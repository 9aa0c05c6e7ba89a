"""The run's tables in the README's Markdown format (its "Performance" section), printed at the
end and written beside the JSON, so a full run's figures are pasted, not retyped."""

from __future__ import annotations

import math
from typing import Any

from ._report import LABELS

__all__ = ["tables"]


def _ms(ms: float | None) -> str:
    if ms is None or math.isnan(ms):
        return "-"
    if ms >= 1000:
        return f"{ms / 1000:.2f} s"
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _latency(results: dict[str, Any]) -> list[str]:
    latency = results.get("latency", {})
    methods = [m for m in LABELS if any(m in row["methods"] for row in latency.values())]
    lines = [_row(["payload", "MB", *(LABELS[m] for m in methods)]),
             "|---|---:|" + "---:|" * len(methods)]  # fmt: skip
    for label, row in latency.items():
        base = row["methods"].get("inprocess", {}).get("median_ms")
        cells = []
        for method in methods:
            entry = row["methods"].get(method, {})
            if "median_ms" not in entry:
                cells.append(entry.get("skipped", "-"))
                continue
            ratio = f" ({entry['median_ms'] / base:.1f}x)" if base and method != "inprocess" else ""
            cells.append(_ms(entry["median_ms"]) + ratio)
        lines.append(_row([label, f"{row['mbytes']:.2f}", *cells]))
    floor = results.get("floor_ms")
    if floor is not None:
        lines += ["", f"Empty-endpoint floor (same HTTP client): {floor:.2f} ms."]
    return lines


def _concurrency(results: dict[str, Any]) -> list[str]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in results.get("concurrency", []):
        grouped.setdefault(row["server"], []).append(row)
    lines = ["| server | connections | req/s | p50 ms | p99 ms | errors "
             "| CPU µs a request: server / load generator |",
             "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for server, rows in grouped.items():
        lines.append(_row([
            server,
            " / ".join(str(r["connections"]) for r in rows),
            " / ".join(f"{r['rps']:.0f}" for r in rows),
            " / ".join(_ms(r["p50_ms"]) for r in rows),
            " / ".join(_ms(r["p99_ms"]) for r in rows),
            " / ".join(str(r["errors"]) for r in rows),
            " ; ".join(_cpu(r) for r in rows),
        ]))  # fmt: skip
    return lines


def _cpu(row: dict[str, Any]) -> str:
    if "server_cpu_us" not in row:
        return "-"
    return f"{row['server_cpu_us']:.0f} / {row['load_cpu_us']:.0f}"


def _memory(results: dict[str, Any]) -> list[str]:
    tuned, default = results.get("memory", {}), results.get("memory_default", {})
    lines = ["| memory (RSS, all of the server's processes) | tuned, 1 worker | default |",
             "|---|---:|---:|"]  # fmt: skip
    for key, value in tuned.items():
        other = default.get(key, "-")
        lines.append(_row([key, *(f"{v:.1f}" if isinstance(v, float) else str(v)
                                  for v in (value, other))]))  # fmt: skip
    return lines


def _scaling(results: dict[str, Any]) -> list[str]:
    scaling = results.get("scaling", {})
    lines = ["| request MB | tritonclient (default) | server time | compute | raw TCP floor "
             "| in-process |", "|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for p in scaling.get("points", []):
        lines.append(_row([f"{p['mbytes']:.3g}", *(_ms(p[k]) for k in (
            "client_ms", "server_ms", "compute_ms", "tcp_floor_ms", "inprocess_ms"))]))  # fmt: skip
    slopes = scaling.get("per_mb_ms", {})
    if slopes:
        lines += ["", "ms per MB from 1 MB on (least squares): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in slopes.items()) + "."]  # fmt: skip
    return lines


def _targets(results: dict[str, Any]) -> list[str]:
    lines = ["| target | measured | goal | met |", "|---|---:|---:|---|"]
    for t in results.get("targets", []):
        met = "yes" if t["met"] else ("no" if t["met"] is False else "-")
        lines.append(_row([t["name"], t["measured"], t["goal"], met]))
    return lines


def tables(results: dict[str, Any]) -> str:
    """Every section the run has, as Markdown tables under a bold heading each."""
    sections = [("latency", "Sequential value + gradient, median ms (x in-process)", _latency),
                ("concurrency", "CE 32x10 over keep-alive connections", _concurrency),
                ("memory", "Server memory", _memory),
                ("scaling", "Scaling, CE N x 256 (1 KB a row)", _scaling),
                ("targets", "Targets", _targets)]  # fmt: skip
    out: list[str] = []
    for key, title, render in sections:
        if results.get(key):
            out += [f"**{title}**", "", *render(results), ""]
    return "\n".join(out)
