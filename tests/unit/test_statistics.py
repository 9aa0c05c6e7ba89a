"""The statistics store: Triton's counting rules, independent of any transport, in one process
and over a multiprocess directory (as every worker of ``lossreg serve`` keeps them)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lossreg_service.server.metrics import multiprocess_dir
from lossreg_service.server.statistics import MetricStatistics, RequestTimes, StatisticsStore

NewStore = Callable[[], MetricStatistics]


@pytest.fixture(params=["process", "multiprocess"])
def new_store(request: pytest.FixtureRequest) -> Iterator[NewStore]:
    """Makes empty stores: values in memory, or in a fresh multiprocess directory."""
    if request.param == "process":
        yield lambda: MetricStatistics(CollectorRegistry())
        return
    with multiprocess_dir() as path:
        yield lambda: MetricStatistics(CollectorRegistry(), path)


def _one(stats: StatisticsStore, name: str = "mse_loss") -> dict:
    (entry,) = stats.snapshot([(name, "1")])
    return entry


def test_a_model_never_called_reads_zero(new_store: NewStore) -> None:
    entry = _one(new_store())
    assert entry["inference_count"] == entry["execution_count"] == entry["last_inference"] == 0
    assert entry["batch_stats"] == []
    assert all(d == {"count": 0, "ns": 0} for d in entry["inference_stats"].values())


def test_successes_failures_and_stages_add_up(new_store: NewStore) -> None:
    stats = new_store()
    times = RequestTimes(queue_ns=10, input_ns=20, infer_ns=30, output_ns=40)
    for _ in range(3):
        stats.record_execution("mse_loss", "1", batch_size=1)
        stats.record_request("mse_loss", "1", ok=True, total_ns=100, times=times)
    stats.record_request("mse_loss", "1", ok=False, total_ns=7, times=RequestTimes())
    entry = _one(stats)
    inference = entry["inference_stats"]
    assert inference["success"] == {"count": 3, "ns": 300}
    assert inference["fail"] == {"count": 1, "ns": 7}
    assert inference["queue"] == {"count": 3, "ns": 30}
    assert inference["compute_infer"] == {"count": 3, "ns": 90}
    assert entry["inference_count"] == 3 and entry["execution_count"] == 3
    (batch,) = entry["batch_stats"]
    assert batch["batch_size"] == 1 and batch["compute_infer"] == {"count": 3, "ns": 90}
    assert entry["last_inference"] > 0


def test_a_batch_is_one_execution_and_its_compute_is_counted_once(new_store: NewStore) -> None:
    stats = new_store()
    stats.record_execution("mse_loss", "1", batch_size=4)
    for _ in range(4):  # each member saw the whole batch's 400 ns of compute
        times = RequestTimes(infer_ns=400, input_ns=5, output_ns=6, batch_size=4)
        stats.record_request("mse_loss", "1", ok=True, total_ns=500, times=times)
    entry = _one(stats)
    assert entry["inference_count"] == 4 and entry["execution_count"] == 1
    (batch,) = entry["batch_stats"]
    assert batch["batch_size"] == 4
    assert batch["compute_infer"] == {"count": 1, "ns": 400}
    assert batch["compute_input"] == {"count": 1, "ns": 20}
    assert entry["inference_stats"]["compute_infer"] == {"count": 4, "ns": 1600}


def test_models_and_versions_are_kept_apart_and_threads_do_not_lose_counts(
    new_store: NewStore,
) -> None:
    stats = new_store()

    def hammer() -> None:
        for _ in range(500):
            stats.record_request("a", "1", ok=True, total_ns=1, times=RequestTimes())

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats.record_request("a", "2", ok=True, total_ns=1, times=RequestTimes())
    a1, a2, b = stats.snapshot([("a", "1"), ("a", "2"), ("b", "1")])
    assert a1["inference_count"] == 2000 and a2["inference_count"] == 1
    assert b["inference_count"] == 0


_WORKER = """
import sys
from prometheus_client import CollectorRegistry
from lossreg_service.server.statistics import MetricStatistics, RequestTimes
stats = MetricStatistics(CollectorRegistry(), sys.argv[1])
for _ in range(3):
    stats.record_execution("mse_loss", "1", batch_size=1)
    stats.record_request("mse_loss", "1", ok=True, total_ns=100, times=RequestTimes(infer_ns=30))
stats.record_request("mse_loss", "1", ok=False, total_ns=7, times=RequestTimes())
"""


@pytest.mark.timeout(120)
def test_an_exited_worker_still_counts_in_the_whole_server_numbers() -> None:
    with multiprocess_dir() as path:
        here = MetricStatistics(CollectorRegistry(), path)
        here.record_execution("mse_loss", "1", batch_size=2)
        for _ in range(2):
            times = RequestTimes(infer_ns=40, batch_size=2)
            here.record_request("mse_loss", "1", ok=True, total_ns=50, times=times)
        before = _one(here)
        # another worker process records into the same directory, then exits
        worker = subprocess.run(
            [sys.executable, "-c", _WORKER, path], env=os.environ, timeout=60, check=False
        )
        assert worker.returncode == 0
        entry = _one(here)
    inference = entry["inference_stats"]
    assert inference["success"] == {"count": 5, "ns": 400}
    assert inference["fail"] == {"count": 1, "ns": 7}
    assert inference["compute_infer"] == {"count": 5, "ns": 170}
    assert entry["inference_count"] == 5 and entry["execution_count"] == 4
    sizes = {b["batch_size"]: b["compute_infer"] for b in entry["batch_stats"]}
    assert sizes == {1: {"count": 3, "ns": 90}, 2: {"count": 1, "ns": 40}}
    assert entry["last_inference"] >= before["last_inference"] > 0


def test_the_statistics_are_exported_as_metrics() -> None:
    registry = CollectorRegistry()
    stats = MetricStatistics(registry)
    stats.record_execution("mse_loss", "1", batch_size=1)
    stats.record_request("mse_loss", "1", ok=True, total_ns=2_000_000, times=RequestTimes())
    stats.record_request("mse_loss", "1", ok=False, total_ns=1, times=RequestTimes())
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(f"lossreg_inference_{name}", tuple(sorted(labels.items())))]

    model = {"loss": "mse_loss", "version": "1"}
    assert value("requests_total", **model, outcome="success") == 1.0
    assert value("requests_total", **model, outcome="fail") == 1.0
    assert value("duration_seconds_total", **model, stage="success") == pytest.approx(0.002)
    assert value("executions_total", **model, batch_size="1") == 1.0
    last = value("last_timestamp_seconds", **model)
    assert int(last * 1000) == _one(stats)["last_inference"]
