"""The container health probe, run as the image runs it, against a stand-in HTTP server and
against the real `lossreg serve` started the way the image's ENTRYPOINT/CMD/ENV start it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROBE = REPO / "deploy" / "docker" / "healthcheck.py"


class FakeService(ThreadingHTTPServer):
    """Answers every GET with `status` and records the paths it was asked for."""

    status = 200
    paths: list[str]


class _Handler(BaseHTTPRequestHandler):
    server: FakeService

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        body = b'{"ready": true}' if self.server.status == 200 else b'{"error": "not ready"}'
        self.send_response(self.server.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def service() -> Iterator[FakeService]:
    server = FakeService(("127.0.0.1", 0), _Handler)
    server.paths = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def probe(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LOSSREG_")}
    return subprocess.run(
        [sys.executable, str(PROBE)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_ready_service_is_healthy(service: FakeService) -> None:
    result = probe(LOSSREG_PORT=str(service.server_address[1]))
    assert result.returncode == 0, result.stderr
    assert service.paths == ["/v2/health/ready"]


def test_service_answering_503_is_unhealthy(service: FakeService) -> None:
    service.status = 503
    result = probe(LOSSREG_PORT=str(service.server_address[1]))
    assert result.returncode == 1
    assert "HTTP 503" in result.stderr
    assert service.paths == ["/v2/health/ready"]


def test_nothing_listening_is_unhealthy(service: FakeService) -> None:
    port = service.server_address[1]
    service.shutdown()
    service.server_close()
    result = probe(LOSSREG_PORT=str(port))
    assert result.returncode == 1
    assert f"not ready at http://127.0.0.1:{port}/v2/health/ready" in result.stderr


def test_health_url_overrides_the_port(service: FakeService) -> None:
    url = f"http://127.0.0.1:{service.server_address[1]}/v2/health/ready?probe=1"
    result = probe(LOSSREG_HEALTH_URL=url, LOSSREG_PORT="1")
    assert result.returncode == 0, result.stderr
    assert service.paths == ["/v2/health/ready?probe=1"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_image_entry_point_serves_where_the_probe_looks(tmp_path: Path) -> None:
    """`lossreg serve` with no flags, configured only by LOSSREG_* as the images do, turns ready
    on the port the probe reads, and serves the /metrics that Prometheus scrapes."""
    lossreg = shutil.which("lossreg", path=str(Path(sys.executable).parent))
    assert lossreg, "the lossreg console script is installed next to this interpreter"
    port = str(_free_port())
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LOSSREG_")}
    env = {**clean, "LOSSREG_HOST": "127.0.0.1", "LOSSREG_PORT": port, "LOSSREG_DEVICE": "cpu"}
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([lossreg, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while probe(LOSSREG_PORT=port).returncode != 0:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "not ready within 60 s"
            time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert response.status == 200
            assert "lossreg_requests_in_flight" in response.read().decode()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
