"""`RemoteLoss`: a loss computed by a lossreg server that trains like a local ``nn.Module`` loss.

Its forward sends the tensors and returns the value as a tensor in the caller's autograd graph
(a custom ``torch.autograd.Function``); its backward hands the server's gradients to the inputs.

- A reduced (scalar) loss costs one round trip: the gradients come back with the value and are
  scaled locally by the upstream gradient (1 for ``loss.backward()``, the scale under a
  GradScaler, a weight in a sum of losses).
- An unreduced loss (``reduction='none'``) cannot be differentiated before its upstream gradient
  is known, so backward sends that gradient to the server (``grad_loss``) in a second round trip.
- Gradients are requested only for inputs that require them, and only when grad mode is on.
- Under autocast, low-precision inputs are computed in float32, as autocast does for torch's own
  losses; their gradients flow back in the inputs' dtype.
- First-order gradients only: a second backward through the gradient (double backward) raises.
- The loss's parameters are attributes too: ``loss_fn.weight = w`` or ``loss_fn.reduction`` read
  and write the parameters the next forward sends (what fastai's callbacks and ``get_preds`` do).
  Tensor parameters (``weight``, ``pos_weight``) go with the inputs, as the tensors they are.
- A tensor that requires grad gets its gradient: a float target's too, computed by the server
  where the loss has one; a tensor the loss declares non-differentiable raises instead of
  silently getting none.

This module imports torch; ``import lossreg`` loads it only when `RemoteLoss` is first used.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ._client import Client
from ._config import DEFAULT_RETRIES, DEFAULT_TIMEOUT
from ._core import bind
from .errors import InvalidInput
from .protocol import LossSpecResponse

__all__ = ["RemoteLoss"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


class RemoteLoss(nn.Module):
    """A loss from a lossreg server, usable wherever a ``torch.nn`` loss is.

    Example::

        loss_fn = RemoteLoss("focal", url="http://lossreg:8000", gamma=2.0)
        for step, (x, y) in enumerate(loader):
            loss_fn.params["gamma"] = schedule(step)  # parameters may change every step
            loss = loss_fn(model(x), y)
            loss.backward()

    Args:
        name: the loss's registry name.
        client: the `Client` to use (shared between losses); default: one for ``url``.
        url: the server, when no client is given (default ``$LOSSREG_URL``).
        **params: the loss's parameters: scalars (``reduction``, ``gamma``...) and tensors
            (``weight=class_weights``, sent as the tensor inputs they are). They live in the
            mutable dict ``self.params``, read at every forward, and are attributes too
            (``loss_fn.weight = w``, ``loss_fn.reduction``).
    """

    def __init__(
        self, name: str, client: Client | None = None, url: str | None = None, **params: Any
    ) -> None:
        super().__init__()
        if client is not None and url is not None:
            raise ValueError("RemoteLoss takes a client or a url, not both")
        self.name = name
        self.params: dict[str, Any] = dict(params)
        self._client = client
        self._owns_client = client is None
        self._url = url if client is None else str(client.url)
        self._client_config = _client_config(client)
        self._scalar_on_server: bool | None = None  # learnt: does eager differentiation work?
        self._ready = True  # from here on, parameter names set and read self.params

    # -- configuration ---------------------------------------------------------------------------

    @property
    def client(self) -> Client:
        """The client, created on first use (and again after pickling or deepcopy)."""
        if self._client is None:
            self._client = Client(self._url, **self._client_config)
            self._owns_client = True
        return self._client

    @property
    def spec(self) -> LossSpecResponse:
        """The loss's spec, as the server describes it (fetched once, then cached)."""
        return self.client.spec(self.name)

    def set_params(self, **params: Any) -> RemoteLoss:
        """Update some parameters, scalars or tensors (a loss-weight schedule, class weights);
        returns the loss itself."""
        self.params.update(params)
        return self

    # -- parameters as attributes (fastai's callbacks and get_preds use them so) ----------------

    def _parameter_names(self) -> tuple[set[str], set[str]]:
        """The loss's scalar and tensor parameter names, from its spec."""
        spec = self.spec
        return set(spec.params_schema.get("properties", {})), {t.name for t in spec.tensor_params}

    def _is_plain_attribute(self, name: str) -> bool:
        return (
            not self.__dict__.get("_ready", False)
            or name.startswith("_")
            or name in self.__dict__
            or hasattr(type(self), name)
        )

    def __setattr__(self, name: str, value: Any) -> None:
        if self._is_plain_attribute(name):
            super().__setattr__(name, value)
            return
        scalars, tensors = self._parameter_names()
        if name in self.params or name in scalars or name in tensors:
            self.params[name] = value  # sent with the next forward
        else:
            super().__setattr__(name, value)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)  # nn.Module's parameters, buffers, submodules
        except AttributeError:
            if name.startswith("_") or not self.__dict__.get("_ready", False):
                raise
        params = self.__dict__["params"]
        if name in params:
            return params[name]
        scalars, tensors = self._parameter_names()
        if name in tensors:
            return None  # an unset tensor parameter: the loss's default
        if name in scalars:
            return _default(self.spec, name)
        raise AttributeError(f"{type(self).__name__} {self.name!r} has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        if name in self.__dict__.get("params", {}) and name not in self.__dict__:
            del self.params[name]  # back to the loss's default
        else:
            super().__delattr__(name)

    # -- what fastai asks of a loss: activation and decodes for get_preds ------------------------

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        """Model outputs -> predictions (probabilities for the classification losses), as
        fastai's own losses give ``get_preds``; the identity where the loss says nothing."""
        rule = _ACTIVATIONS.get(self.name.rpartition(":")[2])
        return rule[0](x) if rule is not None else x

    def decodes(self, x: torch.Tensor) -> torch.Tensor:
        """Activated predictions -> decoded ones (class indices, 0/1 labels)."""
        rule = _ACTIVATIONS.get(self.name.rpartition(":")[2])
        return rule[1](x) if rule is not None else x

    def close(self) -> None:
        """Close the client's connections if this loss created the client."""
        if self._client is not None and self._owns_client:
            self._client.close()
            self._client = None

    def extra_repr(self) -> str:
        params = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return f"{self.name!r}, url={self._url or self.client.url!s}{params}"

    def __getstate__(self) -> dict[str, Any]:
        # A client holds sockets; a copy (pickle, deepcopy, DDP spawn) makes its own lazily.
        state = self.__dict__.copy()
        state["_client"] = None
        state["_owns_client"] = True
        return state

    # -- compute ---------------------------------------------------------------------------------

    def forward(self, *tensors: Any, **named: Any) -> torch.Tensor:
        """The loss of the given tensors (positional in the order of the loss's inputs); a
        keyword naming a scalar parameter (``reduction="none"``) applies to this call only."""
        spec = self.spec
        scalars, tensor_params = self._parameter_names()
        per_call = {k: v for k, v in named.items() if k in scalars and k not in tensor_params}
        named = {k: v for k, v in named.items() if k not in per_call}
        params: dict[str, Any] = {}
        for key, value in {**self.params, **per_call}.items():
            if key in tensor_params and key not in named:
                if value is not None:
                    named[key] = value  # a tensor parameter travels as the tensor it is
            elif key not in tensor_params:
                params[key] = _scalar(value)
        bound = _bind(self.name, spec, tensors, named)
        bound = _autocast_inputs(bound)
        grad = _grad_names(spec, bound)
        if not grad or not torch.is_grad_enabled():
            return _tensor(self.client.evaluate(self.name, params=params, grad=[], **bound).loss)
        reduced = params.get("reduction", _default(spec, "reduction")) != "none"
        eager = reduced and self._scalar_on_server is not False
        call = _Call(self.client, self.name, params, tuple(bound), tuple(grad), eager=eager)
        devices = {t.device.type for t in bound.values()}
        with _autocast_off(devices):
            out = _apply(call, *bound.values())
        if eager:
            self._scalar_on_server = out.dim() == 0
        return out


@dataclasses.dataclass(frozen=True)
class _Call:
    """What the autograd function needs besides the tensors."""

    client: Client
    name: str
    params: dict[str, Any]
    names: tuple[str, ...]
    grad: tuple[str, ...]
    eager: bool  # ask for gradients in forward (a reduced loss): one round trip


class _RemoteLossFunction(torch.autograd.Function):
    """The loss value in forward; the server's gradients in backward."""

    @staticmethod
    def forward(ctx: Any, call: _Call, *tensors: torch.Tensor) -> torch.Tensor:
        named = dict(zip(call.names, tensors))
        try:
            result = call.client.evaluate(
                call.name, params=call.params, grad=list(call.grad) if call.eager else [], **named
            )
        except InvalidInput as exc:
            if not (call.eager and exc.field == "grad_loss"):
                raise
            # A non-scalar loss without a reduction parameter: its gradient needs the upstream
            # one, which backward sends (the value alone now).
            call = dataclasses.replace(call, eager=False)
            result = call.client.evaluate(call.name, params=call.params, grad=[], **named)
        ctx.call = call
        if call.eager and result.loss.dim() == 0:
            ctx.grads = result.grads
        else:  # the upstream gradient is needed: backward asks the server again
            ctx.grads = None
            ctx.save_for_backward(*tensors)
        return _tensor(result.loss)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        call: _Call = ctx.call
        if ctx.grads is not None:
            grads = {n: _scale(g, grad_output) for n, g in ctx.grads.items()}
        else:
            named = dict(zip(call.names, ctx.saved_tensors))
            result = call.client.evaluate(
                call.name,
                params=call.params,
                grad=list(call.grad),
                grad_loss=grad_output.contiguous(),
                **named,
            )
            grads = result.grads
        out = [
            grads.get(n) if needed else None
            for n, needed in zip(call.names, ctx.needs_input_grad[1:])
        ]
        return (None, *out)


def _apply(call: _Call, *tensors: torch.Tensor) -> torch.Tensor:
    """`_RemoteLossFunction.apply`, typed (torch leaves ``Function.apply`` unannotated)."""
    apply: Callable[..., torch.Tensor] = _RemoteLossFunction.apply
    return apply(call, *tensors)


def _tensor(value: object) -> torch.Tensor:
    """A result the client gave back as a tensor (it does when tensors were sent)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor from the client, got {type(value).__name__}")
    return value


def _scale(grad: torch.Tensor, upstream: torch.Tensor) -> torch.Tensor:
    """``upstream * grad``, in float32 at least, so a GradScaler's scale does not overflow."""
    if upstream.device.type == "cpu" and upstream.numel() == 1 and upstream.item() == 1.0:
        # plain loss.backward(): nothing to scale. Handing out our own tensor is safe: autograd
        # sees ctx still holds it and copies rather than steals it into a leaf's .grad.
        return grad
    if grad.dtype in _LOW_PRECISION:
        return (grad.float() * upstream.float()).to(grad.dtype)
    return grad * upstream.to(grad.dtype)


def _bind(
    name: str, spec: LossSpecResponse, tensors: tuple[Any, ...], named: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """Tensors by input name (the clients' binding, refusing names the loss does not have);
    numbers and arrays become tensors."""
    bound = bind(name, spec, tensors, named, known_only=True)
    return {k: v if isinstance(v, torch.Tensor) else torch.as_tensor(v) for k, v in bound.items()}


def _grad_names(spec: LossSpecResponse, bound: Mapping[str, torch.Tensor]) -> list[str]:
    """The tensors that require grad, each of which the loss must be able to differentiate."""
    differentiable = {t.name for t in [*spec.inputs, *spec.tensor_params] if t.differentiable}
    grad = []
    for name, t in bound.items():
        if not (t.requires_grad and t.is_floating_point()):
            continue
        if name not in differentiable:
            raise InvalidInput(
                f"{spec.name}: {name!r} requires grad, but the loss declares it "
                f"non-differentiable, so it would silently get no gradient: pass "
                f"{name}.detach(), or have the loss declare it differentiable "
                f"(@loss(inputs={{{name!r}: {{'differentiable': True}}}}))",
                field=name,
            )
        grad.append(name)
    return grad


def _scalar(value: Any) -> Any:
    """A one-element tensor set as a scalar parameter (a schedule's output) -> its number."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value


def _class_axis(x: torch.Tensor) -> int:
    return 1 if x.dim() > 1 else 0


_ACTIVATIONS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], ...]] = {
    # loss -> (activation, decodes), as fastai's CrossEntropyLossFlat / BCEWithLogitsLossFlat
    "cross_entropy": (
        lambda x: x.softmax(_class_axis(x)),
        lambda x: x.argmax(_class_axis(x)),
    ),
    "nll_loss": (lambda x: x.exp(), lambda x: x.argmax(_class_axis(x))),
    "binary_cross_entropy_with_logits": (torch.sigmoid, lambda x: x > 0.5),
    "multilabel_soft_margin_loss": (torch.sigmoid, lambda x: x > 0.5),
    "binary_cross_entropy": (lambda x: x, lambda x: x > 0.5),
}


def _autocast_inputs(bound: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Under autocast, compute low-precision floats in float32 (as autocast does for losses)."""
    out = {}
    for name, t in bound.items():
        if t.dtype in _LOW_PRECISION and torch.is_autocast_enabled(t.device.type):
            t = t.float()  # differentiable: the gradient is cast back to t's dtype
        out[name] = t
    return out


@contextlib.contextmanager
def _autocast_off(device_types: set[str]) -> Iterator[None]:
    """Disable autocast on the given device types while the remote call runs."""
    with contextlib.ExitStack() as stack:
        for device_type in sorted(device_types):
            if torch.is_autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def _default(spec: LossSpecResponse, param: str) -> Any:
    return spec.params_schema.get("properties", {}).get(param, {}).get("default")


def _client_config(client: Client | None) -> dict[str, Any]:
    """What rebuilding an equivalent client takes (after pickling)."""
    if client is None:
        return {"timeout": DEFAULT_TIMEOUT, "retries": DEFAULT_RETRIES}
    return {
        "api_key": client.api_key,
        "timeout": client.timeout,
        "retries": client.retries,
        "validate": client.validate,
    }
