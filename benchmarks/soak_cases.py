"""The soak test's request mix: each request with its expected status, and a check of the answer
against values computed beforehand with plain torch (see ``soak.py``)."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import torch
import torch.nn.functional as F

from lossreg.protocol import encode_body, encode_tensor

__all__ = ["Case", "build_cases"]

Check = Callable[[httpx.Response], None]


@dataclasses.dataclass
class Case:
    """One request to replay: what to send, the status to expect, and how to check the answer."""

    name: str
    kind: str  # "small", "big" or "invalid": latency is reported per kind
    weight: float
    path: str
    body: bytes
    headers: dict[str, str]
    status: int
    check: Check


def _grads(fn: Callable[..., torch.Tensor], inputs: dict[str, torch.Tensor], wrt: list[str]) -> Any:
    leaves = {k: v.clone().requires_grad_(k in wrt) for k, v in inputs.items()}
    value = fn(**leaves)
    grads = torch.autograd.grad(value, [leaves[k] for k in wrt]) if wrt else ()
    return value.detach().numpy(), {k: g.numpy() for k, g in zip(wrt, grads)}


def _close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    if got.shape != want.shape:
        raise AssertionError(f"{what}: shape {got.shape}, expected {want.shape}")
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6, err_msg=what)


def _binary_case(
    name: str, kind: str, weight: float, loss: str, inputs: dict[str, torch.Tensor], **params: Any
) -> Case:
    """A v2 request with binary inputs and outputs, checked against ``F.<loss>``."""
    wrt = ["input"]
    value, grads = _grads(lambda **t: getattr(F, loss)(**t, **params), inputs, wrt)
    entries, buffers = [], []
    for key, tensor in inputs.items():
        entry, raw = encode_tensor(key, tensor.numpy(), binary=True)
        entries.append(entry)
        buffers.append(raw)
    header = {"inputs": entries, "parameters": {"binary_data_output": True, **params}}
    body, length = encode_body(header, buffers)

    def check(r: httpx.Response) -> None:
        size = int(r.headers["Inference-Header-Content-Length"])
        head = json.loads(r.content[:size])
        offset = size
        got = {}
        for out in head["outputs"]:
            n = out["parameters"]["binary_data_size"]
            dtype = np.float32 if out["datatype"] == "FP32" else np.float64
            got[out["name"]] = np.frombuffer(r.content[offset : offset + n], dtype).reshape(
                out["shape"]
            )
            offset += n
        _close(got["loss"], value, f"{name}: loss")
        _close(got["grad_input"], grads["input"], f"{name}: grad_input")

    headers = {"Inference-Header-Content-Length": str(length)}
    return Case(name, kind, weight, f"/v2/models/{loss}/infer", body, headers, 200, check)


def _json_cross_entropy(g: torch.Generator) -> Case:
    logits, target = torch.randn(8, 5, generator=g), torch.randint(0, 5, (8,), generator=g)
    weight = torch.rand(5, generator=g) + 0.5
    value, grads = _grads(
        lambda **t: F.cross_entropy(**t),
        {"input": logits, "target": target, "weight": weight},
        ["input"],
    )
    tensors = [("input", logits, "FP32"), ("target", target, "INT64"), ("weight", weight, "FP32")]
    body = {
        "inputs": [
            {"name": n, "shape": list(t.shape), "datatype": d, "data": t.reshape(-1).tolist()}
            for n, t, d in tensors
        ]
    }

    def check(r: httpx.Response) -> None:
        out = {o["name"]: o for o in r.json()["outputs"]}
        _close(np.float32(out["loss"]["data"]).reshape([]), value, "cross_entropy: loss")
        got = np.asarray(out["grad_input"]["data"], np.float32).reshape(8, 5)
        _close(got, grads["input"], "cross_entropy: grad_input")

    path = "/v2/models/cross_entropy/infer"
    return Case(
        "v2-json-cross_entropy", "small", 3, path, json.dumps(body).encode(), {}, 200, check
    )


def _v1_cases(g: torch.Generator) -> list[Case]:
    x, y = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    inputs = {"input": x, "target": y}
    smooth, smooth_grads = _grads(lambda **t: F.smooth_l1_loss(**t, beta=0.5), inputs, ["input"])

    def check_smooth(r: httpx.Response) -> None:
        _close(np.float32(r.json()["loss"]).reshape([]), smooth, "smooth_l1: loss")
        got = np.asarray(r.json()["grads"]["input"], np.float32)
        _close(got, smooth_grads["input"], "smooth_l1: grad")

    evaluate = {"inputs": {"input": x.tolist(), "target": y.tolist()}, "params": {"beta": 0.5}}
    total, total_grads = _grads(
        lambda **t: F.mse_loss(**t) + 0.5 * F.l1_loss(**t), inputs, ["input"]
    )
    typed = {
        "dtype": "float32",
        "shape": list(x.shape),
        "b64": base64.b64encode(x.numpy().tobytes()).decode(),
    }
    compose = {
        "terms": [{"loss": "mse_loss"}, {"loss": "l1_loss", "weight": 0.5}],
        "inputs": {"input": typed, "target": y.tolist()},
    }

    def check_compose(r: httpx.Response) -> None:
        _close(np.float32(r.json()["loss"]).reshape([]), total, "composition: loss")
        raw = base64.b64decode(r.json()["grads"]["input"]["b64"])
        got = np.frombuffer(raw, np.float32).reshape(16, 8)
        _close(got, total_grads["input"], "composition: grad")

    return [
        Case(
            "v1-smooth_l1",
            "small",
            3,
            "/v1/losses/smooth_l1_loss/evaluate",
            json.dumps(evaluate).encode(),
            {"Content-Type": "application/json"},
            200,
            check_smooth,
        ),
        Case(
            "v1-composition",
            "small",
            2,
            "/v1/evaluate",
            json.dumps(compose).encode(),
            {"Content-Type": "application/json"},
            200,
            check_compose,
        ),
    ]


def _invalid_cases(g: torch.Generator, bomb: bool) -> list[Case]:
    def refused(code: str) -> Check:
        def check(r: httpx.Response) -> None:
            if r.json().get("code") != code:
                raise AssertionError(f"expected code {code}, got {r.text[:200]}")

        return check

    x = torch.randn(4, 3, generator=g)
    nan = x.clone()
    nan[0, 0] = float("nan")
    nan_case = _binary_case("nan", "invalid", 1, "mse_loss", {"input": x, "target": x})
    nan_body, length = encode_body(
        {
            "inputs": [
                encode_tensor("input", nan.numpy(), binary=True)[0],
                encode_tensor("target", x.numpy(), binary=True)[0],
            ]
        },
        [nan.numpy().tobytes(), x.numpy().tobytes()],
    )
    mismatch = {"inputs": {"input": [[1.0, 2.0]], "target": [1.0, 2.0, 3.0]}}
    cases = [
        Case(
            "unknown-loss",
            "invalid",
            1,
            "/v2/models/no_such_loss/infer",
            nan_case.body,
            nan_case.headers,
            404,
            refused("loss_not_found"),
        ),
        Case(
            "shape-mismatch",
            "invalid",
            1,
            "/v1/losses/mse_loss/evaluate",
            json.dumps(mismatch).encode(),
            {},
            422,
            refused("shape_mismatch"),
        ),
        Case(
            "malformed-json",
            "invalid",
            1,
            "/v1/evaluate",
            b'{"terms": [',
            {},
            400,
            refused("invalid_request"),
        ),
        Case(
            "nan-input",
            "invalid",
            1,
            "/v2/models/mse_loss/infer",
            nan_body,
            {"Inference-Header-Content-Length": str(length)},
            422,
            refused("non_finite"),
        ),
    ]
    if bomb:
        payload = gzip.compress(b" " * (80 * 1024 * 1024), compresslevel=9)
        cases.append(
            Case(
                "gzip-bomb",
                "invalid",
                0.3,
                "/v2/models/mse_loss/infer",
                payload,
                {"Content-Encoding": "gzip"},
                413,
                refused("payload_too_large"),
            )
        )
    return cases


def build_cases(big_mb: float, bomb: bool, seed: int) -> list[Case]:
    """The request mix; each expected answer computed here with plain torch."""
    g = torch.Generator().manual_seed(seed)
    n_big = max(1, int(big_mb * 1024 * 1024 / 8))  # two float32 tensors of n_big: big_mb MB
    cases = [
        _binary_case(
            "v2-bin-mse",
            "small",
            4,
            "mse_loss",
            {"input": torch.randn(64, 32, generator=g), "target": torch.randn(64, 32, generator=g)},
        ),
        _binary_case(
            "v2-bin-bce-logits",
            "small",
            2,
            "binary_cross_entropy_with_logits",
            {"input": torch.randn(32, 16, generator=g), "target": torch.rand(32, 16, generator=g)},
        ),
        _binary_case(
            "v2-bin-huber-f64",
            "small",
            2,
            "huber_loss",
            {
                "input": torch.randn(128, generator=g, dtype=torch.float64),
                "target": torch.randn(128, generator=g, dtype=torch.float64),
            },
            delta=0.7,
        ),
        _json_cross_entropy(g),
        *_v1_cases(g),
        _binary_case(
            f"v2-bin-mse-{big_mb:g}MB",
            "big",
            1,
            "mse_loss",
            {"input": torch.randn(n_big, generator=g), "target": torch.randn(n_big, generator=g)},
        ),
    ]
    return cases + _invalid_cases(g, bomb)
