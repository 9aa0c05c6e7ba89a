"""CPU-heavy body work (compressing a response, inflating a request) runs off the event loop,
so one big gzip exchange never stalls the other requests."""

from __future__ import annotations

import asyncio
import gzip

import httpx
import numpy as np
import pytest

from lossreg_service.server import body


def _record(monkeypatch: pytest.MonkeyPatch, name: str) -> list[bool]:
    """Wrap ``body.<name>``; record for each call whether it ran on a thread with a live loop."""
    on_loop: list[bool] = []
    original = getattr(body, name)

    def wrapper(*args, **kwargs):
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return original(*args, **kwargs)

    monkeypatch.setattr(body, name, wrapper)
    return on_loop


def _request() -> dict:
    x = np.random.default_rng(0).standard_normal((64, 32)).round(3).tolist()
    return {"inputs": {"input": x, "target": x}, "grad": ["input"]}


def test_response_compression_runs_in_a_worker_thread(server_url, monkeypatch):
    on_loop = _record(monkeypatch, "_compress")
    r = httpx.post(
        f"{server_url}/v1/losses/mse_loss/evaluate",
        json=_request(),
        headers={"Accept-Encoding": "gzip"},
    )
    assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
    assert r.json()["loss"] == 0.0
    assert on_loop == [False]


def test_request_inflation_runs_in_a_worker_thread(server_url, monkeypatch):
    import orjson

    on_loop = _record(monkeypatch, "_inflate")
    r = httpx.post(
        f"{server_url}/v1/losses/mse_loss/evaluate",
        content=gzip.compress(orjson.dumps(_request())),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text
    assert on_loop and not any(on_loop)
