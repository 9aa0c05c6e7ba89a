"""The plain-PyTorch example trains with RemoteLoss to the same weights as the local loss."""

from __future__ import annotations

import importlib.util
import pathlib
from types import ModuleType

import pytest
import torch

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("loss", ["cross_entropy", "mse_loss"])
def test_train_remote_loss_example(
    server_url: str, loss: str, capsys: pytest.CaptureFixture[str]
) -> None:
    example = _load("train_remote_loss")
    gap = example.main(["--url", server_url, "--loss", loss, "--steps", "40"])
    assert gap < 1e-5
    out = capsys.readouterr().out
    assert f"remote {loss} on {server_url}" in out and "largest parameter difference" in out


def test_fastai_example_imports_without_fastai_and_its_data_is_four_sign_quadrants() -> None:
    """fastai itself is not installed here (it would replace the pinned torch): the example runs
    for real in the fastai environment (tests/integration/test_fastai.py, `.ci/fastai.sh`).
    Here it loads without fastai (imported in `main`), and its data is the problem it states."""
    if importlib.util.find_spec("fastai") is not None:
        pytest.skip("fastai is installed: tests/integration/test_fastai.py runs the example")
    example = _load("fastai_remote_loss")
    with pytest.raises(ModuleNotFoundError) as excinfo:
        example.main(["--url", "http://127.0.0.1:9"])
    assert (excinfo.value.name or "").startswith("fastai")
    x, y = example.data(1024, seed=0).tensors
    assert x.shape == (1024, 8) and sorted(set(y.tolist())) == [0, 1, 2, 3]
    signs = {tuple(row) for row in (x[:, :2] > 0).int().tolist()}
    assert len(signs) == 4
    for label in range(4):  # one class per quadrant of the first two coordinates
        assert len({tuple(r) for r in (x[y == label, :2] > 0).int().tolist()}) == 1
    again, _ = example.data(1024, seed=0).tensors
    assert torch.equal(x, again)
