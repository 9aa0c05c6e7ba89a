"""Security: nothing a client sends is unpickled or executed, API keys guard every compute and
catalog route (found by walking the route table, so a new route cannot slip through), and every
limit has the safe default the README's tables state (read from README.md)."""

from __future__ import annotations

import ast
import base64
import io
import json
import os
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi.routing import iter_route_contexts
from starlette.routing import Route

import lossreg
import lossreg_service
from lossreg.errors import InvalidTensor
from lossreg.protocol.tensors import check_shape
from lossreg_service.server import create_app
from lossreg_service.settings import Settings, cpu_cores
from tests.support.readme import documented_defaults, parse_default, tables

from ._harness import X, Y, assert_still_serving, binary_body, running

# -- no pickle ----------------------------------------------------------------------------------


class _Armed:
    """Unpickling this creates the directory ``marker``: proof that someone called pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


@pytest.fixture()
def payload(tmp_path: Path) -> tuple[bytes, Path]:
    """``torch.save`` bytes of a tensor plus an object whose unpickling leaves a file behind."""
    armed = tmp_path / "armed"
    buffer = io.BytesIO()
    torch.save({"tensor": torch.ones(4), "armed": _Armed(armed)}, buffer)
    torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)  # the payload is live:
    assert armed.is_dir()
    marker = tmp_path / "unpickled"
    buffer = io.BytesIO()
    torch.save({"tensor": torch.ones(4), "armed": _Armed(marker)}, buffer)
    return buffer.getvalue(), marker


@pytest.fixture()
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every way in-process code could unpickle, replaced by a recorder that refuses."""
    calls: list[str] = []

    def refuse(name: str) -> Any:
        def spy(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"{name} called while serving a request")

        return spy

    for module, name in [
        (pickle, "loads"),
        (pickle, "load"),
        (pickle, "Unpickler"),
        (torch, "load"),
    ]:
        monkeypatch.setattr(module, name, refuse(f"{module.__name__}.{name}"))
    yield calls


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running(Settings(device="cpu", log_level="critical")) as server:
        yield server.url


def _framed(entries: list[dict[str, Any]], data: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps({"inputs": entries}).encode()
    return head + data, {"Inference-Header-Content-Length": str(len(head))}


def test_torch_pickled_payloads_are_refused_and_never_unpickled(
    url: str, payload: tuple[bytes, Path], no_unpickling: list[str]
) -> None:
    data, marker = payload
    size = {"binary_data_size": len(data)}
    as_bytes = {"name": "input", "shape": [1], "datatype": "BYTES", "parameters": size}
    as_float = {"name": "input", "shape": [1], "datatype": "FP32", "parameters": size}
    as_uint8 = {"name": "input", "shape": [len(data)], "datatype": "UINT8", "parameters": size}
    target = {"name": "target", "shape": [len(data)], "datatype": "UINT8", "parameters": size}
    b64 = base64.b64encode(data).decode()
    attempts: list[tuple[str, bytes, dict[str, str]]] = [
        ("/v2/models/mse_loss/infer", data, {"Content-Type": "application/octet-stream"}),
        ("/v2/models/mse_loss/infer", data, {"Inference-Header-Content-Length": "0"}),
        ("/v2/models/mse_loss/infer", *_framed([as_bytes], data)),
        ("/v2/models/mse_loss/infer", *_framed([as_float], data)),
        ("/v2/models/mse_loss/infer", *_framed([as_uint8, target], data + data)),
        ("/v1/losses/mse_loss/evaluate", data, {"Content-Type": "application/x-python-pickle"}),
        ("/v1/evaluate", data, {"Content-Type": "application/octet-stream"}),
    ]
    for dtype, shape in (("float32", [1]), ("object", [1]), ("pickle", [len(data)])):
        value = {"dtype": dtype, "shape": shape, "b64": b64}
        body = json.dumps({"inputs": {"input": value, "target": [1.0]}}).encode()
        attempts.append(("/v1/losses/mse_loss/evaluate", body, {}))
    with httpx.Client(base_url=url, timeout=30) as http:
        for path, body, headers in attempts:
            r = http.post(path, content=body, headers=headers)
            assert 400 <= r.status_code < 500, (path, headers, r.text)
            assert r.json()["code"] in ("invalid_request", "invalid_tensor", "invalid_input")
        assert_still_serving(http)
    assert not marker.exists(), "the payload was unpickled"
    assert no_unpickling == []


FORBIDDEN_MODULES = {"pickle", "_pickle", "cPickle", "dill", "marshal", "shelve", "joblib"}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "torch.load"}
NUMPY_LOADS = {"np.load", "numpy.load"}  # allowed only with allow_pickle=False


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


@pytest.mark.parametrize("package", [lossreg, lossreg_service], ids=lambda p: p.__name__)
def test_no_code_path_can_unpickle_or_evaluate(package: Any) -> None:
    """Statically: no module imports a pickle-like loader or calls eval/exec/torch.load."""
    found = []
    for path in Path(package.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [(node.module or "").split(".")[0]]
            elif isinstance(node, ast.Call):
                names = [_dotted(node.func)]
                pickle_off = any(
                    k.arg == "allow_pickle"
                    and isinstance(k.value, ast.Constant)
                    and k.value.value is False
                    for k in node.keywords
                )
                if (
                    names[0] in NUMPY_LOADS or "allow_pickle" in {k.arg for k in node.keywords}
                ) and (not pickle_off):
                    names.append("allow_pickle")
            else:
                continue
            bad = [n for n in names if n in FORBIDDEN_MODULES | FORBIDDEN_CALLS | {"allow_pickle"}]
            found += [f"{path.name}:{node.lineno}: {n}" for n in bad]
    assert found == []


# -- auth on every route ------------------------------------------------------------------------

KEY = "reliability-key"
OPEN = {
    "/v2/health/live",  # orchestrators' probes
    "/v2/health/ready",
    "/v2",  # server metadata: name, version, extensions
    "/metrics",  # Prometheus scrapes
    "/openapi.json",  # the document (routes only, no loss catalog)
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/",  # the loss explorer's page and files: no catalog; its API calls carry the key
    "/explore",
    "/explore/static/{asset}",
    "/docs/static/{asset}",  # Swagger UI / ReDoc assets, vendored (no CDN)
}
PATH_VALUES = {"name": "mse_loss", "version": "0.1.0"}
ASSETS = {"/explore/static/{asset}": "explorer.js", "/docs/static/{asset}": "favicon.png"}


def _routes() -> list[tuple[str, str]]:
    """Every (method, path) the app serves, included routers flattened."""
    app = create_app(Settings(device="cpu", log_level="critical", api_keys=[KEY]))
    out = []
    for context in iter_route_contexts(app.routes):
        assert isinstance(context.route, Route), f"{context.route!r} needs its own auth check"
        for method in sorted((context.methods or set()) - {"HEAD"}):
            out.append((method, context.path))
    return out


ROUTES = _routes()


@pytest.fixture(scope="module")
def keyed_url() -> Iterator[str]:
    with running(Settings(device="cpu", log_level="critical", api_keys=[KEY])) as server:
        yield server.url


def test_the_route_table_has_guarded_compute_and_catalog_routes() -> None:
    guarded = {path for _, path in ROUTES if path not in OPEN}
    assert {"/v1/losses", "/v1/evaluate", "/v2/models/{name}/infer"} <= guarded
    prefixes = ("/v1", "/v2/models", "/v2/repository", "/v2/systemsharedmemory")
    assert all(path.startswith(prefixes) for path in guarded), guarded


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_every_route_outside_the_open_list_needs_a_valid_key(
    keyed_url: str, method: str, path: str
) -> None:
    target = keyed_url + path.format(**PATH_VALUES, asset=ASSETS.get(path, ""))
    body = b"{}" if method == "POST" else None
    if path in OPEN:
        assert httpx.request(method, target, content=body).status_code == 200
        return
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.request(method, target, content=body, headers=headers)
        assert r.status_code == 401 and r.json()["code"] == "unauthorized", (headers, r.text)
    ok = httpx.request(method, target, content=body, headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code != 401, ok.text


# -- limits ------------------------------------------------------------------------------------

MIB = 1024 * 1024
LIMITS: dict[str, tuple[Any, str]] = {
    # setting: (the most a safe default may be, what it bounds); the defaults are the README's
    "max_request_bytes": (1024 * MIB, "request body, after decompression (413)"),
    "compute_threads": (8, "computations at once per device"),
    "max_queue": (1024, "requests waiting per device before 503 + Retry-After"),
    "compute_timeout_s": (600.0, "queue wait + compute before 504"),
    "retry_after_s": (60.0, "Retry-After sent with 503"),
    "workers": (cpu_cores(), "uvicorn worker processes (0: one per core)"),
    "compress_min_bytes": (1 * MIB, "smallest response compressed on request"),
    "batch_max_size": (1024, "requests in one dynamic batch"),
    "batch_max_delay_us": (100_000, "wait for a batch to fill (0: none)"),
    "batch_max_bytes": (1 * MIB, "largest request body that is batched"),
    "inline_max_bytes": (1 * MIB, "largest first-party computation on the event loop"),
    "intra_op_threads": (64, "torch threads per computation (0: every core)"),
    "max_header_bytes": (1 * MIB, "request line + headers (431)"),
    "max_headers": (1000, "header fields per request (431)"),
    "client_header_timeout_s": (120.0, "time to send a request head, then closed"),
    "client_body_timeout_s": (120.0, "pause between body reads, then closed"),
    "keep_alive_timeout_s": (120.0, "idle keep-alive, then closed"),
    "max_connections": (0, "open connections per worker (0: descriptor limit - 128)"),
    "max_body_bytes_in_flight": (0, "body bytes received or held (0: memory / 4 / workers)"),
    "client_body_min_rate": (1 * MIB, "bytes/s under which an upload gives way"),
}
LIMIT_WORDS = ("max_", "timeout", "_bytes", "threads", "queue", "workers", "retry")


def test_every_limit_has_a_documented_safe_default() -> None:
    defaults = Settings()
    readme = documented_defaults()
    for name, (ceiling, _) in LIMITS.items():
        value = getattr(defaults, name)  # as resolved (workers: 0 becomes the core count)
        declared = Settings.model_fields[name].default
        documented = readme.get(f"LOSSREG_{name.upper()}")
        assert documented, f"{name}: the README's tables do not give its default"
        assert all(d == declared for d in documented), f"{name}: {declared}, README: {documented}"
        low = 0 if value == 0 else 1  # a documented 0 means "none" or "automatic"
        assert low <= value <= ceiling, f"{name}: default {value} is not a safe limit"
    undocumented = [
        name
        for name in Settings.model_fields
        if any(word in name for word in LIMIT_WORDS) and name not in LIMITS
    ]
    assert undocumented == [], "add these limits to LIMITS (and the README's table)"


def test_safe_behaviour_defaults() -> None:
    defaults = Settings()
    assert defaults.host == "127.0.0.1"  # nothing listens beyond the machine unless asked
    assert defaults.nonfinite == "reject"  # NaN never flows back silently


def _fixed_limit(words: str) -> int:
    """The README limits table's value for the fixed limit whose row starts with ``words``."""
    rows = [row for table in tables() for row in table if row[0].startswith(words)]
    assert len(rows) == 1, f"the README's limits table has one row for {words!r}"
    value = rows[0][2].replace("`", "")
    power = re.fullmatch(r"2\*\*(\d+)", value)
    return 2 ** int(power.group(1)) if power else parse_default(value)


def test_shape_limits_are_the_readme_s() -> None:
    """A tensor may declare the README's rank and no more; an empty tensor's other sizes may
    multiply to the README's bound and no more (each refusal names the tensor)."""
    rank = _fixed_limit("tensor rank")
    elements = _fixed_limit("an empty tensor's other sizes")
    assert check_shape("x", [1] * rank) == (1,) * rank
    assert check_shape("x", [elements, 0]) == (elements, 0)
    for shape in ([1] * (rank + 1), [elements + 1, 0], [elements, 2, 0]):
        with pytest.raises(InvalidTensor) as excinfo:
            check_shape("x", shape)
        assert excinfo.value.field == "x"


def test_a_small_cap_is_enforced_on_every_compute_route(tmp_path: Path) -> None:
    settings = Settings(device="cpu", log_level="critical", max_request_bytes=4096)
    with running(settings) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        body, headers = binary_body({"input": np.zeros(2048, np.float32), "target": Y})
        for path in ("/v2/models/mse_loss/infer", "/v1/losses/mse_loss/evaluate", "/v1/evaluate"):
            r = http.post(path, content=body, headers=headers)
            assert r.status_code == 413 and r.json()["limit"] == 4096, r.text
        small = {"inputs": {"input": X.tolist(), "target": Y.tolist()}}
        assert http.post("/v1/losses/mse_loss/evaluate", json=small).status_code == 200
