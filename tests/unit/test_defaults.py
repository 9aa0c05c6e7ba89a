"""The defaults `lossreg serve` starts with: a worker per core, every core per computation, and
start-up objects frozen out of the collector's sight once per process."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from lossreg_service import settings
from lossreg_service.server.tuning import _freeze_startup_objects, intra_op_threads
from lossreg_service.settings import Settings, cpu_cores


@pytest.fixture
def sixteen_cores(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(settings, "CPU_MAX", tmp_path / "no-cgroup")
    monkeypatch.delenv("LOSSREG_WORKERS", raising=False)
    monkeypatch.delenv("LOSSREG_INTRA_OP_THREADS", raising=False)


@pytest.mark.usefixtures("sixteen_cores")
def test_workers_default_to_one_per_core_and_an_explicit_count_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert cpu_cores() == 16
    assert Settings().workers == 16
    assert Settings(workers=0).workers == 16
    assert Settings(workers=3).workers == 3
    monkeypatch.setenv("LOSSREG_WORKERS", "5")
    assert Settings().workers == 5


@pytest.mark.usefixtures("sixteen_cores")
@pytest.mark.parametrize(
    ("cpu_max", "cores"),
    [("200000 100000", 2), ("250000 100000", 3), ("max 100000", 16), ("3200000 100000", 16)],
)
def test_a_cgroup_cpu_quota_caps_the_cores(cpu_max: str, cores: int) -> None:
    """A container limited to 2.5 CPUs' time on a 16-core host: 3 workers, not 16."""
    settings.CPU_MAX.write_text(cpu_max + "\n")
    assert cpu_cores() == cores
    assert Settings().workers == cores


@pytest.mark.usefixtures("sixteen_cores")
def test_a_computation_may_use_every_core_whatever_the_workers() -> None:
    assert intra_op_threads(Settings()) == 16
    assert intra_op_threads(Settings(workers=4, compute_threads=8)) == 16
    assert intra_op_threads(Settings(intra_op_threads=3)) == 3  # an explicit setting wins


def test_start_up_objects_are_frozen_once_per_process() -> None:
    _freeze_startup_objects()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    garbage = [object() for _ in range(1000)]  # new objects a second freeze would take in
    _freeze_startup_objects()
    assert gc.get_freeze_count() == frozen
    del garbage
