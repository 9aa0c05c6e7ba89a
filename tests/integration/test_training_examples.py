"""The plain-PyTorch example trains with RemoteLoss to the same weights as the local loss."""

from __future__ import annotations

import importlib.util
import pathlib
from types import ModuleType

import pytest

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


def test_fastai_example_is_valid_python_that_documents_the_learner() -> None:
    """fastai itself is not installed here (it would replace the pinned torch)."""
    source = (EXAMPLES / "fastai_remote_loss.py").read_text()
    compile(source, "fastai_remote_loss.py", "exec")
    assert "Learner(dls, model, loss_func=loss_func" in source
    assert 'RemoteLoss("cross_entropy", url=args.url' in source
    # it runs for real in the fastai environment: tests/integration/test_fastai.py
