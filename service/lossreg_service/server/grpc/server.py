"""The gRPC server beside HTTP: started in the app's lifespan on ``LOSSREG_GRPC_PORT``.

It runs on uvicorn's event loop (``grpc.aio``), so both transports share one registry, one
dataplane and one set of metrics in each process. With ``LOSSREG_WORKERS > 1`` every worker
binds the same port with ``SO_REUSEPORT`` (gRPC's ``grpc.so_reuseport``) and the kernel
spreads connections over them. Message caps come from ``LOSSREG_MAX_REQUEST_BYTES``.
``grpc.health.v1.Health`` answers SERVING for the server (``""``) and the inference service
exactly when REST's ``/v2/health/ready`` is true (the app's `Readiness`: not while the registry
loads, a device is unusable or the server drains), NOT_SERVING from the start of shut-down.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ...settings import Settings
from .proto import grpc_service_pb2_grpc as pb_grpc
from .service import SERVICE, InferenceService

__all__ = ["GrpcServer"]

log = logging.getLogger("lossreg.server")

_MAX_MESSAGE = 2**31 - 1  # gRPC's own limit on a message


class _ReadinessHealth(health.aio.HealthServicer):
    """``Check`` reads the app's readiness at each call, as ``/v2/health/ready`` does."""

    def __init__(self, readiness: Any) -> None:
        super().__init__()
        self.readiness = readiness

    async def Check(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC's name
        answer = await super().Check(request, context)
        if answer.status == health_pb2.HealthCheckResponse.SERVING and not self.readiness.ready:
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.NOT_SERVING)
        return answer


class GrpcServer:
    """``inference.GRPCInferenceService`` and ``grpc.health.v1.Health`` for one app."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.settings = settings
        limit = min(settings.max_request_bytes, _MAX_MESSAGE)
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 1),
            ]
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(app), self.server)
        self.health = _ReadinessHealth(app.state.readiness)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = 0

    async def start(self) -> int:
        """Bind and serve; the port bound (the setting's, or the one chosen for port 0 in tests).

        Raises:
            RuntimeError: the address cannot be bound.
        """
        address = f"{self.settings.host}:{self.settings.grpc_port}"
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError as exc:  # grpcio raises where older versions returned 0
            raise RuntimeError(f"gRPC cannot bind {address} (LOSSREG_GRPC_PORT): {exc}") from None
        if not self.port:
            raise RuntimeError(f"gRPC cannot bind {address} (LOSSREG_GRPC_PORT)")
        await self.server.start()
        await self._set(health_pb2.HealthCheckResponse.SERVING)
        log.info("gRPC (inference.GRPCInferenceService) on %s:%d", self.settings.host, self.port)
        return self.port

    async def _set(self, status: int) -> None:
        for name in ("", SERVICE):
            await self.health.set(name, status)

    async def stop(self, grace: float = 5.0) -> None:
        """NOT_SERVING, then let running calls finish for ``grace`` seconds."""
        await self._set(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace)
