"""The statistics store: Triton's counting rules, independent of any transport."""

from __future__ import annotations

import threading

from lossreg_service.server.statistics import LocalStatistics, RequestTimes


def _one(stats: LocalStatistics, name: str = "mse_loss") -> dict:
    (entry,) = stats.snapshot([(name, "1")])
    return entry


def test_a_model_never_called_reads_zero() -> None:
    entry = _one(LocalStatistics())
    assert entry["inference_count"] == entry["execution_count"] == entry["last_inference"] == 0
    assert entry["batch_stats"] == []
    assert all(d == {"count": 0, "ns": 0} for d in entry["inference_stats"].values())


def test_successes_failures_and_stages_add_up() -> None:
    stats = LocalStatistics()
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


def test_a_batch_is_one_execution_and_its_compute_is_counted_once() -> None:
    stats = LocalStatistics()
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


def test_models_and_versions_are_kept_apart_and_threads_do_not_lose_counts() -> None:
    stats = LocalStatistics()

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
