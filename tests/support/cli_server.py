"""Run ``lossreg serve`` as its own process, as a container or a person starts it.

    with lossreg_serve(["serve"], {"LOSSREG_WORKERS": "2"}, tmp_path) as server:
        httpx.get(server.url + "/metrics")

``TMPDIR`` points into the test's folder, so the server's per-start metrics directory
(``lossreg-metrics-*``) can be inspected and shown to be removed on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from tests.support.server import free_port

__all__ = ["CliServer", "lossreg_serve", "per_worker", "scrape", "wait_workers_ready"]


@dataclass
class CliServer:
    url: str
    process: subprocess.Popen[bytes]
    tmp: Path
    log: Path

    @property
    def metrics_dirs(self) -> list[Path]:
        return sorted(self.tmp.glob("lossreg-metrics-*"))

    def worker_pids(self) -> set[int]:
        """Processes that have written metrics (one per worker that has run)."""
        pids = set()
        for directory in self.metrics_dirs:
            pids |= {int(p.stem.rsplit("_", 1)[1]) for p in directory.glob("*_*.db")}
        return pids

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise


def wait_workers_ready(server: CliServer, workers: int, timeout: float = 90) -> None:
    """Until ``workers`` processes have started and ten readiness probes in a row, each on a
    fresh connection (so any worker may answer), are 200."""
    deadline = time.monotonic() + timeout
    while len(server.worker_pids()) < workers or not all(
        httpx.get(server.url + "/v2/health/ready", timeout=5).status_code == 200 for _ in range(10)
    ):
        assert time.monotonic() < deadline, server.log.read_text()
        time.sleep(0.2)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One ``GET /metrics`` on a fresh connection: (name, sorted labels) -> value."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def per_worker(server: CliServer, prefix: str, name: str, **labels: str) -> dict[int, float]:
    """A sample's value in each worker's own metrics file (``<prefix>_<pid>.db``)."""
    out: dict[int, float] = {}
    for directory in server.metrics_dirs:
        for path in directory.glob(f"{prefix}_*.db"):
            pid = int(path.stem.rsplit("_", 1)[1])
            for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
                _, sample, sample_labels, _ = json.loads(key)
                if sample == name and sample_labels == labels:
                    out[pid] = out.get(pid, 0.0) + value
    return out


@contextlib.contextmanager
def lossreg_serve(
    args: list[str],
    env: dict[str, str],
    tmp: Path,
    *,
    port: int | None = None,
    ready_path: str | None = "/v2/health/ready",
    timeout: float = 120,
) -> Iterator[CliServer]:
    """Start ``lossreg <args>`` with ``env`` (on top of a ``LOSSREG_*``-free environment) and
    wait until ``ready_path`` answers 200 (or only until the port answers, if None)."""
    lossreg = shutil.which("lossreg", path=str(Path(sys.executable).parent))
    assert lossreg, "the lossreg console script is installed next to this interpreter"
    port = port or free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LOSSREG_", "PROMETHEUS"))}
    full_env = {
        **clean,
        "LOSSREG_HOST": "127.0.0.1",
        "LOSSREG_PORT": str(port),
        "LOSSREG_LOG_LEVEL": "warning",
        "TMPDIR": str(tmp),
        **env,
    }
    log = tmp / f"serve-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen([lossreg, *args], env=full_env, stdout=out, stderr=out)
    server = CliServer(f"http://127.0.0.1:{port}", process, tmp, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert process.poll() is None, f"lossreg serve exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"not ready in {timeout} s:\n{log.read_text()}"
            try:
                r = httpx.get(server.url + (ready_path or "/v2/health/live"), timeout=5)
                if r.status_code == 200 or ready_path is None:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.stop()
