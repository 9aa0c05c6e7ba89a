"""`Client` and `AsyncClient`: the catalog, loss values and gradients from a lossreg server.

They mirror each other method for method, as httpx's do, and differ only in how they wait:
everything else (configuration, binding tensors, checks, request bodies, reading answers, the
retry policy) is `_core.BaseClient`'s and `_retry.Exchange`'s, written once::

    with lossreg.Client("http://127.0.0.1:8000") as client:
        result = client.evaluate("cross_entropy", logits, labels, grad=["input"])
        result.loss, result.grads["input"]

    async with lossreg.AsyncClient("http://127.0.0.1:8000") as client:
        result = await client.evaluate("mse_loss", input=pred, target=y)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TypeVar

import httpx

from . import _retry
from ._core import DEFAULT_URL, BaseClient, Call, TermLike
from ._models import ComposeResult, EvaluateResult
from ._transport import default_transport
from ._wire import Answer, BodyReader
from .errors import ServerBusy
from .protocol import LossSpecResponse

__all__ = ["DEFAULT_URL", "AsyncClient", "BaseClient", "Client"]

T = TypeVar("T")


class Client(BaseClient[httpx.BaseTransport]):
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

    def _open(self, transport: httpx.BaseTransport | None) -> None:
        if transport is None:
            transport = default_transport(self.url)  # http://: the standard library's sockets
        self._http = httpx.Client(timeout=self.timeout.as_httpx(), transport=transport)

    def _run(self, call: Call[T]) -> T:
        """Send ``call`` (retrying as `Exchange` says); its parsed answer or the server's error."""
        exchange = self._exchange(call)
        for wait, request in exchange:
            if wait is not None:
                _retry.sleep(wait)
            exchange.record(self._attempt(request))
        return exchange.result()

    def _attempt(self, request: httpx.Request) -> _retry.Outcome:
        try:
            response = self._http.send(request, stream=True)
            try:
                reader = BodyReader(response)
                for chunk in response.iter_bytes():
                    reader.feed(chunk)
                return Answer(response, reader.finish())
            finally:
                response.close()
        except httpx.RequestError as exc:
            return exc

    # -- catalog ---------------------------------------------------------------------------------

    def losses(
        self, pattern: str | None = None, tags: Sequence[str] | str | None = None
    ) -> list[LossSpecResponse]:
        """The specs of the server's losses, optionally filtered by a glob and by tags."""
        return self._run(self._losses_call(pattern, tags))

    def spec(self, name: str, *, refresh: bool = False) -> LossSpecResponse:
        """One loss's spec (inputs, dtypes, shapes, parameter schema); cached per client."""
        cached = self._cached_spec(name, refresh)
        return cached if cached is not None else self._run(self._spec_call(name))

    # -- compute ---------------------------------------------------------------------------------

    def evaluate(
        self,
        name: str,
        *tensors: object,
        params: Mapping[str, object] | None = None,
        grad: Sequence[str] | None = None,
        grad_loss: object = None,
        **named_tensors: object,
    ) -> EvaluateResult:
        """A loss's value and gradients, computed by the server.

        Args:
            name: the loss's registry name.
            *tensors: tensors in the order of the loss's inputs (then tensor parameters).
            params: scalar parameters (``reduction``, ``margin``...).
            grad: inputs to differentiate; None: every input sent that is differentiated by
                default (predictions, not targets); ``[]``: none.
            grad_loss: the upstream gradient, shaped like the loss (``reduction='none'``).
            **named_tensors: tensors by input name (None: not given).

        Returns:
            The loss and gradients as torch tensors (on the caller's device, each gradient in
            its input's dtype) when torch tensors were sent, NumPy arrays otherwise.
        """
        spec = self.spec(name) if self._needs_spec(tensors) else None
        call = self._infer_call(name, spec, tensors, named_tensors, params, grad, grad_loss)
        return self._run(call)

    def evaluate_terms(
        self,
        terms: Sequence[TermLike],
        *tensors: object,
        grad: Sequence[str] | None = None,
        **named_tensors: object,
    ) -> ComposeResult:
        """A weighted sum of losses on the same tensors, and the gradients of the total.

        Args:
            terms: `ComposeTerm`\\ s (or their dicts, or bare names): loss, weight, params, label.
            *tensors: tensors in the order of the first term's inputs.
            grad: inputs to differentiate; None: those differentiated by default (not targets).
            **named_tensors: tensors by input name.
        """
        parsed = self._terms(terms)
        specs = [self.spec(t.loss) for t in parsed] if self._needs_spec(tensors) else None
        return self._run(self._compose_call(parsed, specs, tensors, named_tensors, grad))

    # -- health ----------------------------------------------------------------------------------

    def health(self) -> bool:
        """Whether the server is live (``GET /v2/health/live``); raises if it cannot be reached."""
        return self._run(self._health_call("live"))

    def ready(self) -> bool:
        """Whether the server is ready to compute (``GET /v2/health/ready``)."""
        try:
            return self._run(self._health_call("ready"))
        except ServerBusy:
            return False

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


class AsyncClient(BaseClient[httpx.AsyncBaseTransport]):
    """An asyncio (or trio) lossreg client; the same methods as `Client`, awaited.

    Takes `Client`'s arguments, but ``transport`` is an httpx *async* transport
    (``httpx.MockTransport`` in tests), httpx's own by default. There is no async counterpart
    of `HTTPTransport`, the sync client's default: it moves bytes with blocking
    ``http.client`` sockets, which would stall the event loop.
    """

    def _open(self, transport: httpx.AsyncBaseTransport | None) -> None:
        self._http = httpx.AsyncClient(timeout=self.timeout.as_httpx(), transport=transport)

    async def _run(self, call: Call[T]) -> T:
        """Send ``call`` (retrying as `Exchange` says); its parsed answer or the server's error."""
        exchange = self._exchange(call)
        for wait, request in exchange:
            if wait is not None:
                await _retry.async_sleep(wait)
            exchange.record(await self._attempt(request))
        return exchange.result()

    async def _attempt(self, request: httpx.Request) -> _retry.Outcome:
        try:
            response = await self._http.send(request, stream=True)
            try:
                reader = BodyReader(response)
                async for chunk in response.aiter_bytes():
                    reader.feed(chunk)
                return Answer(response, reader.finish())
            finally:
                await response.aclose()
        except httpx.RequestError as exc:
            return exc

    # -- catalog ---------------------------------------------------------------------------------

    async def losses(
        self, pattern: str | None = None, tags: Sequence[str] | str | None = None
    ) -> list[LossSpecResponse]:
        """The specs of the server's losses, optionally filtered by a glob and by tags."""
        return await self._run(self._losses_call(pattern, tags))

    async def spec(self, name: str, *, refresh: bool = False) -> LossSpecResponse:
        """One loss's spec (inputs, dtypes, shapes, parameter schema); cached per client."""
        cached = self._cached_spec(name, refresh)
        return cached if cached is not None else await self._run(self._spec_call(name))

    # -- compute ---------------------------------------------------------------------------------

    async def evaluate(
        self,
        name: str,
        *tensors: object,
        params: Mapping[str, object] | None = None,
        grad: Sequence[str] | None = None,
        grad_loss: object = None,
        **named_tensors: object,
    ) -> EvaluateResult:
        """A loss's value and gradients, computed by the server (see `Client.evaluate`)."""
        spec = await self.spec(name) if self._needs_spec(tensors) else None
        call = self._infer_call(name, spec, tensors, named_tensors, params, grad, grad_loss)
        return await self._run(call)

    async def evaluate_terms(
        self,
        terms: Sequence[TermLike],
        *tensors: object,
        grad: Sequence[str] | None = None,
        **named_tensors: object,
    ) -> ComposeResult:
        """A weighted sum of losses and its gradients (see `Client.evaluate_terms`)."""
        parsed = self._terms(terms)
        specs = [await self.spec(t.loss) for t in parsed] if self._needs_spec(tensors) else None
        return await self._run(self._compose_call(parsed, specs, tensors, named_tensors, grad))

    # -- health ----------------------------------------------------------------------------------

    async def health(self) -> bool:
        """Whether the server is live (``GET /v2/health/live``); raises if it cannot be reached."""
        return await self._run(self._health_call("live"))

    async def ready(self) -> bool:
        """Whether the server is ready to compute (``GET /v2/health/ready``)."""
        try:
            return await self._run(self._health_call("ready"))
        except ServerBusy:
            return False

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
