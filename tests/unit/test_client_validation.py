"""The client's checks before sending: the server's class, message and field, with no request."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lossreg import Client, errors
from lossreg.protocol.checks import check_shapes
from lossreg_service.server.catalog import spec_response
from tests.support.client_fakes import FakeServer, registry

X = torch.randn(4, 3)
Y = torch.tensor([0, 2, 1, 1])

# name -> (loss, positional tensors, keyword arguments of evaluate)
CASES: dict[str, tuple[str, tuple[Any, ...], dict[str, Any]]] = {
    "missing input": ("cross_entropy", (X,), {}),
    "wrong dtype": ("nll_loss", (X, Y.float()), {}),
    "shapes disagree": ("mse_loss", (X, torch.randn(3, 3)), {}),
    "too many dims": ("multi_margin_loss", (torch.randn(4, 3, 2), Y), {}),
    "too few dims": ("multi_margin_loss", (torch.randn(3), Y), {}),
    "class weight size": ("multi_margin_loss", (X, Y), {"weight": torch.ones(4)}),
    "unknown parameter": ("mse_loss", (X, X), {"params": {"gamma": 2.0}}),
    "unknown input": ("mse_loss", (X, X), {"foo": X}),
    "unknown input before missing": ("cross_entropy", (X,), {"foo": X}),
    "grad of a target": ("soft_margin_loss", (X, X), {"grad": ["target"]}),
    "grad of class indices": ("cross_entropy", (X, Y), {"grad": ["target"]}),
    "grad of nothing": ("mse_loss", (X, X), {"grad": ["bogus"]}),
    "triplet batch sizes": (
        "triplet_margin_loss",
        (torch.randn(4, 8), torch.randn(4, 8), torch.randn(5, 8)),
        {},
    ),
}


@pytest.fixture
def fake() -> FakeServer:
    return FakeServer()


@pytest.fixture
def make_client(fake: FakeServer) -> Iterator[Callable[[bool], Client]]:
    clients: list[Client] = []

    def make(validate: bool) -> Client:
        client = Client("http://lossreg.test", transport=fake.transport(), validate=validate)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.mark.parametrize("case", list(CASES))
def test_client_fails_fast_exactly_as_the_server_would(
    case: str, fake: FakeServer, make_client: Callable[[bool], Client]
) -> None:
    name, tensors, kwargs = CASES[case]
    with pytest.raises(errors.LossRegError) as by_server:
        make_client(False).evaluate(name, *tensors, **kwargs)
    assert any(p.endswith("/infer") for p in fake.paths()), "the server must have answered"

    checking = make_client(True)
    checking.spec(name)
    sent = len(fake.requests)
    with pytest.raises(errors.LossRegError) as by_client:
        checking.evaluate(name, *tensors, **kwargs)
    assert len(fake.requests) == sent, "nothing may be sent"
    assert type(by_client.value) is type(by_server.value)
    assert by_client.value.message == by_server.value.message
    assert by_client.value.field == by_server.value.field
    assert isinstance(by_client.value, errors.InvalidRequest)


def test_a_valid_request_passes_the_checks(make_client: Callable[[bool], Client]) -> None:
    result = make_client(True).evaluate("cross_entropy", X, Y, weight=torch.ones(3))
    assert result.loss.shape == ()


SHAPED = sorted(
    s.name
    for s in registry().list()
    if any(t.shape for t in s.inputs + s.tensor_params) and s.available
)


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(SHAPED),
    shapes=st.lists(st.lists(st.integers(0, 3), min_size=0, max_size=4), min_size=4, max_size=4),
)
def test_the_catalog_spec_keeps_the_shape_rules(name: str, shapes: list[list[int]]) -> None:
    """The client checks the catalog's copy of a spec; it must decide as the engine's does."""
    spec = registry().spec(name)
    tensors = spec.inputs + spec.tensor_params
    by_name = {t.name: tuple(shape) for t, shape in zip(tensors, shapes)}
    engine_error = client_error = None
    try:
        check_shapes(name, tensors, by_name)
    except errors.ShapeMismatch as exc:
        engine_error = (exc.message, exc.field)
    response = spec_response(spec)
    try:
        check_shapes(name, response.inputs + response.tensor_params, by_name)
    except errors.ShapeMismatch as exc:
        client_error = (exc.message, exc.field)
    assert client_error == engine_error
