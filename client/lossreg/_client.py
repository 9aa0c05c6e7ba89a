"""`Client` and `AsyncClient`: the catalog, loss values and gradients from a lossreg server.

``BaseClient`` holds everything but the waiting: configuration, the spec cache, binding tensors
to input names, validation, and (through `_wire`) the request bodies and answer parsing.
`Client` and `AsyncClient` mirror each other method for method, as httpx's do::

    with lossreg.Client("http://127.0.0.1:8000") as client:
        result = client.evaluate("cross_entropy", logits, labels, grad=["input"])
        result.loss, result.grads["input"]

    async with lossreg.AsyncClient("http://127.0.0.1:8000") as client:
        result = await client.evaluate("mse_loss", input=pred, target=y)
"""

from __future__ import annotations

import os
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx
import numpy as np
import orjson

from . import _retry
from ._arrays import WireArray, to_wire
from ._config import DEFAULT_RETRIES, DEFAULT_TIMEOUT, Retries, Timeout
from ._models import ComposeResult, EvaluateResult
from ._transport import default_transport
from ._validation import check_grad, check_request, check_term
from ._wire import (
    BodyReader,
    Chunks,
    InferCall,
    compose_body,
    error_from_answer,
    infer_body,
    map_httpx_error,
    parse_compose,
    parse_infer,
    scalar_params,
)
from .errors import ServerBusy
from .protocol import ComposeTerm, LossListResponse, LossSpecResponse

__all__ = ["DEFAULT_URL", "AsyncClient", "BaseClient", "Client"]

DEFAULT_URL = "http://127.0.0.1:8000"
"""The server used when neither ``url`` nor ``LOSSREG_URL`` says otherwise."""

_NO_RETRIES = Retries(0)
TermLike = ComposeTerm | Mapping[str, Any] | str
"""A composition term: a `ComposeTerm`, its fields as a dict, or a bare loss name (weight 1)."""


class BaseClient:
    """The configuration and the I/O-free logic `Client` and `AsyncClient` share.

    Args:
        url: the server's base URL; default ``$LOSSREG_URL``, else ``http://127.0.0.1:8000``.
        api_key: sent as ``Authorization: Bearer <key>``; default ``$LOSSREG_API_KEY``.
        timeout: seconds per request phase (a number, None, or a `Timeout`).
        retries: retries of 503 answers and connection failures (a number or a `Retries`).
        validate: check tensors against the loss's cached spec before sending.
        headers: extra headers for every request.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | None | Timeout = DEFAULT_TIMEOUT,
        retries: int | Retries = DEFAULT_RETRIES,
        validate: bool = True,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        base = url or os.environ.get("LOSSREG_URL") or DEFAULT_URL
        self.url = httpx.URL(base if base.endswith("/") else base + "/")
        if self.url.scheme not in ("http", "https"):
            raise ValueError(f"lossreg server URL must be http(s)://..., got {base!r}")
        self.api_key = api_key if api_key is not None else os.environ.get("LOSSREG_API_KEY")
        self.timeout = Timeout(timeout)
        self.retries = Retries(retries)
        self.validate = validate
        self._headers = {"User-Agent": f"lossreg-python/{_version()}", **(headers or {})}
        if self.api_key:
            self._headers["Authorization"] = f"Bearer {self.api_key}"
        self._specs: dict[str, LossSpecResponse] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.url).rstrip('/')!r})"

    # -- requests --------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        chunks: Sequence[Any] | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        request_id: str | None = None,
    ) -> httpx.Request:
        """One attempt's request (rebuilt per attempt, so a retry resends the same body)."""
        merged = {**self._headers, "X-Request-ID": request_id or uuid.uuid4().hex}
        merged.update(headers or {})
        url = self.url.join(path)
        if params:
            url = url.copy_merge_params(params)
        if chunks is not None:
            # A body of unjoined chunks: httpx adds no headers then, so Host is ours to set
            # (the caller's headers carry the Content-Length).
            merged.setdefault("Host", url.netloc.decode("ascii"))
            return httpx.Request(method, url, headers=merged, stream=Chunks(chunks))
        if content is not None:
            merged.setdefault("Content-Type", "application/json")
        return httpx.Request(method, url, headers=merged, content=content)

    @staticmethod
    def _loss_path(name: str, suffix: str = "") -> str:
        return urllib.parse.quote(name, safe="") + suffix

    # -- binding and validation -------------------------------------------------------------------

    @staticmethod
    def _bind(
        name: str,
        spec: LossSpecResponse | None,
        tensors: Sequence[Any],
        named: Mapping[str, Any],
    ) -> dict[str, WireArray]:
        """Name the positional tensors after the spec's inputs (then tensor parameters)."""
        bound: dict[str, Any] = {}
        if tensors:
            assert spec is not None
            order = [t.name for t in spec.inputs] + [t.name for t in spec.tensor_params]
            if len(tensors) > len(order):
                raise TypeError(
                    f"{name} takes at most {len(order)} tensors ({', '.join(order)}), "
                    f"got {len(tensors)}"
                )
            bound.update(zip(order, tensors))
        for key, value in named.items():
            if key in bound:
                raise TypeError(f"{name} got two values for input {key!r}")
            if value is not None:
                bound[key] = value
        return {key: to_wire(key, value) for key, value in bound.items()}

    @staticmethod
    def _shapes(wires: Mapping[str, WireArray]) -> dict[str, tuple[tuple[int, ...], str]]:
        return {n: (w.shape, w.dtype_name) for n, w in wires.items()}

    def _prepare_infer(
        self,
        name: str,
        spec: LossSpecResponse | None,
        tensors: Sequence[Any],
        named: Mapping[str, Any],
        params: Mapping[str, Any] | None,
        grad: Sequence[str] | None,
        grad_loss: Any,
    ) -> InferCall:
        wires = self._bind(name, spec, tensors, named)
        params = scalar_params(params, kserve=True)
        if spec is not None and self.validate:
            check_request(spec, self._shapes(wires), params, grad)
        upstream = None if grad_loss is None else to_wire("grad_loss", grad_loss)
        return infer_body(name, wires, params, grad, upstream)

    def _prepare_compose(
        self,
        terms: Sequence[TermLike],
        specs: Sequence[LossSpecResponse] | None,
        tensors: Sequence[Any],
        named: Mapping[str, Any],
        grad: Sequence[str] | None,
    ) -> tuple[bytes, dict[str, WireArray]]:
        parsed = [self._term(t) for t in terms]
        wires = self._bind(parsed[0].loss, specs[0] if specs else None, tensors, named)
        if specs and self.validate:
            shapes = self._shapes(wires)
            for term, spec in zip(parsed, specs):
                check_term(spec, shapes, scalar_params(term.params, kserve=False))
            check_grad(specs, shapes, grad)
        body = [
            {**t.model_dump(exclude_none=True), "params": scalar_params(t.params, kserve=False)}
            for t in parsed
        ]
        return compose_body(body, wires, grad), wires

    @staticmethod
    def _term(term: TermLike) -> ComposeTerm:
        if isinstance(term, ComposeTerm):
            return term
        if isinstance(term, str):
            return ComposeTerm(loss=term)
        return ComposeTerm.model_validate(dict(term))

    def _needs_spec(self, tensors: Sequence[Any]) -> bool:
        return bool(tensors) or self.validate

    @staticmethod
    def _losses_query(pattern: str | None, tags: Sequence[str] | str | None) -> dict[str, Any]:
        query: dict[str, Any] = {}
        if pattern is not None:
            query["pattern"] = pattern
        if tags is not None:
            query["tag"] = [tags] if isinstance(tags, str) else list(tags)
        return query

    def _parse_losses(self, body: np.ndarray) -> list[LossSpecResponse]:
        listing = LossListResponse.model_validate(orjson.loads(memoryview(body)))
        for spec in listing.losses:
            self._specs.setdefault(spec.name, spec)
        return listing.losses

    def _parse_spec(self, name: str, body: np.ndarray) -> LossSpecResponse:
        spec = LossSpecResponse.model_validate(orjson.loads(memoryview(body)))
        self._specs[name] = spec
        return spec

    @staticmethod
    def _parse_flag(body: np.ndarray, key: str) -> bool:
        return bool(orjson.loads(memoryview(body)).get(key, False))


class Client(BaseClient):
    """A synchronous lossreg client (thread-safe; one connection pool).

    Args:
        url: the server's base URL; default ``$LOSSREG_URL``, else ``http://127.0.0.1:8000``.
        api_key: sent as ``Authorization: Bearer <key>``; default ``$LOSSREG_API_KEY``.
        timeout: seconds per request phase (a number, None, or a `Timeout`).
        retries: retries of 503 answers and connection failures (a number or a `Retries`).
        validate: check tensors against the loss's cached spec before sending.
        headers: extra headers for every request.
        transport: an httpx transport (``httpx.MockTransport`` in tests); by default
            `HTTPTransport` for ``http://`` URLs (``HTTPTransport(uds=path)`` for a Unix socket),
            httpx's own for ``https://``.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | None | Timeout = DEFAULT_TIMEOUT,
        retries: int | Retries = DEFAULT_RETRIES,
        validate: bool = True,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            url,
            api_key=api_key,
            timeout=timeout,
            retries=retries,
            validate=validate,
            headers=headers,
        )
        if transport is None:
            transport = default_transport(self.url)  # http://: the standard library's sockets
        self._http = httpx.Client(timeout=self.timeout.as_httpx(), transport=transport)

    def _send(
        self, method: str, path: str, *, retry: bool = True, **kwargs: Any
    ) -> tuple[httpx.Response, np.ndarray]:
        """Send with retries; return the answer and its body, or raise the server's error."""
        state = _retry.RetryState(self.retries if retry else _NO_RETRIES)
        request_id = uuid.uuid4().hex
        while True:
            request = self._request(method, path, request_id=request_id, **kwargs)
            try:
                response = self._http.send(request, stream=True)
                try:
                    body = self._read(response)
                finally:
                    response.close()
            except httpx.RequestError as exc:
                delay = state.next_delay(exc)
                if delay is None:
                    raise map_httpx_error(exc, state.attempt + 1) from exc
                _retry.sleep(delay)
                continue
            if response.is_success:
                return response, body
            error = error_from_answer(response, body)
            retry_after = error.retry_after if isinstance(error, ServerBusy) else None
            delay = state.next_delay(error, retry_after)
            if delay is None:
                raise error
            _retry.sleep(delay)

    @staticmethod
    def _read(response: httpx.Response) -> np.ndarray:
        reader = BodyReader(response)
        for chunk in response.iter_bytes():
            reader.feed(chunk)
        return reader.finish()

    # -- catalog ---------------------------------------------------------------------------------

    def losses(
        self, pattern: str | None = None, tags: Sequence[str] | str | None = None
    ) -> list[LossSpecResponse]:
        """The specs of the server's losses, optionally filtered by a glob and by tags."""
        _, body = self._send("GET", "v1/losses", params=self._losses_query(pattern, tags))
        return self._parse_losses(body)

    def spec(self, name: str, *, refresh: bool = False) -> LossSpecResponse:
        """One loss's spec (inputs, dtypes, shapes, parameter schema); cached per client."""
        if not refresh and name in self._specs:
            return self._specs[name]
        _, body = self._send("GET", "v1/losses/" + self._loss_path(name))
        return self._parse_spec(name, body)

    # -- compute ---------------------------------------------------------------------------------

    def evaluate(
        self,
        name: str,
        *tensors: Any,
        params: Mapping[str, Any] | None = None,
        grad: Sequence[str] | None = None,
        grad_loss: Any = None,
        **named_tensors: Any,
    ) -> EvaluateResult:
        """A loss's value and gradients, computed by the server.

        Args:
            name: the loss's registry name.
            *tensors: tensors in the order of the loss's inputs (then tensor parameters).
            params: scalar parameters (``reduction``, ``margin``...).
            grad: inputs to differentiate; None: every input sent that is differentiated by
                default (predictions, not targets); ``[]``: none.
            grad_loss: the upstream gradient, shaped like the loss (``reduction='none'``).
            **named_tensors: tensors by input name.

        Returns:
            The loss and gradients as torch tensors (on the caller's device, each gradient in
            its input's dtype) when torch tensors were sent, NumPy arrays otherwise.
        """
        spec = self.spec(name) if self._needs_spec(tensors) else None
        call = self._prepare_infer(name, spec, tensors, named_tensors, params, grad, grad_loss)
        path = "v2/models/" + self._loss_path(name, "/infer")
        response, body = self._send("POST", path, chunks=call.chunks, headers=call.headers)
        return parse_infer(call, response, body)

    def evaluate_terms(
        self,
        terms: Sequence[TermLike],
        *tensors: Any,
        grad: Sequence[str] | None = None,
        **named_tensors: Any,
    ) -> ComposeResult:
        """A weighted sum of losses on the same tensors, and the gradients of the total.

        Args:
            terms: `ComposeTerm`\\ s (or their dicts, or bare names): loss, weight, params, label.
            *tensors: tensors in the order of the first term's inputs.
            grad: inputs to differentiate; None: those differentiated by default (not targets).
            **named_tensors: tensors by input name.
        """
        if not terms:
            raise ValueError("evaluate_terms needs at least one term")
        names = [self._term(t).loss for t in terms]
        specs = [self.spec(n) for n in names] if self._needs_spec(tensors) else None
        content, wires = self._prepare_compose(terms, specs, tensors, named_tensors, grad)
        _, body = self._send("POST", "v1/evaluate", content=content)
        return parse_compose(body, wires)

    # -- health ----------------------------------------------------------------------------------

    def health(self) -> bool:
        """Whether the server is live (``GET /v2/health/live``); raises if it cannot be reached."""
        _, body = self._send("GET", "v2/health/live", retry=False)
        return self._parse_flag(body, "live")

    def ready(self) -> bool:
        """Whether the server is ready to compute (``GET /v2/health/ready``)."""
        try:
            _, body = self._send("GET", "v2/health/ready", retry=False)
        except ServerBusy:
            return False
        return self._parse_flag(body, "ready")

    # -- lifetime --------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient(BaseClient):
    """An asyncio (or trio) lossreg client; the same methods as `Client`, awaited.

    Args:
        url: the server's base URL; default ``$LOSSREG_URL``, else ``http://127.0.0.1:8000``.
        api_key: sent as ``Authorization: Bearer <key>``; default ``$LOSSREG_API_KEY``.
        timeout: seconds per request phase (a number, None, or a `Timeout`).
        retries: retries of 503 answers and connection failures (a number or a `Retries`).
        validate: check tensors against the loss's cached spec before sending.
        headers: extra headers for every request.
        transport: an httpx async transport (``httpx.MockTransport`` in tests).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | None | Timeout = DEFAULT_TIMEOUT,
        retries: int | Retries = DEFAULT_RETRIES,
        validate: bool = True,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            url,
            api_key=api_key,
            timeout=timeout,
            retries=retries,
            validate=validate,
            headers=headers,
        )
        self._http = httpx.AsyncClient(timeout=self.timeout.as_httpx(), transport=transport)

    async def _send(
        self, method: str, path: str, *, retry: bool = True, **kwargs: Any
    ) -> tuple[httpx.Response, np.ndarray]:
        """Send with retries; return the answer and its body, or raise the server's error."""
        state = _retry.RetryState(self.retries if retry else _NO_RETRIES)
        request_id = uuid.uuid4().hex
        while True:
            request = self._request(method, path, request_id=request_id, **kwargs)
            try:
                response = await self._http.send(request, stream=True)
                try:
                    body = await self._read(response)
                finally:
                    await response.aclose()
            except httpx.RequestError as exc:
                delay = state.next_delay(exc)
                if delay is None:
                    raise map_httpx_error(exc, state.attempt + 1) from exc
                await _retry.async_sleep(delay)
                continue
            if response.is_success:
                return response, body
            error = error_from_answer(response, body)
            retry_after = error.retry_after if isinstance(error, ServerBusy) else None
            delay = state.next_delay(error, retry_after)
            if delay is None:
                raise error
            await _retry.async_sleep(delay)

    @staticmethod
    async def _read(response: httpx.Response) -> np.ndarray:
        reader = BodyReader(response)
        async for chunk in response.aiter_bytes():
            reader.feed(chunk)
        return reader.finish()

    # -- catalog ---------------------------------------------------------------------------------

    async def losses(
        self, pattern: str | None = None, tags: Sequence[str] | str | None = None
    ) -> list[LossSpecResponse]:
        """The specs of the server's losses, optionally filtered by a glob and by tags."""
        _, body = await self._send("GET", "v1/losses", params=self._losses_query(pattern, tags))
        return self._parse_losses(body)

    async def spec(self, name: str, *, refresh: bool = False) -> LossSpecResponse:
        """One loss's spec (inputs, dtypes, shapes, parameter schema); cached per client."""
        if not refresh and name in self._specs:
            return self._specs[name]
        _, body = await self._send("GET", "v1/losses/" + self._loss_path(name))
        return self._parse_spec(name, body)

    # -- compute ---------------------------------------------------------------------------------

    async def evaluate(
        self,
        name: str,
        *tensors: Any,
        params: Mapping[str, Any] | None = None,
        grad: Sequence[str] | None = None,
        grad_loss: Any = None,
        **named_tensors: Any,
    ) -> EvaluateResult:
        """A loss's value and gradients, computed by the server (see `Client.evaluate`)."""
        spec = await self.spec(name) if self._needs_spec(tensors) else None
        call = self._prepare_infer(name, spec, tensors, named_tensors, params, grad, grad_loss)
        path = "v2/models/" + self._loss_path(name, "/infer")
        response, body = await self._send("POST", path, chunks=call.chunks, headers=call.headers)
        return parse_infer(call, response, body)

    async def evaluate_terms(
        self,
        terms: Sequence[TermLike],
        *tensors: Any,
        grad: Sequence[str] | None = None,
        **named_tensors: Any,
    ) -> ComposeResult:
        """A weighted sum of losses and its gradients (see `Client.evaluate_terms`)."""
        if not terms:
            raise ValueError("evaluate_terms needs at least one term")
        names = [self._term(t).loss for t in terms]
        specs = [await self.spec(n) for n in names] if self._needs_spec(tensors) else None
        content, wires = self._prepare_compose(terms, specs, tensors, named_tensors, grad)
        _, body = await self._send("POST", "v1/evaluate", content=content)
        return parse_compose(body, wires)

    # -- health ----------------------------------------------------------------------------------

    async def health(self) -> bool:
        """Whether the server is live (``GET /v2/health/live``); raises if it cannot be reached."""
        _, body = await self._send("GET", "v2/health/live", retry=False)
        return self._parse_flag(body, "live")

    async def ready(self) -> bool:
        """Whether the server is ready to compute (``GET /v2/health/ready``)."""
        try:
            _, body = await self._send("GET", "v2/health/ready", retry=False)
        except ServerBusy:
            return False
        return self._parse_flag(body, "ready")

    # -- lifetime --------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _version() -> str:
    from . import __version__

    return __version__
