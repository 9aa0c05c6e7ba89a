"""What a user writes by hand: a plain FastAPI endpoint taking pydantic nested lists.

``POST /ce`` and ``POST /dice`` take ``{"input": [[...]], "target": [...]}`` and answer
``{"loss": float, "grad": [[...]]}``; ``POST /empty`` does nothing, and is the benchmark's
floor for what any FastAPI endpoint costs per request.

Run: ``uvicorn benchmarks.apps.baseline:app --port 8001``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fastapi import FastAPI, Request
from pydantic import BaseModel
from starlette.responses import Response

__all__ = ["app"]

app = FastAPI(title="hand-written baseline")


class CrossEntropyRequest(BaseModel):
    input: list[list[float]]
    target: list[int]


class DiceRequest(BaseModel):
    input: list[list[list[list[float]]]]
    target: list[list[list[list[float]]]]


class LossResponse(BaseModel):
    loss: float
    grad: list


def _dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Binary soft Dice per sample, averaged (what lossreg's ``dice`` computes in binary mode)."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    intersection = (p * t).sum(1)
    return (1 - (2 * intersection + smooth) / (p.sum(1) + t.sum(1) + smooth)).mean()


@app.post("/ce")
def cross_entropy(request: CrossEntropyRequest) -> LossResponse:
    x = torch.tensor(request.input, requires_grad=True)
    loss = F.cross_entropy(x, torch.tensor(request.target))
    (grad,) = torch.autograd.grad(loss, [x])
    return LossResponse(loss=loss.item(), grad=grad.tolist())


@app.post("/dice")
def dice(request: DiceRequest) -> LossResponse:
    x = torch.tensor(request.input, requires_grad=True)
    loss = _dice(x, torch.tensor(request.target))
    (grad,) = torch.autograd.grad(loss, [x])
    return LossResponse(loss=loss.item(), grad=grad.tolist())


@app.post("/empty")
async def empty(request: Request) -> Response:
    await request.body()
    return Response(b"", media_type="application/octet-stream")
