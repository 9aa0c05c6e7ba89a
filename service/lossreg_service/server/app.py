"""The app factory: ``create_app(settings)`` builds a FastAPI app serving every registered loss.

uvicorn runs it as ``lossreg_service.server:create_app`` with ``factory=True``. The registry and
the compute pools are built once, in the lifespan (so a worker process that fails to start says
so before it accepts requests), and handed to routes through dependencies; there is no other
global state.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from lossreg import __version__

from ..engine import parse_dtype
from ..explorer import install_explorer
from ..settings import Settings
from .body import BodyBudget
from .docs import install_docs
from .errors import add_exception_handlers
from .executor import ComputeExecutor, resolve_devices
from .fastpath import InferFastPath
from .logs import configure_logging
from .metrics import Metrics
from .middleware import RequestContextMiddleware
from .openapi import install_openapi
from .pipeline import DataPlane
from .readiness import Readiness, lifecycle
from .routes import health, metrics, repository, shm, sweep, v1, v2
from .scheduler import Scheduler
from .statistics import MetricStatistics
from .supervision import die_with_supervisor
from .tuning import configure_compute

__all__ = ["create_app"]

log = logging.getLogger("lossreg.server")

DESCRIPTION = """\
Evaluate registered PyTorch losses, and their gradients, over HTTP.

* **KServe v2 / Open Inference Protocol** (`/v2`): each loss is a model; JSON and binary tensors
  (Triton's binary tensor extension), so `tritonclient.http` works unchanged.
* **JSON API** (`/v1`): the catalog, `POST /v1/losses/{name}/evaluate`, and `POST /v1/evaluate`
  for weighted compositions of losses.

Errors are `{"error": "<message>", "code": "<code>", "field": "<field or null>", ...}`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; ``settings`` default to ``Settings()`` (the ``LOSSREG_*`` environment).

    Raises:
        ValueError: a device or compute dtype in the settings does not exist.
    """
    settings = settings or Settings()
    configure_logging(settings.log_level, access_log=settings.access_log)
    die_with_supervisor()  # a worker of `lossreg serve --workers N` ends with its supervisor
    devices = resolve_devices(settings.device_names)
    compute_dtype = parse_dtype(settings.compute_dtype)
    metrics_ = Metrics()
    metrics_.watch_devices(devices)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.executor = ComputeExecutor(
            devices,
            threads=settings.compute_threads,
            max_queue=settings.max_queue,
            timeout_s=settings.compute_timeout_s,
            retry_after_s=settings.retry_after_s,
            metrics=metrics_,
        )
        app.state.batcher = configure_compute(app.state.executor, settings)
        scheduler = Scheduler(
            app.state.executor,
            app.state.batcher,
            settings=settings,
            statistics=app.state.statistics,
            compute_dtype=compute_dtype,
        )
        app.state.dataplane = DataPlane(settings, scheduler, app.state.statistics)
        grpc_server = None
        try:
            # The registry loads here (in the background unless plugins are strict).
            async with lifecycle(app, settings, app.state.readiness, metrics_):
                if settings.grpc_port:  # imported only when on: grpcio is not needed otherwise
                    from .grpc.server import GrpcServer

                    starting = GrpcServer(app, settings)
                    app.state.grpc_port = await starting.start()
                    grpc_server = starting
                yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop()
            app.state.executor.shutdown()

    app = FastAPI(
        title="lossreg",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by install_docs, without a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics_
    app.state.registry = None  # until the lifespan has loaded it
    app.state.readiness = Readiness()
    app.state.compute_dtype = compute_dtype
    app.state.statistics = MetricStatistics(metrics_.registry, metrics_.path)  # whole server
    app.state.body_budget = BodyBudget.from_settings(settings, metrics_.body_bytes)
    add_exception_handlers(app)
    app.add_middleware(InferFastPath)  # inside the request-context middleware
    app.add_middleware(RequestContextMiddleware, metrics=metrics_)
    routers = (health, repository, v2, v1, metrics, shm)  # repository before v2: /models/stats
    for router in (r.router for r in routers):
        app.include_router(router)
    app.include_router(sweep.router)  # POST /v1/losses/{name}/sweep, for the explorer's plots
    install_explorer(app)  # the page at / and /explore
    install_openapi(app)
    install_docs(app)
    return app
