"""LitServe serving the same cross-entropy and Dice value+gradient (optional ``bench`` extra).

Tensors travel as raw bytes in a multipart form (``input``, ``target`` files; ``shape`` and
``loss`` fields); the answer is the gradient's raw bytes with the loss in an ``X-Loss``
header. Run: ``python -m benchmarks.apps.litserve_app PORT``.
"""

# No ``from __future__ import annotations``: LitServe reads ``decode_request``'s annotation at
# run time and must see the ``Request`` class itself to hand over the raw request (the form).

import sys
from typing import Any

import litserve as ls
import numpy as np
import torch
import torch.nn.functional as F
from fastapi import Request
from starlette.responses import Response

from .baseline import _dice

__all__ = ["LossAPI", "main"]


class LossAPI(ls.LitAPI):
    """Decode the form, compute value and gradient, encode the gradient's bytes."""

    def setup(self, device: str) -> None:
        self.device = device

    def decode_request(self, request: Request) -> dict[str, Any]:  # type: ignore[override]
        shape = [int(d) for d in str(request["shape"]).split(",")]  # type: ignore[index]
        x = np.frombuffer(request["input"].file.read(), dtype=np.float32).reshape(shape)
        if request["loss"] == "cross_entropy":
            t = np.frombuffer(request["target"].file.read(), dtype=np.int64)
        else:
            t = np.frombuffer(request["target"].file.read(), dtype=np.float32).reshape(shape)
        return {"loss": str(request["loss"]), "input": x, "target": t}

    def predict(self, x: dict[str, Any]) -> tuple[float, np.ndarray]:
        inp = torch.from_numpy(x["input"].copy()).requires_grad_(True)
        target = torch.from_numpy(x["target"].copy())
        if x["loss"] == "cross_entropy":
            loss = F.cross_entropy(inp, target)
        else:
            loss = _dice(inp, target)
        (grad,) = torch.autograd.grad(loss, [inp])
        return loss.item(), grad.numpy()

    def encode_response(self, output: tuple[float, np.ndarray]) -> Response:
        loss, grad = output
        return Response(
            grad.tobytes(), media_type="application/octet-stream", headers={"X-Loss": repr(loss)}
        )


def main() -> None:
    port = int(sys.argv[1])
    server = ls.LitServer(LossAPI(), accelerator="cpu", timeout=600)
    server.run(port=port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
