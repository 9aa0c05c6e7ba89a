"""NaN/Inf through the client: refused by default with the shared error class, or computed and
returned when the request says ``nonfinite="allow"``."""

from __future__ import annotations

import math

import pytest
import torch

from lossreg import Client
from lossreg.errors import InvalidParameter, NonFiniteValue


def test_nan_input_is_refused_by_default(server_url: str) -> None:
    x = torch.tensor([[1.0, float("nan")], [0.5, 2.0]])
    with Client(server_url) as client, pytest.raises(NonFiniteValue) as excinfo:
        client.evaluate("mse_loss", x, torch.zeros(2, 2))
    assert excinfo.value.field == "input"


def test_a_request_may_allow_non_finite_values(server_url: str) -> None:
    x = torch.tensor([[1.0, float("nan")], [0.5, 2.0]])
    with Client(server_url) as client:
        result = client.evaluate(
            "mse_loss", x, torch.zeros(2, 2), params={"nonfinite": "allow", "reduction": "sum"}
        )
        finite = client.evaluate("mse_loss", x.nan_to_num(), torch.zeros(2, 2))
    assert math.isnan(float(result.loss))
    assert torch.isnan(result.grads["input"][0, 1])
    torch.testing.assert_close(result.grads["input"][1], 2 * x[1])
    assert math.isfinite(float(finite.loss))


def test_the_choice_itself_is_validated(server_url: str) -> None:
    with Client(server_url) as client, pytest.raises(InvalidParameter) as excinfo:
        client.evaluate("mse_loss", torch.ones(2), torch.ones(2), params={"nonfinite": "maybe"})
    assert excinfo.value.field == "nonfinite"
