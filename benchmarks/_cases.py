"""The payloads, and one request function per way of computing a loss's value and gradient.

Each ``make_*`` returns a zero-argument callable that computes the case once and returns the
gradient as a NumPy array; the benchmark checks that gradient against the in-process one
before timing anything, so every number in the table is the time of a correct answer.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import statistics
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np

__all__ = ["CASES", "CLEANUP", "Case", "InProcess", "Timed", "Timing", "cases", "time_calls"]

Call = Callable[[], np.ndarray]
CLEANUP: list[Callable[[], None]] = []
"""What to undo when the servers go away (shared-memory regions), last first."""


@dataclasses.dataclass(frozen=True)
class Case:
    """One payload: a loss, its inputs (the first one differentiated), its parameters."""

    label: str
    loss: str
    inputs: dict[str, np.ndarray]
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    baseline_route: str = "/ce"

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data sent (inputs) per request."""
        return sum(a.nbytes for a in self.inputs.values())

    @property
    def grad_name(self) -> str:
        return next(iter(self.inputs))


def _ce(batch: int, classes: int) -> Case:
    rng = np.random.default_rng(batch * 7919 + classes)
    return Case(
        f"CE {batch}x{classes}",
        "cross_entropy",
        {
            "input": rng.standard_normal((batch, classes), dtype=np.float32),
            "target": rng.integers(0, classes, batch, dtype=np.int64),
        },
    )


def _segmentation() -> Case:
    rng = np.random.default_rng(16)
    shape = (16, 1, 256, 256)
    return Case(
        "Dice 16x1x256x256",
        "dice",
        {
            "input": rng.standard_normal(shape, dtype=np.float32),
            "target": (rng.random(shape) > 0.5).astype(np.float32),
        },
        {"mode": "binary"},
        baseline_route="/dice",
    )


CASES = {
    "ce32": lambda: _ce(32, 10),
    "ce256": lambda: _ce(256, 100),
    "ce1k": lambda: _ce(1024, 1000),
    "ce4k": lambda: _ce(4096, 1000),
    "seg": _segmentation,
}


def cases(names: list[str]) -> list[Case]:
    return [CASES[n]() for n in names]


@dataclasses.dataclass
class Timing:
    """Seconds per call of one method on one case."""

    seconds: list[float]
    note: str = ""

    @property
    def median_ms(self) -> float:
        return statistics.median(self.seconds) * 1e3

    @property
    def p90_ms(self) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1e3


class Timed:
    """A method that times itself (in its own process): ``timed(n)`` runs it ``n`` times."""

    def timed(self, n: int) -> list[float]:  # pragma: no cover - an interface
        raise NotImplementedError


def time_interleaved(
    calls: dict[str, tuple[Callable[[], Any] | Timed, int]], *, block: int, budget_s: float
) -> dict[str, Timing]:
    """Time several calls in interleaved blocks, each up to its own number of runs.

    A round gives every method a block of back-to-back calls and records all but the first
    (which re-warms what the other methods cooled: caches, sleeping threads, an idle vCPU), so
    each method is timed warm, and the machine's drift over the run (other processes, the
    host) hits every method alike: the ratios stay honest. Stops after ``budget_s`` (at least
    3 rounds), or when every method has its runs. A method allowed 3 runs or fewer gets them
    one per round, unwarmed (it takes seconds; a warm-up call would not change it).
    """
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    deadline = time.perf_counter() + budget_s
    rounds = 0
    while any(len(seconds[n]) < runs for n, (_, runs) in calls.items()):
        for name, (call, runs) in calls.items():
            if len(seconds[name]) >= runs:
                continue
            n = min(block, runs - len(seconds[name])) if runs > 3 else 1
            seconds[name].extend(_run_block(call, n, warm=runs > 3))
        rounds += 1
        if rounds >= 3 and time.perf_counter() > deadline:
            break
    return {name: Timing(s) for name, s in seconds.items()}


def _run_block(call: Callable[[], Any] | Timed, n: int, *, warm: bool) -> list[float]:
    if isinstance(call, Timed):
        return call.timed(n + warm)[warm:]
    if warm:
        call()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def time_calls(call: Call, *, runs: int, budget_s: float, warmup: int = 2) -> Timing:
    """Time ``call`` ``runs`` times (fewer if ``budget_s`` runs out, at least 3)."""
    for _ in range(warmup):
        call()
    seconds: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(seconds) < runs and (len(seconds) < 3 or time.perf_counter() < deadline):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return Timing(seconds)


# -- the ways of computing it -----------------------------------------------------------------


def make_inprocess(case: Case, device: str = "cpu") -> Call:
    """The limit: the same loss through lossreg's engine, in this process, no HTTP (on a GPU:
    tensors already on it, the gradient brought back to the host, as a client gets it)."""
    import torch

    from lossreg_service.engine import evaluate
    from lossreg_service.registry import LossRegistry

    loss = LossRegistry.from_entry_points().get(case.loss)
    tensors = {n: torch.from_numpy(a).to(device) for n, a in case.inputs.items()}

    def call() -> np.ndarray:
        result = evaluate(loss, tensors, case.params, grad=[case.grad_name], device=device)
        return result.grads[case.grad_name].cpu().numpy()

    return call


class InProcess(Timed):
    """`make_inprocess` in a process of its own, as a training loop has it: what the
    benchmark itself allocates (clients, buffers, other methods) does not disturb its memory,
    and it times itself, so the pipe to it costs nothing measured."""

    def __init__(self, case: Case, device: str = "cpu") -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_inprocess_worker, args=(child, case, device),
                                    daemon=True)  # fmt: skip
        self._process.start()

    def gradient(self) -> np.ndarray:
        self._conn.send(("gradient", 0))
        return self._conn.recv()  # type: ignore[no-any-return]

    def timed(self, n: int) -> list[float]:
        self._conn.send(("time", n))
        return self._conn.recv()  # type: ignore[no-any-return]

    def close(self) -> None:
        self._conn.send(("stop", 0))
        self._process.join(timeout=10)


def _inprocess_worker(conn: Any, case: Case, device: str) -> None:
    call = make_inprocess(case, device)
    while True:
        command, n = conn.recv()
        if command == "stop":
            return
        if command == "gradient":
            conn.send(call().copy())
            continue
        out = []
        for _ in range(n):
            start = time.perf_counter()
            call()
            out.append(time.perf_counter() - start)
        conn.send(out)


def make_client(case: Case, url: str, **client_options: Any) -> Call:
    """lossreg's Python client (KServe v2 binary tensors), with torch tensors in and out."""
    import torch

    import lossreg

    client = lossreg.Client(url, **client_options)
    tensors = {n: torch.from_numpy(a) for n, a in case.inputs.items()}

    def call() -> np.ndarray:
        result = client.evaluate(case.loss, params=case.params, grad=[case.grad_name], **tensors)
        return result.grads[case.grad_name].numpy()

    return call


def make_tritonclient(case: Case, url: str) -> Call:
    """NVIDIA's ``tritonclient.http``, binary tensors both ways."""
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=600)
    inputs = []
    for name, array in case.inputs.items():
        datatype = "FP32" if array.dtype == np.float32 else "INT64"
        entry = triton.InferInput(name, list(array.shape), datatype)
        entry.set_data_from_numpy(array, binary_data=True)
        inputs.append(entry)
    outputs = [
        triton.InferRequestedOutput("loss", binary_data=True),
        triton.InferRequestedOutput("grad_" + case.grad_name, binary_data=True),
    ]

    def call() -> np.ndarray:
        result = client.infer(case.loss, inputs, outputs=outputs, parameters=case.params or None)
        return result.as_numpy("grad_" + case.grad_name)

    return call


def make_tritonclient_grpc(case: Case, target: str) -> Call:
    """NVIDIA's ``tritonclient.grpc``: raw tensors both ways, over lossreg's gRPC port."""
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(target)
    inputs = []
    for name, array in case.inputs.items():
        datatype = "FP32" if array.dtype == np.float32 else "INT64"
        entry = triton.InferInput(name, list(array.shape), datatype)
        entry.set_data_from_numpy(array)
        inputs.append(entry)
    outputs = [
        triton.InferRequestedOutput("loss"),
        triton.InferRequestedOutput("grad_" + case.grad_name),
    ]

    def call() -> np.ndarray:
        result = client.infer(case.loss, inputs, outputs=outputs, parameters=case.params or None)
        return result.as_numpy("grad_" + case.grad_name)

    return call


def make_shm(case: Case, url: str) -> Call:
    """System shared memory, as a co-located pipeline uses it: the tensors already live in
    registered regions (put there once, by tritonclient's own utilities), each request passes
    them by reference, and the gradient is written into an output region read in place."""
    import uuid

    import tritonclient.http as triton
    import tritonclient.utils.shared_memory as shm

    client = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=600)
    tag = uuid.uuid4().hex[:8]

    def region(name: str, size: int) -> Any:
        key = f"/lossreg-bench-{tag}-{name}"
        handle = shm.create_shared_memory_region(f"{tag}-{name}", key, size)
        client.register_system_shared_memory(f"{tag}-{name}", key, size)

        def undo() -> None:
            client.unregister_system_shared_memory(f"{tag}-{name}")
            shm.destroy_shared_memory_region(handle)

        CLEANUP.append(undo)
        return handle

    inputs = []
    for name, array in case.inputs.items():
        handle = region(name, array.nbytes)
        shm.set_shared_memory_region(handle, [array])
        datatype = "FP32" if array.dtype == np.float32 else "INT64"
        entry = triton.InferInput(name, list(array.shape), datatype)
        inputs.append(entry.set_shared_memory(f"{tag}-{name}", array.nbytes))
    grad = "grad_" + case.grad_name
    like = case.inputs[case.grad_name]
    out = region(grad, like.nbytes)
    outputs = [
        triton.InferRequestedOutput("loss", binary_data=True),
        triton.InferRequestedOutput(grad, binary_data=True),
    ]
    outputs[1].set_shared_memory(f"{tag}-{grad}", like.nbytes)

    def call() -> np.ndarray:
        client.infer(case.loss, inputs, outputs=outputs, parameters=case.params or None)
        return shm.get_contents_as_numpy(out, like.dtype, like.shape)

    return call


def make_json_api(case: Case, url: str) -> Call:
    """lossreg's ``/v1`` JSON API with nested lists, written as a user would (``tolist()``,
    httpx's ``json=``, ``response.json()``)."""
    http = httpx.Client(timeout=600)
    path = f"{url}/v1/losses/{case.loss}/evaluate"

    def call() -> np.ndarray:
        inputs = {n: a.tolist() for n, a in case.inputs.items()}
        body = {"inputs": inputs, "params": case.params, "grad": [case.grad_name]}
        answer = http.post(path, json=body)
        answer.raise_for_status()
        return np.asarray(answer.json()["grads"][case.grad_name], np.float32)

    return call


def make_baseline(case: Case, url: str) -> Call:
    """The hand-written FastAPI endpoint, called as a user would (``tolist()``, httpx's
    ``json=``, ``response.json()``): pydantic nested lists in and out."""
    http = httpx.Client(timeout=3600)

    def call() -> np.ndarray:
        body = {n: a.tolist() for n, a in case.inputs.items()}
        answer = http.post(url + case.baseline_route, json=body)
        answer.raise_for_status()
        return np.asarray(answer.json()["grad"], np.float32)

    return call


def make_litserve(case: Case, url: str) -> Call:
    """LitServe: the tensors' bytes in a multipart form, the gradient's bytes back."""
    http = httpx.Client(timeout=600)
    shape = ",".join(str(d) for d in case.inputs["input"].shape)

    def call() -> np.ndarray:
        files = {n: (n, a.tobytes()) for n, a in case.inputs.items()}
        answer = http.post(url + "/predict", files=files, data={"shape": shape, "loss": case.loss})
        answer.raise_for_status()
        return np.frombuffer(answer.content, np.float32).reshape(case.inputs["input"].shape)

    return call


def make_empty(url: str) -> Callable[[], None]:
    """A POST to an endpoint that does nothing, through the HTTP stack lossreg's client uses:
    what any request costs at least."""
    from lossreg._transport import default_transport

    http = httpx.Client(timeout=60, transport=default_transport(httpx.URL(url)))

    def call() -> None:
        http.post(url + "/empty", content=b"").raise_for_status()

    return call


def make_tcp_floor(case: Case, url: str) -> Call:
    """Raw TCP: the case's request bytes there and its answer's bytes back, nothing else."""
    import socket
    import struct

    from .apps.echo import recv_exactly

    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body, _ = kserve_body(case)
    like = case.inputs[case.grad_name]
    answer = bytearray(like.nbytes + 256)  # the gradient and a JSON header
    view = memoryview(answer)

    def call() -> np.ndarray:
        sock.sendall(struct.pack("<QQ", len(body), len(answer)))
        sock.sendall(body)
        recv_exactly(sock, view)
        return np.frombuffer(answer, like.dtype, like.size).reshape(like.shape)

    return call


def kserve_body(case: Case) -> tuple[bytes, int]:
    """The case as one KServe v2 binary request body, and its JSON header's length."""
    from lossreg.protocol import encode_body, encode_tensor

    entries, buffers = [], []
    for name, array in case.inputs.items():
        entry, raw = encode_tensor(name, array, binary=True)
        entries.append(entry)
        buffers.append(raw)
    outputs = [
        {"name": out, "parameters": {"binary_data": True}}
        for out in ("loss", "grad_" + case.grad_name)
    ]
    header = {"inputs": entries, "outputs": outputs}
    if case.params:
        header["parameters"] = case.params
    body, length = encode_body(header, buffers)
    assert length is not None
    return body, length
