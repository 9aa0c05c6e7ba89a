"""Ray Serve: lossreg's own app in N replicas, and a `DeploymentHandle` for Ray trainers.

    serve run lossreg_service.serving.ray:app num_replicas=2 num_gpus=1

Every other ``key=value`` is a lossreg setting (``max_queue=128``, ``batch_max_size=32``...).
Through Ray's HTTP proxy each replica answers exactly what ``lossreg serve`` answers (KServe v2,
``/v1``, health). Inside the cluster, code calls a loss without HTTP::

    handle = serve.get_app_handle("default")  # the application's name
    out = handle.evaluate.remote("cross_entropy", {"input": logits, "target": y}).result()
    out["loss"], out["grad_input"]  # tensors

The handle carries tensors through Ray's object store, which unpickles them: it is for code
running in the cluster, which is trusted; untrusted clients use HTTP, where nothing is unpickled.
``/metrics`` through the proxy is one replica's; Ray exports per-replica serving metrics itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application

from lossreg.errors import LossRegError

from ..engine import evaluate as evaluate_loss
from ..server import create_app
from ..server.deps import loaded_registry
from ..settings import Settings

__all__ = ["LossregDeployment", "RayArgs", "app", "build_app"]


class RayArgs(BaseModel):
    """``serve run ...:app`` arguments; any other key is a lossreg setting."""

    model_config = ConfigDict(extra="allow")

    num_replicas: int = Field(1, ge=1, description="Replicas (each a full lossreg server).")
    num_gpus: float = Field(0, ge=0, description="GPUs per replica; 0 computes on CPU.")
    num_cpus: float = Field(1, ge=0, description="CPUs Ray reserves per replica.")


def _settings(overrides: Mapping[str, Any]) -> Settings:
    return Settings(**overrides)


async def _wait_loaded(app: FastAPI, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    readiness = app.state.readiness
    while readiness.loading:
        if readiness.load_error or time.monotonic() > deadline:
            raise RuntimeError(readiness.load_error or "the loss registry did not load in time")
        await asyncio.sleep(0.01)


@serve.deployment
@serve.ingress()
class LossregDeployment:
    """One lossreg server per replica: the HTTP app behind Ray's proxy, `evaluate` for handles."""

    def __init__(self, overrides: Mapping[str, Any]) -> None:
        self._settings = _settings(overrides)
        self._app: FastAPI | None = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        fastapi_app = create_app(self._settings)
        inner = fastapi_app.router.lifespan_context

        @asynccontextmanager
        async def lifespan(app_: FastAPI) -> AsyncIterator[Any]:
            # Ray routes to a replica once its lifespan has started: start it loaded.
            async with inner(app_) as state:
                await _wait_loaded(app_)
                yield state

        fastapi_app.router.lifespan_context = lifespan
        self._app = fastapi_app
        return fastapi_app

    async def check_health(self) -> None:
        """Ray replaces a replica whose device failed (a fresh process is the cure)."""
        if self._app is not None and (unusable := self._app.state.readiness.unusable()):
            raise RuntimeError(f"unusable devices: {unusable}")

    async def evaluate(
        self,
        loss: str,
        inputs: Mapping[str, torch.Tensor | np.ndarray],
        params: Mapping[str, Any] | None = None,
        grad: Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The value (``loss``) and gradients (``grad_<input>``) as CPU tensors.

        Raises:
            LossRegError: the same errors HTTP clients get (`lossreg.errors`).
        """
        assert self._app is not None
        state = self._app.state
        found = loaded_registry(self._app).get(loss)
        tensors = {k: torch.as_tensor(v) for k, v in inputs.items()}
        outcome = "success"
        try:
            result = await state.executor.run(
                lambda device: evaluate_loss(
                    found,
                    tensors,
                    params or {},
                    grad=grad,
                    device=device,
                    compute_dtype=state.compute_dtype,
                    nonfinite=self._settings.nonfinite,
                ),
                loss=found.spec.name,
            )
        except LossRegError as exc:
            outcome = exc.code
            raise
        finally:
            state.metrics.requests.labels(loss=found.spec.name, outcome=outcome).inc()
        out = {"loss": result.loss.detach().cpu()}
        out.update({f"grad_{k}": v.detach().cpu() for k, v in result.grads.items()})
        return out


def build_app(
    num_replicas: int = 1,
    num_gpus: float = 0,
    num_cpus: float = 1,
    **settings: Any,
) -> Application:
    """The Ray Serve application: ``num_replicas`` lossreg servers, ``num_gpus`` each.

    ``max_ongoing_requests`` is at least the dynamic batch size (Ray's default, 5, would cap
    batches at 5) and covers lossreg's own queue, so lossreg's admission control (503 when a
    device's queue is full) is the bound, not a queue in front of it.
    """
    if num_gpus == 0:
        settings.setdefault("device", "cpu")
    checked = _settings(settings)  # a bad setting fails here, not in every replica
    ongoing = max(checked.batch_max_size, checked.compute_threads + checked.max_queue)
    deployment = LossregDeployment.options(  # type: ignore[attr-defined]  # a Deployment
        num_replicas=num_replicas,
        max_ongoing_requests=ongoing,
        ray_actor_options={"num_gpus": num_gpus, "num_cpus": num_cpus},
    )
    return deployment.bind(settings)


def app(args: RayArgs) -> Application:
    """The builder ``serve run lossreg_service.serving.ray:app key=value ...`` calls."""
    if not isinstance(args, RayArgs):
        args = RayArgs.model_validate(args)
    return build_app(args.num_replicas, args.num_gpus, args.num_cpus, **(args.model_extra or {}))
