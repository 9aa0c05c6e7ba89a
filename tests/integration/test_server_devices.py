"""Device settings: a comma list gives one pool per distinct device; absent devices fail early."""

from __future__ import annotations

import pytest
import torch

from lossreg_service.server import create_app
from lossreg_service.server.executor import resolve_devices
from lossreg_service.settings import Settings


def test_device_setting_accepts_a_comma_list() -> None:
    assert Settings(device=" cpu , CPU ").device_names == ["cpu", "cpu"]
    assert Settings(device="").device_names == ["auto"]
    assert resolve_devices(["cpu", "cpu"]) == [torch.device("cpu")]


def test_auto_is_every_cuda_device_or_the_cpu() -> None:
    expected = (
        [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else [torch.device("cpu")]
    )
    assert resolve_devices(["auto"]) == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_absent_device_stops_the_app_from_being_built() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        create_app(Settings(device="cpu,cuda:0"))
