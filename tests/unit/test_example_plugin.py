"""The example plugin, pip-installed for real, shows its four losses everywhere.

It is installed with ``pip install --target`` into a temporary folder put on the path, so the test
environment itself is left as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lossreg_service.engine import evaluate
from lossreg_service.registry import LossRegistry

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "examples" / "lossreg-example-plugin"
NAMES = {"charbonnier", "weighted_mse", "ste_round_mse", "cross_entropy_flat"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    source = shutil.copytree(PLUGIN, tmp_path_factory.mktemp("src") / PLUGIN.name)  # builds in-tree
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
           "--no-cache-dir", "--disable-pip-version-check", "--target", str(target),
           str(source)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    return target


@pytest.fixture
def registry(installed, monkeypatch) -> LossRegistry:
    monkeypatch.syspath_prepend(str(installed))
    return LossRegistry.from_entry_points()


def test_cli_lists_the_four_losses(installed):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed), str(ROOT)])}
    out = subprocess.run(
        [sys.executable, "-m", "lossreg_service.cli", "list", "--json"],
        check=True, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    specs = {s["name"]: s for s in json.loads(out.stdout)}
    assert NAMES <= set(specs)
    styles = {specs[n]["style"] for n in NAMES}
    assert styles == {"function", "module", "autograd_function", "class"}
    for name in NAMES:
        assert specs[name]["distribution"] == "lossreg-example-plugin"
        assert specs[name]["version"] == "0.1.0"
        assert specs[name]["available"] is True
    table = subprocess.run(
        [sys.executable, "-m", "lossreg_service.cli", "list", "*_flat", "charb*"],
        check=True, capture_output=True, text=True, env={**env, "COLUMNS": "200"}, timeout=120,
    )  # fmt: skip
    assert "cross_entropy_flat" in table.stdout and "charbonnier" in table.stdout
    assert "mse_loss" not in table.stdout


def _check(result, value: torch.Tensor, leaf: torch.Tensor) -> None:
    value.backward()
    torch.testing.assert_close(result.loss, value.detach())
    torch.testing.assert_close(result.grads["input"], leaf.grad)


def test_function_style(registry):
    x, t = torch.randn(5), torch.randn(5)
    result = evaluate(registry.get("charbonnier"), {"input": x, "target": t}, {"eps": 0.1})
    xr = x.clone().requires_grad_()
    _check(result, torch.sqrt((xr - t) ** 2 + 0.01).mean(), xr)


def test_module_style(registry):
    x, t, w = torch.randn(2, 3), torch.randn(2, 3), torch.rand(2, 3)
    loss = registry.get("weighted_mse")
    assert [p.name for p in loss.spec.tensor_params] == ["weight"]
    result = evaluate(loss, {"input": x, "target": t, "weight": w}, {"scale": 2.0})
    xr = x.clone().requires_grad_()
    _check(result, (2.0 * (xr - t) ** 2 * w).mean(), xr)


def test_autograd_function_style_uses_its_backward(registry):
    x, t = torch.randn(8) * 4, torch.randn(8)
    result = evaluate(registry.get("ste_round_mse"), {"input": x, "target": t})
    torch.testing.assert_close(result.loss, ((torch.round(x) - t) ** 2).mean())
    torch.testing.assert_close(result.grads["input"], 2 * (torch.round(x) - t) / 8)


def test_flattening_wrapper_style(registry):
    x, t = torch.randn(2, 4, 3, 3), torch.randint(0, 4, (2, 3, 3), dtype=torch.int32)
    loss = registry.get("cross_entropy_flat")
    assert loss.spec.summary.startswith("fastai-style")
    result = evaluate(loss, {"input": x, "target": t}, {"label_smoothing": 0.05})
    xr = x.clone().requires_grad_()
    _check(result, F.cross_entropy(xr, t.long(), label_smoothing=0.05), xr)
