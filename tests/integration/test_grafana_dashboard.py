"""Every query of the committed Grafana dashboard names metrics, and labels, that a live lossreg
server really exports (after it has served requests, batched ones included)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lossreg_service.settings import Settings
from tests.support.server import serve

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"
QUERIES = [
    (panel["title"], target["expr"])
    for path in sorted(DASHBOARD.glob("*.json"))
    for panel in json.loads(path.read_text())["panels"]
    for target in panel["targets"]
]
_METRIC = re.compile(r"\b(lossreg_[a-zA-Z0-9_]+)")
_GROUPING = re.compile(r"\bby\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"\b(lossreg_[a-zA-Z0-9_]+)\{([^}]*)\}")


@pytest.fixture(scope="module")
def exported() -> Iterator[dict[str, list[dict[str, str]]]]:
    """Sample name -> the label sets of its samples, scraped after real traffic."""
    settings = Settings(device="cpu", log_level="warning", batch_max_delay_us=2000)
    with serve(settings) as url:
        body = {
            "inputs": [
                {"name": "input", "shape": [2], "datatype": "FP32", "data": [1.0, 3.0]},
                {"name": "target", "shape": [2], "datatype": "FP32", "data": [0.0, 0.0]},
            ]
        }
        with ThreadPoolExecutor(8) as pool:  # concurrent, so the batcher groups them
            codes = list(
                pool.map(
                    lambda _: httpx.post(f"{url}/v2/models/mse_loss/infer", json=body).status_code,
                    range(16),
                )
            )
        assert codes == [200] * 16
        ev = {"inputs": {"input": [1.0], "target": [0.0]}}
        assert httpx.post(f"{url}/v1/losses/mse_loss/evaluate", json=ev).status_code == 200
        text = httpx.get(f"{url}/metrics").text
    out: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample.labels)
    yield out


def test_the_dashboard_has_queries() -> None:
    assert len(QUERIES) >= 8


@pytest.mark.parametrize(("title", "expr"), QUERIES, ids=[f"{t}:{e[:40]}" for t, e in QUERIES])
def test_query_names_exported_metrics_and_labels(
    exported: dict[str, list[dict[str, str]]], title: str, expr: str
) -> None:
    names = _METRIC.findall(expr)
    assert names, f"{title}: no lossreg metric in {expr}"
    for name in names:
        assert name in exported, f"{title}: {name} is not exported"
    labels = {label for n in names for sample in exported[n] for label in sample}
    for group in _GROUPING.findall(expr):
        for label in filter(None, (x.strip() for x in group.split(","))):
            assert label in labels, f"{title}: no label {label!r} on {names}"
    for name, selector in _SELECTOR.findall(expr):
        for matcher in filter(None, (m.strip() for m in selector.split(","))):
            label, op, value = re.fullmatch(r'(\w+)\s*(=~|!~|!=|=)\s*"(.*)"', matcher).groups()
            values = [sample[label] for sample in exported[name] if label in sample]
            assert values, f"{title}: no label {label!r} on {name}"
            if op == "=~":  # PromQL anchors the regex: it must select some exported series
                assert any(re.fullmatch(value, v) for v in values), f"{title}: {matcher}"
            elif op == "=":
                assert value in values, f"{title}: {matcher}"
