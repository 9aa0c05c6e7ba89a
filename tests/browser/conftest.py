"""Browser fixtures: a real ``lossreg serve`` process (with a plugin installed for it) and
headless Debian chromium driven by Playwright.

The tests skip when Playwright or the browser is missing (``.ci/browser.sh`` installs both);
``LOSSREG_CHROMIUM`` names another browser binary. Screenshots go to
``test-artifacts/browser/`` (or ``$LOSSREG_TEST_ARTIFACTS``), never into the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.plugins import make_distribution
from tests.support.server import free_port

CHROMIUM = os.environ.get("LOSSREG_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[2]
API_KEY = "explorer-test-key"

PLUGIN = '''
from typing import Annotated

from pydantic import Field


def charbonnier(input, target, *, eps: Annotated[float, Field(gt=0)] = 1e-3):
    """Charbonnier loss: mean of sqrt((input - target)^2 + eps^2), a smooth L1."""
    return ((input - target) ** 2 + eps**2).sqrt().mean()
'''


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots go (a test artifact, not committed)."""
    path = Path(os.environ.get("LOSSREG_TEST_ARTIFACTS", ROOT / "test-artifacts" / "browser"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two installed distributions: one exporting ``charbonnier``, one that fails to import."""
    root = tmp_path_factory.mktemp("site")
    demo = {"charbonnier": "explorer_demo:charbonnier"}
    make_distribution(root, "explorer-demo-losses", demo, {"explorer_demo": PLUGIN}, "2.3.1")
    broken = {"broken_mod": "raise ImportError('broken_mod needs a GPU runtime')\n"}
    make_distribution(root, "broken-losses", {"broken_loss": "broken_mod:loss"}, broken)
    return root


def _start(plugin_path: Path, logs: Path, **env: str) -> Iterator[str]:
    port = free_port()
    environ = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(plugin_path), str(ROOT)]),
        "LOSSREG_LOG_LEVEL": "warning",
        "LOSSREG_DEVICE": "cpu",
        **env,
    }
    cmd = [str(Path(sys.executable).with_name("lossreg")), "serve", "--port", str(port)]
    log = open(logs / f"serve-{port}.log", "wb")  # closed when the server stops
    proc = subprocess.Popen(cmd, env=environ, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            if proc.poll() is not None:
                text = (logs / f"serve-{port}.log").read_text()[-2000:]
                raise RuntimeError(f"lossreg serve exited: {text}")
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("lossreg serve did not become ready in 90 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def live_url(plugin_path: Path, artifacts: Path) -> Iterator[str]:
    """A ``lossreg serve`` process with the test plugins installed; no API keys."""
    yield from _start(plugin_path, artifacts)


@pytest.fixture(scope="module")
def keyed_url(plugin_path: Path, artifacts: Path) -> Iterator[str]:
    """A ``lossreg serve`` process that requires ``API_KEY``."""
    yield from _start(plugin_path, artifacts, LOSSREG_API_KEYS=API_KEY)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless chromium (skips the test when Playwright or the browser is absent, unless
    ``LOSSREG_REQUIRE_BROWSER`` is set, as in CI, where a skip would hide a broken set-up).

    Module-scoped: Playwright's sync API keeps an event loop running in the main thread while
    it is open, and the rest of the suite's ``asyncio.run`` calls must not find it there.
    """
    missing = None
    try:
        from playwright import sync_api
    except ImportError:
        missing = "Playwright is not installed (pip install -e '.[browser]')"
    if missing is None and not os.access(CHROMIUM, os.X_OK):
        missing = f"no browser at {CHROMIUM} (run .ci/browser.sh, or set LOSSREG_CHROMIUM)"
    if missing is not None:
        if os.environ.get("LOSSREG_REQUIRE_BROWSER"):
            pytest.fail(missing)
        pytest.skip(missing)
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


FIREFOX = os.environ.get("LOSSREG_FIREFOX", "/usr/bin/firefox-esr")
PUPPETEER_DIR = os.environ.get("LOSSREG_PUPPETEER_DIR", "")


@pytest.fixture(scope="module")
def firefox() -> tuple[str, str]:
    """Firefox and the folder holding ``node_modules/puppeteer-core`` (skips without them,
    unless ``LOSSREG_REQUIRE_BROWSER`` is set)."""
    missing = None
    if shutil.which("node") is None:
        missing = "no node"
    elif not os.access(FIREFOX, os.X_OK):
        missing = f"no Firefox at {FIREFOX} (set LOSSREG_FIREFOX)"
    elif not (Path(PUPPETEER_DIR) / "node_modules" / "puppeteer-core").is_dir():
        missing = "no puppeteer-core (set LOSSREG_PUPPETEER_DIR; .ci/browser.sh installs it)"
    if missing is not None:
        if os.environ.get("LOSSREG_REQUIRE_BROWSER"):
            pytest.fail(missing)
        pytest.skip(missing)
    return FIREFOX, PUPPETEER_DIR


class Console:
    """Everything the page logs as an error or warning, and uncaught exceptions."""

    def __init__(self, page: Any) -> None:
        self.messages: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.messages.append(f"pageerror: {exc}"))

    def _on_console(self, message: Any) -> None:
        if message.type in ("error", "warning"):
            self.messages.append(f"{message.type}: {message.text}")


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    """A fresh page (its own storage) with a `Console` at ``page.console``."""
    context = browser.new_context(viewport={"width": 1300, "height": 1000})
    context.set_default_timeout(30_000)
    tab = context.new_page()
    tab.console = Console(tab)
    yield tab
    context.close()
