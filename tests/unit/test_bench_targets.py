"""Issue 18's targets as the serving benchmark computes them from one run's numbers (the
figures here are made up; the benchmark itself never runs in the test suite)."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks._scaling import per_mb
from benchmarks._targets import issue_18


def _run(
    *, default_big: float, tuned_big: float, peer_big: float, default_rps: float,
    tuned_rps: float, peer_rps: float, log_off_rps: float, small: float, errors: int = 0,
) -> dict[str, Any]:  # fmt: skip
    def lat(**methods: float) -> dict[str, Any]:
        return {"methods": {m: {"median_ms": v} for m, v in methods.items()}}

    def row(server: str, rps: float, errors: int = 0) -> dict[str, Any]:
        return {"server": server, "connections": 16, "rps": rps, "errors": errors}

    return {
        "floor_ms": 0.25,
        "latency": {
            "CE 32x10": lat(inprocess=0.1, default_client=small),
            "CE 4096x1000": lat(
                inprocess=7.0,
                default=default_big,
                tritonclient=tuned_big,
                litserve=peer_big,
                ray_serve=peer_big * 2,
            ),  # fmt: skip
        },
        "concurrency": [
            row("default (lossreg serve)", default_rps, errors),
            row("default, LOSSREG_ACCESS_LOG=false", log_off_rps),
            row("tuned, batching", tuned_rps),
            row("tuned, no batching", tuned_rps / 2),
            row("Ray Serve", peer_rps),
            row("PyTriton", peer_rps / 2),
        ],
    }


def _met(targets: list[dict[str, Any]]) -> dict[str, tuple[str, bool]]:
    return {t["name"]: (t["measured"], t["met"]) for t in targets}


def test_a_run_that_meets_every_target() -> None:
    targets = _met(issue_18(_run(default_big=20.0, tuned_big=19.0, peer_big=150.0,
                                 default_rps=6000, tuned_rps=6300, peer_rps=500,
                                 log_off_rps=6200, small=0.55)))  # fmt: skip
    assert targets["16 MB CE, tritonclient: default / tuned server"] == ("1.05x", True)
    assert targets["CE 32x10 req/s, 16 connections: default / best tuned"] == ("0.95x", True)
    assert targets["CE 32x10 overhead, default server (client - in-process) / floor"] == (
        "1.80x", True)  # fmt: skip
    assert targets["CE 32x10 req/s, 16 connections, default server"] == ("6000", True)
    assert targets["16 MB CE: best peer / default lossreg"] == ("7.5x", True)  # the fastest peer
    assert targets["CE 32x10 req/s, 16 connections: default / best peer"] == ("12.0x", True)
    assert targets["access log's cost: 1 - req/s with it / without"] == ("3%", True)


def test_a_run_that_misses_them() -> None:
    targets = _met(issue_18(_run(default_big=30.0, tuned_big=20.0, peer_big=90.0,
                                 default_rps=4000, tuned_rps=6000, peer_rps=800,
                                 log_off_rps=5000, small=0.9)))  # fmt: skip
    assert targets["16 MB CE, tritonclient: default / tuned server"] == ("1.50x", False)
    assert targets["CE 32x10 req/s, 16 connections: default / best tuned"] == ("0.67x", False)
    assert targets["CE 32x10 overhead, default server (client - in-process) / floor"] == (
        "3.20x", False)  # fmt: skip
    assert targets["CE 32x10 req/s, 16 connections, default server"] == ("4000", False)
    assert targets["16 MB CE: best peer / default lossreg"] == ("3.0x", False)
    assert targets["CE 32x10 req/s, 16 connections: default / best peer"] == ("5.0x", False)
    assert targets["access log's cost: 1 - req/s with it / without"] == ("20%", False)


def test_a_default_row_with_errors_counts_as_no_throughput() -> None:
    targets = _met(issue_18(_run(default_big=20.0, tuned_big=20.0, peer_big=200.0,
                                 default_rps=9000, tuned_rps=6000, peer_rps=100,
                                 log_off_rps=9000, small=0.4, errors=3)))  # fmt: skip
    assert targets["CE 32x10 req/s, 16 connections, default server"] == ("0", False)
    assert "CE 32x10 req/s, 16 connections: default / best tuned" not in targets


def test_targets_without_their_numbers_are_left_out() -> None:
    assert issue_18({"notes": []}) == []


def test_scaling_slope_is_the_cost_per_mb_from_1_mb_on() -> None:
    points = [{"mbytes": mb, "client_ms": 0.5 + 2.0 * mb, "tcp_floor_ms": 0.05 + 1.0 * mb}
              for mb in (0.001, 0.25, 1.0, 4.0, 16.0, 64.0)]  # fmt: skip
    points[0]["client_ms"] = 50.0  # a small point off the line: outside the fit
    slopes = per_mb(points)
    assert slopes["client"] == pytest.approx(2.0)
    assert slopes["tcp_floor"] == pytest.approx(1.0)
    assert "server" not in slopes  # no such column in these points
    assert per_mb(points[:3]) == {}  # one point from 1 MB on: no line
