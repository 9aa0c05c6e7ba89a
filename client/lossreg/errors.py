"""One exception hierarchy, shared by the server and the client.

The server raises these; one exception handler turns each into an HTTP status and a body
``{"error": "<message>", "code": "<code>", "field": "<name or null>", ...}``. The client reads the
``code`` back and raises the same class, so ``except lossreg.errors.LossNotFound`` works on both
sides of the wire.

    LossRegError                      500 internal
    ├── InvalidRequest                400 invalid_request      (malformed body or header)
    │   ├── InvalidTensor             400 invalid_tensor       (encoding: datatype, size, data)
    │   ├── InvalidInput              422 invalid_input        (unknown/missing input, wrong dtype)
    │   │   └── ShapeMismatch         422 shape_mismatch
    │   ├── InvalidParameter          422 invalid_parameter
    │   ├── LossRejectedInput         422 loss_rejected_input  (the loss itself refused the tensors)
    │   ├── NonFiniteValue            422 non_finite
    │   └── PayloadTooLarge           413 payload_too_large
    ├── Unauthorized                  401 unauthorized
    ├── LossNotFound                  404 loss_not_found       (with close-match suggestions)
    ├── AmbiguousLoss                 409 ambiguous_loss       (two distributions export the name)
    ├── LossUnavailable               503 loss_unavailable     (its plugin failed to load)
    ├── ModelControlDisabled          409 model_control_disabled (load/unload: registry fixed)
    ├── PluginLoadError               500 plugin_load_error    (strict mode, at start-up)
    ├── ComputeError                  500 compute_error
    ├── ComputeTimeout                504 compute_timeout
    ├── ServerBusy                    503 server_busy          (queue full; has retry_after)
    │   ├── ServerNotReady            503 server_not_ready
    │   └── DeviceOutOfMemory         503 device_out_of_memory
    ├── SharedMemoryError             400 shared_memory_error  (a region that cannot be mapped)
    │   ├── SharedMemoryDisabled      403 shared_memory_disabled (LOSSREG_ALLOW_CLIENT_SHM off)
    │   ├── RegionNotFound            404 region_not_found
    │   └── RegionExists              409 region_exists
    └── ClientError                   --  client_error         (raised only by the client)
        ├── TransportError            --  transport_error      (connection refused, reset, ...)
        └── TimeoutError              --  timeout
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import Any, ClassVar

__all__ = [
    "AmbiguousLoss",
    "ClientError",
    "ComputeError",
    "ComputeTimeout",
    "DeviceOutOfMemory",
    "InvalidInput",
    "InvalidParameter",
    "InvalidRequest",
    "InvalidTensor",
    "LossNotFound",
    "LossRegError",
    "LossRejectedInput",
    "LossUnavailable",
    "ModelControlDisabled",
    "NonFiniteValue",
    "PayloadTooLarge",
    "PluginLoadError",
    "RegionExists",
    "RegionNotFound",
    "ServerBusy",
    "ServerNotReady",
    "ShapeMismatch",
    "SharedMemoryDisabled",
    "SharedMemoryError",
    "TimeoutError",
    "TransportError",
    "Unauthorized",
    "error_from_payload",
    "field_path",
]


class LossRegError(Exception):
    """Base of every lossreg error.

    Args:
        message: what went wrong, for a person.
        field: the request field at fault (an input, a parameter, a header), when there is one.
        details: extra machine-readable facts (suggestions, candidates, retry_after, ...).
    """

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, message: str, *, field: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The wire body: ``error`` stays a plain string, as the KServe v2 protocol requires."""
        return {"error": self.message, "code": self.code, "field": self.field, **self.details}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, field={self.field!r})"


class InvalidRequest(LossRegError):
    status_code = 400
    code = "invalid_request"


class InvalidTensor(InvalidRequest):
    code = "invalid_tensor"


class InvalidInput(InvalidRequest):
    status_code = 422
    code = "invalid_input"


class ShapeMismatch(InvalidInput):
    code = "shape_mismatch"


class InvalidParameter(InvalidRequest):
    status_code = 422
    code = "invalid_parameter"


class LossRejectedInput(InvalidRequest):
    status_code = 422
    code = "loss_rejected_input"


class NonFiniteValue(InvalidRequest):
    status_code = 422
    code = "non_finite"


class PayloadTooLarge(InvalidRequest):
    status_code = 413
    code = "payload_too_large"


class Unauthorized(LossRegError):
    status_code = 401
    code = "unauthorized"


class LossNotFound(LossRegError):
    status_code = 404
    code = "loss_not_found"

    @property
    def suggestions(self) -> list[str]:
        return list(self.details.get("suggestions", []))


class AmbiguousLoss(LossRegError):
    status_code = 409
    code = "ambiguous_loss"

    @property
    def candidates(self) -> list[str]:
        return list(self.details.get("candidates", []))


class LossUnavailable(LossRegError):
    status_code = 503
    code = "loss_unavailable"


class ModelControlDisabled(LossRegError):
    """Model load/unload: the registry is fixed at start-up (LOSSREG_ALLOW / LOSSREG_DENY)."""

    status_code = 409
    code = "model_control_disabled"


class PluginLoadError(LossRegError):
    code = "plugin_load_error"


class ComputeError(LossRegError):
    code = "compute_error"


class ComputeTimeout(LossRegError):
    status_code = 504
    code = "compute_timeout"


class ServerBusy(LossRegError):
    status_code = 503
    code = "server_busy"

    @property
    def retry_after(self) -> float | None:
        value = self.details.get("retry_after")
        return None if value is None else float(value)


class ServerNotReady(ServerBusy):
    code = "server_not_ready"


class DeviceOutOfMemory(ServerBusy):
    code = "device_out_of_memory"


class SharedMemoryError(LossRegError):
    """A system shared-memory region cannot be registered (bad key, window, object)."""

    status_code = 400
    code = "shared_memory_error"


class SharedMemoryDisabled(SharedMemoryError):
    status_code = 403
    code = "shared_memory_disabled"


class RegionNotFound(SharedMemoryError):
    status_code = 404
    code = "region_not_found"


class RegionExists(SharedMemoryError):
    status_code = 409
    code = "region_exists"


class ClientError(LossRegError):
    """Raised by the client for failures that never reached a server's answer."""

    status_code = 0
    code = "client_error"


class TransportError(ClientError):
    code = "transport_error"


class TimeoutError(ClientError):  # noqa: A001 - mirrors httpx.TimeoutException naming
    code = "timeout"


_UNION_TAG = re.compile(
    r"^(bool|int|float|str|bytes|none|list|dict|tuple|set|function-\w+|json-or-python)(\[.*\])?$"
)


def field_path(loc: Sequence[Any], skip: Collection[str] = ()) -> str:
    """A pydantic error location as the request field it names: ``parameters.reduction``.

    pydantic appends the union branch it tried (``reduction.bool``); that is no field name.
    """
    parts = [
        str(p) for p in loc if p not in skip and not (isinstance(p, str) and _UNION_TAG.match(p))
    ]
    return ".".join(parts)


def _subclasses(cls: type[LossRegError]) -> list[type[LossRegError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_subclasses(sub))
    return out


_BY_CODE: dict[str, type[LossRegError]] = {c.code: c for c in _subclasses(LossRegError)}


def error_from_payload(status_code: int, payload: Any) -> LossRegError:
    """Rebuild the server's exception from a response body (the client's side of the mapping).

    Bodies without a known ``code`` (another KServe server, a proxy) map by status alone.
    """
    if isinstance(payload, dict):
        message = str(payload.get("error") or payload.get("detail") or f"HTTP {status_code}")
        code = payload.get("code")
        field = payload.get("field")
        details = {
            k: v for k, v in payload.items() if k not in ("error", "code", "field", "detail")
        }
    else:
        message, code, field, details = (str(payload) or f"HTTP {status_code}"), None, None, {}
    cls = _BY_CODE.get(code) if isinstance(code, str) else None
    if cls is None:
        cls = {
            400: InvalidRequest,
            401: Unauthorized,
            404: LossNotFound,
            409: AmbiguousLoss,
            413: PayloadTooLarge,
            422: InvalidInput,
            503: ServerBusy,
            504: ComputeTimeout,
        }.get(status_code, LossRegError)
    return cls(message, field=field if isinstance(field, str) else None, **details)
