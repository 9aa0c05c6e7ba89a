"""``inference.GRPCInferenceService``: the Open Inference Protocol over gRPC, on the REST app's
registry, dataplane, statistics, API keys, metrics and request ids.

Each RPC is the REST route's twin: the same catalog functions answer metadata, configuration,
statistics and the index; inference goes through `pipeline.infer` (so gRPC and REST requests
share the queue, the timeout and the dynamic batcher); and every `LossRegError` ends the call
with the gRPC status its HTTP status maps to, the same message as details, and ``lossreg-code``
/ ``lossreg-field`` in the trailing metadata. A client deadline that passes cancels the call's
task, which takes its request out of the queue or batch.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from starlette.datastructures import State

from lossreg import __version__
from lossreg.errors import LossRegError, Unauthorized

from ...registry import LossRegistry
from ..catalog import (
    check_version,
    extensions,
    model_config,
    model_metadata,
    model_statistics,
    refuse_model_control,
    repository_index,
)
from ..deps import registry_when_loaded
from ..logs import log_access, request_id_var
from ..middleware import new_request_id
from ..pipeline import DataPlane, infer, observe
from ..shm import regions
from .codec import decode_infer_request, encode_infer_response, to_message
from .proto import grpc_service_pb2 as pb
from .proto import grpc_service_pb2_grpc as pb_grpc

__all__ = ["STATUS", "InferenceService", "grpc_status"]

log = logging.getLogger("lossreg.server")

T = TypeVar("T")

SERVICE = "inference.GRPCInferenceService"

STATUS: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
"""HTTP status of a `LossRegError` -> the gRPC status it ends a call with (else INTERNAL)."""

_SANE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_BEARER = re.compile(r"^\s*bearer\s+(\S+)\s*$", re.IGNORECASE)


def grpc_status(error: LossRegError) -> grpc.StatusCode:
    """The gRPC status for a lossreg error."""
    return STATUS.get(error.status_code, grpc.StatusCode.INTERNAL)


def _metadata(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str | None:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode("latin-1")
    return None


class _Call:
    """One RPC's bookkeeping: request id, API key, metrics, access log, error -> status."""

    def __init__(
        self, service: InferenceService, context: grpc.aio.ServicerContext[Any, Any], rpc: str
    ) -> None:
        self.service = service
        self.context = context
        self.rpc = rpc
        self.loss: str | None = None
        self.compute = False
        sent = _metadata(context, "x-request-id")
        sane = sent.strip() if sent and _SANE_ID.match(sent.strip()) else None
        self.request_id = sane or new_request_id()  # as REST's: process prefix

    def authorize(self) -> None:
        keys: list[str] = self.service.state.settings.api_keys
        if not keys:
            return
        header = _metadata(self.context, "authorization")
        match = _BEARER.match(header or "")
        if match is None:
            raise Unauthorized(
                "this RPC needs an API key: send metadata 'authorization: Bearer <key>'",
                field="authorization",
            )
        found = False
        for key in keys:  # every key compared: the time taken does not tell which nearly matched
            found |= hmac.compare_digest(match.group(1).encode(), key.encode())
        if not found:
            raise Unauthorized("the API key is not valid", field="authorization")

    async def run(
        self, fn: Callable[[], Awaitable[T]], *, protected: bool = True, abort: bool = True
    ) -> T:
        """Run the RPC's body; a `LossRegError` ends the call with its status (``abort``) or
        is raised again after the bookkeeping (a stream answers it in the stream)."""
        metrics = self.service.state.metrics
        token = request_id_var.set(self.request_id)
        metrics.in_flight.inc()
        start = time.perf_counter()
        outcome, status = "success", grpc.StatusCode.OK
        trailing: list[tuple[str, str]] = [("x-request-id", self.request_id)]
        try:
            if protected:
                self.authorize()
            answer = await fn()
            self.context.set_trailing_metadata(tuple(trailing))
            return answer
        except LossRegError as exc:
            outcome, status = exc.code, grpc_status(exc)
            if not abort:
                raise
            trailing.append(("lossreg-code", exc.code))
            if exc.field is not None:
                trailing.append(("lossreg-field", exc.field))
            retry_after = exc.details.get("retry_after")
            if retry_after is not None:
                trailing.append(("retry-after", f"{float(retry_after):g}"))
            self.context.set_trailing_metadata(tuple(trailing))
            await self.context.abort(status, exc.message)
            raise  # pragma: no cover - abort raises
        except grpc.aio.AbortError:
            raise
        except asyncio.CancelledError:  # the client went away or its deadline passed
            outcome, status = "cancelled", grpc.StatusCode.CANCELLED
            raise
        except Exception:
            outcome, status = "internal", grpc.StatusCode.INTERNAL
            log.exception("unexpected error handling gRPC %s", self.rpc)
            trailing.append(("lossreg-code", "internal"))
            self.context.set_trailing_metadata(tuple(trailing))
            await self.context.abort(
                status, f"internal server error (request id {self.request_id})"
            )
            raise  # pragma: no cover - abort raises
        finally:
            seconds = time.perf_counter() - start
            metrics.in_flight.dec()
            metrics.request_seconds.labels(route=f"/{SERVICE}/{self.rpc}", method="GRPC").observe(
                seconds
            )
            if self.compute:
                metrics.requests.labels(loss=self.loss or "<unknown>", outcome=outcome).inc()
            log_access(
                "GRPC %s %s %.1fms",
                (self.rpc, status.name, seconds * 1000),
                {
                    "method": "GRPC",
                    "path": f"/{SERVICE}/{self.rpc}",
                    "route": f"/{SERVICE}/{self.rpc}",
                    "status": status.value[0],
                    "duration_ms": round(seconds * 1000, 3),
                    "loss": self.loss,
                    "outcome": outcome,
                },
            )
            request_id_var.reset(token)


async def _nothing() -> None:
    return None


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """The RPCs, over the app's state (registry, dataplane, settings, metrics, statistics)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state: State = app.state

    async def registry(self) -> LossRegistry:
        """The registry, waiting while it loads as REST's routes do (`ServerNotReady`,
        UNAVAILABLE, only if it failed to load or did not load within the compute timeout)."""
        return await registry_when_loaded(self.app)

    @property
    def plane(self) -> DataPlane:
        return self.state.dataplane

    # -- health and metadata (open, as over REST) ----------------------------------------------

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        async def answer() -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=True)

        return await _Call(self, context, "ServerLive").run(answer, protected=False)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        async def answer() -> pb.ServerReadyResponse:
            return pb.ServerReadyResponse(ready=self.state.readiness.ready)

        return await _Call(self, context, "ServerReady").run(answer, protected=False)

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        async def answer() -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(
                name="lossreg", version=__version__, extensions=extensions(self.state.settings)
            )

        return await _Call(self, context, "ServerMetadata").run(answer, protected=False)

    # -- models ----------------------------------------------------------------------------------

    async def _spec(self, name: str, version: str) -> Any:
        spec = (await self.registry()).get(name).spec
        check_version(spec, version or None)
        return spec

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        async def answer() -> pb.ModelReadyResponse:
            await self._spec(request.name, request.version)
            return pb.ModelReadyResponse(ready=True)

        return await _Call(self, context, "ModelReady").run(answer)

    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        async def answer() -> pb.ModelMetadataResponse:
            metadata = model_metadata(await self._spec(request.name, request.version))
            return to_message(metadata, pb.ModelMetadataResponse())

        return await _Call(self, context, "ModelMetadata").run(answer)

    async def ModelConfig(self, request: Any, context: Any) -> pb.ModelConfigResponse:
        async def answer() -> pb.ModelConfigResponse:
            spec = await self._spec(request.name, request.version)
            config = model_config(spec, self.state.settings)
            response = pb.ModelConfigResponse()
            to_message(config, response.config)
            return response

        return await _Call(self, context, "ModelConfig").run(answer)

    async def ModelStatistics(self, request: Any, context: Any) -> pb.ModelStatisticsResponse:
        async def answer() -> pb.ModelStatisticsResponse:
            stats = model_statistics(
                await self.registry(), self.state.statistics, request.name, request.version
            )
            return to_message(stats, pb.ModelStatisticsResponse())

        return await _Call(self, context, "ModelStatistics").run(answer)

    async def RepositoryIndex(self, request: Any, context: Any) -> pb.RepositoryIndexResponse:
        async def answer() -> pb.RepositoryIndexResponse:
            models = repository_index(await self.registry(), ready=request.ready)
            return to_message(
                {"models": [m.model_dump() for m in models]}, pb.RepositoryIndexResponse()
            )

        return await _Call(self, context, "RepositoryIndex").run(answer)

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        async def answer() -> Any:
            raise refuse_model_control("load", request.model_name)

        return await _Call(self, context, "RepositoryModelLoad").run(answer)

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        async def answer() -> Any:
            raise refuse_model_control("unload", request.model_name)

        return await _Call(self, context, "RepositoryModelUnload").run(answer)

    # -- inference -------------------------------------------------------------------------------

    async def _infer(self, call: _Call, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        call.compute = True
        loss = (await self.registry()).get(request.model_name)
        call.loss = loss.spec.name
        check_version(loss.spec, request.model_version or None)
        plane = self.plane
        shm = regions(self.app)
        size = sum(len(raw) for raw in request.raw_input_contents) or request.ByteSize()
        with observe(plane.statistics, loss) as times:
            return await infer(
                plane,
                loss,
                lambda: decode_infer_request(loss.spec, request, shm),
                lambda decoded, result: encode_infer_response(
                    loss.spec, decoded, result.loss, result.grads, result.nonfinite
                ),
                size=size,
                times=times,
            )

    async def ModelInfer(self, request: Any, context: Any) -> pb.ModelInferResponse:
        call = _Call(self, context, "ModelInfer")
        return await call.run(lambda: self._infer(call, request))

    async def ModelStreamInfer(
        self, request_iterator: Any, context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Each request of the stream answered in order; an error is the response's
        ``error_message`` and the stream goes on (as Triton's decoupled-less models do)."""
        await _Call(self, context, "ModelStreamInfer").run(_nothing)  # the API key, once
        async for request in request_iterator:
            one = _Call(self, context, "ModelStreamInfer")
            try:
                response = await one.run(
                    functools.partial(self._infer, one, request), protected=False, abort=False
                )
            except LossRegError as exc:
                yield pb.ModelStreamInferResponse(error_message=exc.message)
                continue
            yield pb.ModelStreamInferResponse(infer_response=response)

    # -- system shared memory ------------------------------------------------------------------

    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        async def answer() -> Any:
            found = regions(self.app).status(request.name or None)
            return to_message(
                {"regions": {r["name"]: r for r in found}}, pb.SystemSharedMemoryStatusResponse()
            )

        return await _Call(self, context, "SystemSharedMemoryStatus").run(answer)

    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        async def answer() -> Any:
            regions(self.app).register(request.name, request.key, request.offset, request.byte_size)
            return pb.SystemSharedMemoryRegisterResponse()

        return await _Call(self, context, "SystemSharedMemoryRegister").run(answer)

    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        async def answer() -> Any:
            regions(self.app).unregister(request.name or None)
            return pb.SystemSharedMemoryUnregisterResponse()

        return await _Call(self, context, "SystemSharedMemoryUnregister").run(answer)
