"""RemoteLoss in the training frameworks people use: HF Accelerate, PyTorch Lightning, fastai.

Each loop runs twice from the same weights and data, with the local loss and with RemoteLoss
against a live server, and must end with the same parameters. fastai is not in the test extra
(installing it pulls another torch than the pinned one), so its test runs only where fastai is
importable.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lossreg import Client, RemoteLoss

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@pytest.fixture(scope="module")
def client(server_url: str) -> Iterator[Client]:
    with Client(server_url) as c:
        yield c


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(96, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return TensorDataset(x, y)


def _model() -> nn.Module:
    torch.manual_seed(99)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))


def _assert_same(got: list[torch.Tensor], expected: list[torch.Tensor], **tol: float) -> None:
    """Same final parameters, and not merely the initial ones."""
    assert len(got) == len(expected)
    initial = [p.detach() for p in _model().parameters()]
    assert any(not torch.allclose(a, b.to(a)) for a, b in zip(initial, expected)), "no training"
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, **tol)


# -- HF Accelerate --------------------------------------------------------------------------------


def _accelerate_run(loss_fn: LossFn, mixed_precision: str) -> list[torch.Tensor]:
    accelerate = pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState, GradientState

    accelerator = accelerate.Accelerator(cpu=True, mixed_precision=mixed_precision)
    try:
        model = _model()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        loader = DataLoader(_data(), batch_size=16, shuffle=False)
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        for _ in range(2):
            for x, y in loader:
                optimizer.zero_grad()
                loss = loss_fn(model(x), y)
                accelerator.backward(loss)
                optimizer.step()
        return [p.detach().float().clone() for p in accelerator.unwrap_model(model).parameters()]
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
def test_accelerate_loop(client: Client, mixed_precision: str) -> None:
    """``accelerator.backward(loss)``; bf16 is CPU autocast (fp16 needs a GPU, see the GPU test)."""
    remote = RemoteLoss("cross_entropy", client=client)
    local = _accelerate_run(F.cross_entropy, mixed_precision)
    _assert_same(_accelerate_run(remote, mixed_precision), local)


@pytest.mark.gpu
def test_accelerate_fp16_loss_scaling_on_gpu(client: Client) -> None:
    """fp16 on CUDA: autocast plus a GradScaler inside ``accelerator.backward``."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    accelerate = pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState, GradientState

    def run(loss_fn: LossFn) -> list[torch.Tensor]:
        accelerator = accelerate.Accelerator(mixed_precision="fp16")
        try:
            model = _model()
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            loader = DataLoader(_data(), batch_size=16)
            model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
            assert accelerator.scaler is not None
            for x, y in loader:
                optimizer.zero_grad()
                accelerator.backward(loss_fn(model(x), y))
                optimizer.step()
            return [p.detach().float().cpu() for p in accelerator.unwrap_model(model).parameters()]
        finally:
            AcceleratorState._reset_state(True)
            GradientState._reset_state()

    remote = RemoteLoss("cross_entropy", client=client)
    _assert_same(run(remote), run(F.cross_entropy), rtol=1e-4, atol=1e-5)


# -- PyTorch Lightning ----------------------------------------------------------------------------


def _lightning_run(loss_fn: LossFn) -> list[torch.Tensor]:
    pl = pytest.importorskip("pytorch_lightning")

    class Classifier(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _model()
            self.loss_fn = loss_fn

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
            x, y = batch
            return self.loss_fn(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    module = Classifier()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    with warnings.catch_warnings():
        # Lightning's advice about dataloader workers and such is not what this test is about.
        warnings.filterwarnings("ignore", module=r"(pytorch_)?lightning.*")
        warnings.filterwarnings("ignore", category=UserWarning, message=r".*num_workers.*")
        trainer.fit(module, DataLoader(_data(), batch_size=16))
    return [p.detach().clone() for p in module.net.parameters()]


def test_lightning_loop(client: Client) -> None:
    remote = RemoteLoss("cross_entropy", client=client)
    _assert_same(_lightning_run(remote), _lightning_run(F.cross_entropy))


# -- fastai ---------------------------------------------------------------------------------------


def _fastai_run(loss_fn: LossFn) -> list[torch.Tensor]:
    with warnings.catch_warnings():  # fastai's imports trip torch's deprecation warnings
        warnings.simplefilter("ignore", DeprecationWarning)
        pytest.importorskip("fastai")
        from fastai.data.core import DataLoaders
        from fastai.learner import Learner

    dls = DataLoaders(
        DataLoader(_data(), batch_size=16, shuffle=False),
        DataLoader(_data(), batch_size=32),
        device=torch.device("cpu"),
    )
    learn = Learner(dls, _model(), loss_func=loss_fn)
    with warnings.catch_warnings(), learn.no_logging():
        warnings.filterwarnings("ignore", module=r"fast(ai|core|progress).*")
        learn.fit(2, 1e-2)
    return [p.detach().clone() for p in learn.model.parameters()]


def test_fastai_learner(client: Client) -> None:
    remote = RemoteLoss("cross_entropy", client=client)
    _assert_same(_fastai_run(remote), _fastai_run(F.cross_entropy))
