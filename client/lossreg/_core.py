"""What `Client` and `AsyncClient` share: configuration and every step that does no I/O.

As in httpx, the two public clients differ only in how they wait. `BaseClient` is built once
for both (URL, key, timeout, retries, headers, the spec cache) and turns each public call into a
`Call`: the method, path and body to send and the function that reads the answer. The clients
only run a `Call` (`_retry.Exchange` decides retries) and fetch the specs a call needs.

`bind` names a call's tensors after a loss's inputs; `RemoteLoss` binds with it too.
"""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import httpx
import orjson

from . import _retry
from ._arrays import WireArray, to_wire
from ._config import DEFAULT_RETRIES, DEFAULT_TIMEOUT, Retries, Timeout
from ._models import ComposeResult, EvaluateResult
from ._validation import check_grad, check_request, check_term
from ._wire import (
    Answer,
    Chunks,
    compose_body,
    infer_body,
    parse_compose,
    parse_infer,
    scalar_params,
)
from .protocol import (
    Buffer,
    ComposeTerm,
    LossListResponse,
    LossSpecResponse,
    unknown_input,
)
from .protocol.checks import TensorInfo

__all__ = ["DEFAULT_URL", "BaseClient", "Call", "TermLike", "bind"]

DEFAULT_URL = "http://127.0.0.1:8000"
"""The server used when neither ``url`` nor ``LOSSREG_URL`` says otherwise."""

TermLike = ComposeTerm | Mapping[str, Any] | str
"""A composition term: a `ComposeTerm`, its fields as a dict, or a bare loss name (weight 1)."""

QueryValue = str | list[str]
"""A query parameter's value (a list repeats the parameter: ``?tag=a&tag=b``)."""

_NO_RETRIES = Retries(0)
_MOST_URLS = 256  # paths whose joined URL a client keeps (a loss name is part of the path)

T = TypeVar("T")
V = TypeVar("V")
TransportT = TypeVar("TransportT", httpx.BaseTransport, httpx.AsyncBaseTransport)


def bind(
    name: str,
    spec: LossSpecResponse | None,
    tensors: Sequence[V],
    named: Mapping[str, V | None],
    *,
    known_only: bool = False,
) -> dict[str, V]:
    """Tensors by input name: positional ones in the order of the spec's inputs, then its
    tensor parameters; ``None`` (by position or by name) means "not given" and is left out.

    Args:
        name: the loss's name, for messages.
        spec: the loss's spec (needed only when there are positional tensors).
        tensors: positional tensors.
        named: tensors by input name.
        known_only: refuse a name that is neither a tensor nor a scalar parameter of the loss
            (`RemoteLoss`; the clients leave that to the spec checks or the server).

    Raises:
        TypeError: more positional tensors than the loss takes, or one input given twice.
        InvalidInput: with ``known_only``, a name the loss does not have.
    """
    order = [] if spec is None else [t.name for t in [*spec.inputs, *spec.tensor_params]]
    if len(tensors) > len(order):
        if spec is None:
            raise ValueError("binding positional tensors needs the loss's spec")
        raise TypeError(
            f"{name} takes at most {len(order)} tensors ({', '.join(order)}), got {len(tensors)}"
        )
    bound: dict[str, V] = {}
    for key, value in [*zip(order, tensors), *named.items()]:
        if known_only and spec is not None and key not in order:
            scalars = sorted(spec.params_schema.get("properties", {}))
            raise unknown_input(spec.name, key, order + scalars)
        if key in bound:
            raise TypeError(f"{name} got two values for input {key!r}")
        if value is not None:
            bound[key] = value
    return bound


@dataclasses.dataclass(frozen=True)
class Call(Generic[T]):
    """One public call, prepared: what to send, and how its answer becomes the result.

    Args:
        method: the HTTP method.
        path: the path, relative to the client's URL.
        parse: the successful answer -> the call's result.
        content: a JSON body.
        chunks: a binary body as unjoined buffers (``headers`` carry its length).
        headers: headers for this call.
        query: query parameters.
        retry: whether a 503 or a failed connection is retried (health probes are not).
    """

    method: str
    path: str
    parse: Callable[[Answer], T]
    content: bytes | None = None
    chunks: Sequence[Buffer] | None = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    query: Mapping[str, QueryValue] | None = None
    retry: bool = True


class BaseClient(Generic[TransportT]):
    """Configuration and the I/O-free logic both clients share (see `Client` for the Args).

    Subclasses open their connection pool in `_open`, from the ``transport`` given.
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
        transport: TransportT | None = None,
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
        self._urls: dict[str, httpx.URL] = {}  # path -> absolute URL (joining costs ~30 us)
        self._open(transport)

    def _open(self, transport: TransportT | None) -> None:
        """Create the connection pool (``self._http``) on ``transport``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.url).rstrip('/')!r})"

    # -- running a call ---------------------------------------------------------------------------

    def _exchange(self, call: Call[T]) -> _retry.Exchange[T]:
        """The attempts of ``call``; each attempt's request is rebuilt (same body, same id)."""
        request_id = uuid.uuid4().hex
        retries = self.retries if call.retry else _NO_RETRIES
        return _retry.Exchange(lambda: self._request(call, request_id), retries, call.parse)

    def _request(self, call: Call[T], request_id: str) -> httpx.Request:
        headers = {**self._headers, "X-Request-ID": request_id, **call.headers}
        url = self._urls.get(call.path)
        if url is None:
            url = self.url.join(call.path)
            if len(self._urls) < _MOST_URLS:
                self._urls[call.path] = url
        if call.query:
            url = url.copy_merge_params(call.query)
        if call.chunks is not None:
            # A body of unjoined chunks: httpx adds no headers then, so Host is ours to set
            # (the call's headers carry the Content-Length).
            headers.setdefault("Host", url.netloc.decode("ascii"))
            return httpx.Request(call.method, url, headers=headers, stream=Chunks(call.chunks))
        if call.content is not None:
            headers.setdefault("Content-Type", "application/json")
        return httpx.Request(call.method, url, headers=headers, content=call.content)

    # -- the calls -------------------------------------------------------------------------------

    def _losses_call(
        self, pattern: str | None, tags: Sequence[str] | str | None
    ) -> Call[list[LossSpecResponse]]:
        query: dict[str, QueryValue] = {}
        if pattern is not None:
            query["pattern"] = pattern
        if tags is not None:
            query["tag"] = [tags] if isinstance(tags, str) else list(tags)
        return Call("GET", "v1/losses", self._parse_losses, query=query)

    def _spec_call(self, name: str) -> Call[LossSpecResponse]:
        def parse(answer: Answer) -> LossSpecResponse:
            spec = LossSpecResponse.model_validate(orjson.loads(answer.body.data))
            self._specs[name] = spec
            return spec

        return Call("GET", "v1/losses/" + _quote(name), parse)

    def _cached_spec(self, name: str, refresh: bool) -> LossSpecResponse | None:
        return None if refresh else self._specs.get(name)

    def _needs_spec(self, tensors: Sequence[object]) -> bool:
        return bool(tensors) or self.validate

    def _infer_call(
        self,
        name: str,
        spec: LossSpecResponse | None,
        tensors: Sequence[object],
        named: Mapping[str, object],
        params: Mapping[str, object] | None,
        grad: Sequence[str] | None,
        grad_loss: object,
    ) -> Call[EvaluateResult]:
        """``POST /v2/models/{name}/infer``: checked against the spec, framed as binary."""
        wires = _wires(bind(name, spec, tensors, named))
        scalars = scalar_params(params, kserve=True)
        if spec is not None and self.validate:
            check_request(spec, _infos(wires), scalars, grad)
        upstream = None if grad_loss is None else to_wire("grad_loss", grad_loss)
        call = infer_body(name, wires, scalars, grad, upstream)
        path = "v2/models/" + _quote(name) + "/infer"
        return Call(
            "POST", path, lambda a: parse_infer(call, a), chunks=call.chunks, headers=call.headers
        )

    @staticmethod
    def _terms(terms: Sequence[TermLike]) -> list[ComposeTerm]:
        if not terms:
            raise ValueError("evaluate_terms needs at least one term")
        return [_term(t) for t in terms]

    def _compose_call(
        self,
        terms: Sequence[ComposeTerm],
        specs: Sequence[LossSpecResponse] | None,
        tensors: Sequence[object],
        named: Mapping[str, object],
        grad: Sequence[str] | None,
    ) -> Call[ComposeResult]:
        """``POST /v1/evaluate``: a weighted sum of losses on the same tensors."""
        wires = _wires(bind(terms[0].loss, specs[0] if specs else None, tensors, named))
        params = [scalar_params(t.params, kserve=False) for t in terms]
        if specs and self.validate:
            infos = _infos(wires)
            for spec, scalars in zip(specs, params):
                check_term(spec, infos, scalars)
            check_grad(specs, infos, grad)
        body = [
            {**t.model_dump(exclude_none=True), "params": scalars}
            for t, scalars in zip(terms, params)
        ]
        content = compose_body(body, wires, grad)
        return Call("POST", "v1/evaluate", lambda a: parse_compose(a.body, wires), content=content)

    @staticmethod
    def _health_call(probe: str) -> Call[bool]:
        """``GET /v2/health/live`` or ``/ready``: the answer's flag (absent: False)."""

        def parse(answer: Answer) -> bool:
            return bool(orjson.loads(answer.body.data).get(probe, False))

        return Call("GET", "v2/health/" + probe, parse, retry=False)

    def _parse_losses(self, answer: Answer) -> list[LossSpecResponse]:
        listing = LossListResponse.model_validate(orjson.loads(answer.body.data))
        for spec in listing.losses:
            self._specs.setdefault(spec.name, spec)
        return listing.losses


def _term(term: TermLike) -> ComposeTerm:
    if isinstance(term, ComposeTerm):
        return term
    if isinstance(term, str):
        return ComposeTerm(loss=term, label=None)
    return ComposeTerm.model_validate(dict(term))


def _wires(bound: Mapping[str, object]) -> dict[str, WireArray]:
    return {key: to_wire(key, value) for key, value in bound.items()}


def _infos(wires: Mapping[str, WireArray]) -> dict[str, TensorInfo]:
    return {n: (w.shape, w.dtype_name) for n, w in wires.items()}


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _version() -> str:
    from . import __version__

    return __version__
