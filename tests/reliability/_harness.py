"""Shared pieces of the reliability tests: losses that misbehave on purpose, a server handle
that can be told to stop (graceful shutdown), raw-socket requests for what httpx will not send,
and the check that a valid request is still answered correctly.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import torch
import uvicorn
from torch import Tensor

from lossreg.protocol import encode_body, encode_tensor
from lossreg_service.registry import LossRegistry
from lossreg_service.server import create_app
from lossreg_service.settings import Settings
from tests.support.losses import slow_loss
from tests.support.server import free_port, wait_ready

RELEASE = threading.Event()
"""Set to let every `hanging_loss` computation end (tests set it when they are done)."""


def hanging_loss(input: Tensor) -> Tensor:
    """Never returns on its own (until `RELEASE`): a plugin stuck in a deadlock."""
    RELEASE.wait()
    return input.sum()


def raising_loss(input: Tensor) -> Tensor:
    """A plugin bug: raises something that is not about the inputs."""
    raise KeyError("a plugin bug")


def nan_loss(input: Tensor) -> Tensor:
    """Finite inputs, non-finite value and gradient (0 * log(0) style)."""
    return (input * torch.log(input - input)).sum()


def oom_loss(input: Tensor) -> Tensor:
    """What torch raises when a CUDA allocation fails (simulated, so CPU-only CI sees it too)."""
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 PiB (simulated)")


FAULT_LOSSES = {
    "slow_loss": slow_loss,
    "hanging_loss": hanging_loss,
    "raising_loss": raising_loss,
    "nan_loss": nan_loss,
    "oom_loss": oom_loss,
}


class FaultSettings(Settings):
    """Settings whose registry also holds the misbehaving losses (as a test plugin would)."""

    def build_registry(self) -> LossRegistry:
        registry = super().build_registry()
        for name, fn in FAULT_LOSSES.items():
            registry.register(fn, name, distribution="lossreg-faults")
        return registry


class _ThreadServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # signals belong to pytest's main thread
        pass


@dataclass
class Running:
    """A server running in a thread: its URL, and the handle to stop it."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self, timeout: float = 15.0) -> None:
        """Ask uvicorn to stop (as SIGTERM does) and wait until it has."""
        self.server.should_exit = True
        self.thread.join(timeout)


@contextlib.contextmanager
def running(settings: Settings, *, graceful_s: float = 10.0) -> Iterator[Running]:
    """Like `tests.integration._server.serve`, but hands back the server to stop it by hand."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="critical",
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=graceful_s,
    )
    server = _ThreadServer(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive(), "the server failed to start"
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    handle = Running(f"http://127.0.0.1:{port}", server, thread)
    try:
        wait_ready(handle.url, deadline)
        yield handle
    finally:
        handle.stop()


def raw_request(url: str, data: bytes, *, close_after: float | None = None) -> bytes:
    """Send bytes as they are on a fresh connection; the answer's first bytes (b"" if none).

    ``close_after``: close the socket after that many seconds without reading (a client that
    goes away).
    """
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        if close_after is not None:
            time.sleep(close_after)
            return b""
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks):
                    break
        except (ConnectionResetError, TimeoutError):
            pass
        return b"".join(chunks)


def status_of(answer: bytes) -> int:
    """The status code of a raw HTTP answer."""
    assert answer.startswith(b"HTTP/1.1 "), answer[:80]
    return int(answer.split(b" ", 2)[1])


X = (np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5) / 3
Y = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)


def binary_body(
    arrays: dict[str, np.ndarray], **parameters: object
) -> tuple[bytes, dict[str, str]]:
    """A KServe v2 binary request for ``arrays`` (binary outputs asked for)."""
    entries, buffers = [], []
    for name, array in arrays.items():
        entry, raw = encode_tensor(name, array, binary=True)
        entries.append(entry)
        buffers.append(raw)
    header = {"inputs": entries, "parameters": {"binary_data_output": True, **parameters}}
    body, length = encode_body(header, buffers)
    return body, {"Inference-Header-Content-Length": str(length)}


def assert_still_serving(http: httpx.Client) -> None:
    """A valid request gets the value and gradient plain torch computes."""
    x = torch.from_numpy(X).requires_grad_(True)
    expected = torch.nn.functional.mse_loss(x, torch.from_numpy(Y))
    (grad,) = torch.autograd.grad(expected, [x])
    r = http.post(
        "/v1/losses/mse_loss/evaluate",
        json={"inputs": {"input": X.tolist(), "target": Y.tolist()}},
    )
    assert r.status_code == 200, r.text
    assert np.float32(r.json()["loss"]) == expected.detach().numpy()
    np.testing.assert_array_equal(np.asarray(r.json()["grads"]["input"], np.float32), grad.numpy())
