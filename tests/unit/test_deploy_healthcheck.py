"""The container health probe against a real HTTP server on 127.0.0.1, run as the image runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
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
