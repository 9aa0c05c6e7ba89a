"""Ray Serve serving the same cross-entropy and Dice value+gradient, behind a FastAPI ingress
that takes raw bytes (``ray[serve]``, in the ``bench`` extra).

``POST /ce`` or ``POST /dice``: the body is the input's float32 bytes followed by the
target's (int64 class indices for ``/ce``, float32 masks for ``/dice``), the input's shape in
the query (``?shape=32,10``); the answer is the gradient's float32 bytes with the loss in
an ``X-Loss`` header. One replica, all the cores to Ray.

Run: ``python -m benchmarks.apps.ray_serve_app PORT``.
"""

# No ``from __future__ import annotations``: Serve's ingress re-wraps the methods, and FastAPI
# must see ``Request`` itself, not a string, to hand over the raw request.

import math
import os
import signal
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from fastapi import FastAPI, Request
from starlette.responses import Response

from .baseline import _dice

__all__ = ["main", "value_and_grad"]

api = FastAPI(title="ray serve peer")


def value_and_grad(route: str, shape: list[int], body: bytes) -> tuple[float, bytes]:
    """Decode the raw body, compute the loss and the input's gradient (float32 bytes)."""
    n = math.prod(shape)
    x = torch.from_numpy(np.frombuffer(body, np.float32, n).reshape(shape).copy())
    x.requires_grad_(True)
    if route == "ce":
        target = torch.from_numpy(np.frombuffer(body, np.int64, offset=4 * n).copy())
        loss = F.cross_entropy(x, target)
    else:
        mask = np.frombuffer(body, np.float32, n, offset=4 * n).reshape(shape)
        loss = _dice(x, torch.from_numpy(mask.copy()))
    (grad,) = torch.autograd.grad(loss, [x])
    return loss.item(), grad.numpy().tobytes()


def main() -> None:
    import ray
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
    @serve.ingress(api)
    class Losses:
        @api.post("/{route}")
        async def compute(self, route: str, shape: str, request: Request) -> Response:
            dims = [int(d) for d in shape.split(",")]
            loss, grad = value_and_grad(route, dims, await request.body())
            return Response(grad, media_type="application/octet-stream",
                            headers={"X-Loss": repr(loss)})  # fmt: skip

    port = int(sys.argv[1])
    # Ray's actors run in process groups of their own: stop them through Ray on SIGTERM.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(Losses.bind(), route_prefix="/", blocking=False)
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
