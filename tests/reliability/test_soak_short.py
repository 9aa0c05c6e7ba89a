"""The short soak in CI: ``benchmarks/soak.py`` for 20 s against a server it starts, with every
kind of request (small, 16 MB, invalid); no wrong answer, no 5xx, and a report it can write."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "soak.py"
_spec = importlib.util.spec_from_file_location("soak_cases", SCRIPT.with_name("soak_cases.py"))
assert _spec is not None and _spec.loader is not None
soak_cases = sys.modules["soak_cases"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(soak_cases)  # (dataclasses look their module up in sys.modules)
build_cases = soak_cases.build_cases

pytestmark = pytest.mark.slow


def test_short_soak_has_no_wrong_answer_and_no_5xx(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    command = [
        sys.executable,
        str(SCRIPT),
        "--duration",
        "20",
        "--concurrency",
        "4",
        "--sample-every",
        "1",
        "--json",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ok"] and report["server_errors"] == 0 and report["failures"] == []
    names = {case.name for case in build_cases(16, bomb=True, seed=0)}
    assert set(report["per_case"]) == names, "every kind of request was sent"
    assert {"small", "big", "invalid"} <= set(report["latency_ms"])
    assert {"200", "400", "404", "413", "422"} <= set(report["statuses"])
    assert len(report["rss_mb"]) >= 10 and all(mb > 0 for _, mb in report["rss_mb"])
    assert "no wrong answer, no 5xx" in done.stdout


def test_hostile_soak_with_two_workers(tmp_path: Path) -> None:
    """Attackers beside correct clients, two workers: answers stay right, every attacker is
    shed, health answers throughout, and both workers' metrics come back to rest."""
    out = tmp_path / "hostile.json"
    command = [sys.executable, str(SCRIPT), "--duration", "15", "--concurrency", "3",
               "--hostile", "--workers", "2", "--client-timeout", "2", "--big-mb", "4",
               "--json", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ok"] and report["workers"] == 2 and report["failures"] == []
    hostile = {"head-trickler", "body-staller", "idle-burst", "big-header", "huge-name"}
    assert hostile <= set(report["per_case"])
    assert {"closed", "431", "200"} <= set(report["statuses"])
    assert "open" not in report["statuses"]
    assert report["health_ms"]["n"] >= 10


def test_the_soak_checks_answers_for_real() -> None:
    """A case's check fails on a wrong value: the soak cannot pass by not looking."""
    case = next(c for c in build_cases(0.01, bomb=False, seed=0) if c.name == "v1-smooth_l1")
    wrong = httpx.Response(
        200, json={"loss": 123.0, "grads": {"input": np.zeros((16, 8)).tolist()}}
    )
    with pytest.raises(AssertionError):
        case.check(wrong)
