"""An in-process lossreg server for client unit tests, behind ``httpx.MockTransport``.

It answers with the server's own decoding, engine and encoding (no HTTP, no threads), so the
client's framing and parsing are checked against the real thing, while a test can count the
requests and inject failures: a queued ``httpx.Response`` is answered as is, a queued exception
is raised as the transport's.
"""

from __future__ import annotations

import functools
import urllib.parse
from typing import Any

import httpx
import torch

from lossreg.errors import InvalidRequest, LossRegError
from lossreg.protocol import HEADER_LENGTH, LossListResponse
from lossreg_service.engine import Term
from lossreg_service.registry import LossRegistry
from lossreg_service.server.catalog import spec_response
from lossreg_service.server.dataplane import Computation, compute
from lossreg_service.server.inference import decode_request, encode_response
from lossreg_service.settings import Settings

__all__ = ["FakeServer", "registry"]


@functools.cache
def registry() -> LossRegistry:
    """The built-in losses, discovered once per test session."""
    return Settings().build_registry()


class FakeServer:
    """A callable for ``httpx.MockTransport`` (sync) that serves the v1 catalog and v2 infer."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.bodies: list[bytes] = []
        self.queue: list[httpx.Response | Exception] = []

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    def async_transport(self) -> httpx.MockTransport:
        async def handle(request: httpx.Request) -> httpx.Response:
            await request.aread()
            return self(request)

        return httpx.MockTransport(handle)

    def paths(self) -> list[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = request.read()
        self.bodies.append(body)
        if self.queue:
            item = self.queue.pop(0)
            if isinstance(item, Exception):
                raise item
            return item
        try:
            return self._route(request, body)
        except LossRegError as exc:
            return httpx.Response(exc.status_code, json=exc.to_dict())

    def _route(self, request: httpx.Request, body: bytes) -> httpx.Response:
        parts = [urllib.parse.unquote(p) for p in request.url.raw_path.decode().split("/")[1:]]
        parts[-1] = parts[-1].split("?")[0]
        if request.method == "GET" and parts == ["v2", "health", "live"]:
            return httpx.Response(200, json={"live": True})
        if request.method == "GET" and parts == ["v2", "health", "ready"]:
            return httpx.Response(200, json={"ready": True})
        if request.method == "GET" and parts == ["v1", "losses"]:
            pattern = request.url.params.get_list("pattern") or None
            specs = registry().list(pattern, tags=request.url.params.get_list("tag"))
            listing = LossListResponse(losses=[spec_response(s) for s in specs], count=len(specs))
            return httpx.Response(200, json=listing.model_dump(mode="json"))
        if request.method == "GET" and parts[:2] == ["v1", "losses"] and len(parts) == 3:
            spec = spec_response(registry().spec(parts[2]))
            return httpx.Response(200, json=spec.model_dump(mode="json"))
        if request.method == "POST" and parts[:2] == ["v2", "models"] and parts[-1] == "infer":
            return self._infer(parts[2], request, body)
        raise InvalidRequest(f"the fake server has no route {request.method} {parts}")

    def _infer(self, name: str, request: httpx.Request, body: bytes) -> httpx.Response:
        loss = registry().get(name)
        decoded = decode_request(loss.spec, bytearray(body), request.headers.get(HEADER_LENGTH))
        computation = Computation(
            [Term(loss, decoded.params)],
            decoded.inputs,
            grad=decoded.plan.grad,
            grad_loss=decoded.grad_loss,
        )
        result = compute(computation, torch.device("cpu"))
        chunks, length = encode_response(loss.spec, decoded, result.loss, result.grads)
        headers: dict[str, Any] = {"Content-Type": "application/octet-stream"}
        if length is not None:
            headers[HEADER_LENGTH] = str(length)
        return httpx.Response(200, headers=headers, content=b"".join(bytes(c) for c in chunks))
