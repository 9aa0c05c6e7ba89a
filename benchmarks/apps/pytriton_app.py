"""PyTriton serving the same cross-entropy and Dice value+gradient: Triton's own server with a
Python callable and dynamic batching (``pip install nvidia-pytriton``; it pins numpy < 2).

Each request carries one sample along Triton's batch dimension: ``input`` ``[1, *shape]``
(FP32) and ``target`` (INT64 class indices for ``cross_entropy``, FP32 masks for ``dice``);
the answer is ``loss`` ``[1, 1]`` and ``grad_input`` ``[1, *shape]``. Triton's dynamic
batcher stacks concurrent requests of one shape; the callable differentiates the sum of the
per-request losses, so each request gets its own gradient, as unbatched.

Run: ``python -m benchmarks.apps.pytriton_app HTTP_PORT GRPC_PORT METRICS_PORT``.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .baseline import _dice

__all__ = ["cross_entropy", "dice", "main"]


def _value_and_grad(
    inputs: np.ndarray, loss_of: Callable[[int, torch.Tensor], torch.Tensor]
) -> dict[str, np.ndarray]:
    x = torch.from_numpy(inputs).requires_grad_(True)
    losses = torch.stack([loss_of(i, x[i]) for i in range(x.shape[0])])
    (grad,) = torch.autograd.grad(losses.sum(), [x])
    return {"loss": losses.detach().numpy().reshape(-1, 1), "grad_input": grad.numpy()}


def cross_entropy(input: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    """A batch of requests: ``input`` [B, N, C], ``target`` [B, N]; mean over each request."""
    labels = torch.from_numpy(target)
    return _value_and_grad(input, lambda i, x: F.cross_entropy(x, labels[i]))


def dice(input: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    """A batch of requests: ``input`` and ``target`` [B, *shape]; binary soft Dice each."""
    masks = torch.from_numpy(target)
    return _value_and_grad(input, lambda i, x: _dice(x, masks[i]))


def main() -> None:
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    http_port, grpc_port, metrics_port = (int(a) for a in sys.argv[1:4])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # leaving `with` stops tritonserver
    config = TritonConfig(
        http_address="127.0.0.1", http_port=http_port, grpc_address="127.0.0.1",
        grpc_port=grpc_port, metrics_port=metrics_port, exit_on_error=True,
    )  # fmt: skip
    batcher = DynamicBatcher(max_queue_delay_microseconds=0)  # as lossreg's default
    batching = ModelConfig(max_batch_size=64, batcher=batcher)
    with Triton(config=config) as triton:
        for name, fn, target_dtype, target_shape in (
            ("cross_entropy", cross_entropy, np.int64, (-1,)),
            ("dice", dice, np.float32, (-1, -1, -1, -1)),
        ):
            shape = (-1, -1) if name == "cross_entropy" else (-1, -1, -1, -1)
            triton.bind(
                model_name=name,
                infer_func=batch(fn),
                inputs=[
                    Tensor(name="input", dtype=np.float32, shape=shape),
                    Tensor(name="target", dtype=target_dtype, shape=target_shape),
                ],
                outputs=[
                    Tensor(name="loss", dtype=np.float32, shape=(1,)),
                    Tensor(name="grad_input", dtype=np.float32, shape=shape),
                ],
                config=batching,
                strict=False,
            )
        triton.serve()


if __name__ == "__main__":
    main()
