"""One KServe v2 inference, body to response: decode, compute (batched or not), encode.

Two paths, chosen by the body's size:

- small bodies (at most ``LOSSREG_BATCH_MAX_BYTES``) are decoded on the event loop (tens of
  microseconds). With small tensors too, dynamic batching groups them with concurrent requests
  that have the same loss, parameters and shapes (`batch_key`), one worker call computes the
  batch, and each answer is encoded back on the loop. A small body can still name big tensors
  (in shared memory): those are computed, and written back, on a worker;
- big bodies: decoding, evaluation and encoding all happen on a worker, so a 16 MB tensor or
  megabytes of JSON numbers never stall the event loop.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Sequence
from typing import Any

import orjson
import torch
from starlette.requests import Request
from starlette.responses import Response

from lossreg.protocol import HEADER_LENGTH, Buffer

from ..registry import Loss
from ..settings import Settings
from .batcher import DynamicBatcher
from .body import encoded_response, read_admitted_body
from .dataplane import Computation, Result, compute, compute_batch, single
from .executor import ComputeExecutor
from .inference import Decoded, decode_request, encode_response
from .shm import regions

__all__ = ["batch_key", "run_inference", "use_vmap"]

_JOIN_BELOW = 64 * 1024  # answers up to this size are sent as one chunk


def use_vmap(setting: str, devices: Sequence[torch.device]) -> bool:
    """``batch_vmap``: auto means vmap on CUDA devices only."""
    if setting == "auto":
        return any(d.type == "cuda" for d in devices)
    return setting == "on"


def batch_key(loss: Loss, decoded: Decoded, nonfinite: str) -> Hashable:
    """What requests must share to be stacked into one batch."""
    return (
        loss.spec.name,
        orjson.dumps(decoded.params, option=orjson.OPT_SORT_KEYS),
        None if decoded.plan.grad is None else tuple(decoded.plan.grad),
        nonfinite,
        tuple(sorted((n, a.shape, dt) for n, (a, dt) in decoded.inputs.items())),
        None if decoded.grad_loss is None else (decoded.grad_loss[0].shape, decoded.grad_loss[1]),
    )


def _computation(
    loss: Loss, decoded: Decoded, compute_dtype: torch.dtype | None, nonfinite: str
) -> Computation:
    return Computation(
        single(loss, decoded.params),
        decoded.inputs,
        grad=decoded.plan.grad,
        grad_loss=decoded.grad_loss,
        compute_dtype=compute_dtype,
        nonfinite=nonfinite,
    )


def _tensor_bytes(decoded: Decoded) -> int:
    arrays = [a for a, _ in decoded.inputs.values()]
    if decoded.grad_loss is not None:
        arrays.append(decoded.grad_loss[0])
    return sum(a.nbytes for a in arrays)


def _batch(
    loss: Loss, vmap: bool, computations: Sequence[Any], device: torch.device
) -> list[Result | Exception]:
    return compute_batch(loss, computations, device, vmap=vmap)


async def run_inference(
    request: Request,
    loss: Loss,
    settings: Settings,
    executor: ComputeExecutor,
    batcher: DynamicBatcher | None,
) -> Response:
    """Answer one inference request for ``loss``."""
    body = await read_admitted_body(request, executor, settings.max_request_bytes)
    header_length = request.headers.get(HEADER_LENGTH)
    compute_dtype = request.app.state.compute_dtype
    shm = regions(request.app)

    if len(body) <= settings.batch_max_bytes:  # small: decoding it here costs microseconds
        decoded = decode_request(loss.spec, body, header_length, shm)
        nonfinite = decoded.nonfinite or settings.nonfinite
        computation = _computation(loss, decoded, compute_dtype, nonfinite)
        if batcher is not None and _tensor_bytes(decoded) <= settings.batch_max_bytes:
            vmap = use_vmap(settings.batch_vmap, executor.devices)
            result: Result = await batcher.submit(
                batch_key(loss, decoded, nonfinite),
                computation,
                functools.partial(_batch, loss, vmap),
                label=loss.spec.name,
            )
            chunks, length = encode_response(
                loss.spec, decoded, result.loss, result.grads, result.nonfinite
            )
        else:  # big tensors in shared memory, or batching off

            def compute_encode(device: torch.device) -> tuple[list[Buffer], int | None]:
                result = compute(computation, device)
                return encode_response(
                    loss.spec, decoded, result.loss, result.grads, result.nonfinite
                )

            chunks, length = await executor.run(compute_encode, loss=loss.spec.name)
    else:

        def work(device: torch.device) -> tuple[list[Buffer], int | None]:
            decoded = decode_request(loss.spec, body, header_length, shm)
            nonfinite = decoded.nonfinite or settings.nonfinite
            result = compute(_computation(loss, decoded, compute_dtype, nonfinite), device)
            return encode_response(loss.spec, decoded, result.loss, result.grads, result.nonfinite)

        chunks, length = await executor.run(work, loss=loss.spec.name)
    if len(chunks) > 1 and sum(len(memoryview(c).cast("B")) for c in chunks) <= _JOIN_BELOW:
        chunks = [b"".join(chunks)]  # one write instead of one per tensor
    return encoded_response(
        request, chunks, header_length=length, min_bytes=settings.compress_min_bytes
    )
