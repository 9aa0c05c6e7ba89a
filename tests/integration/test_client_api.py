"""The client SDK against a live server: every built-in loss, dtypes, composition, async,
the catalog, errors (checked client-side and by the server alike), auth, and a busy server."""

from __future__ import annotations

import asyncio
import fnmatch
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lossreg import AsyncClient, Client, ComposeTerm, _retry, errors
from lossreg_service.settings import Settings
from tests.support.loss_cases import CASES, make_case, reference
from tests.support.losses import SlowSettings
from tests.support.server import serve


@pytest.fixture(scope="module")
def client(server_url: str) -> Iterator[Client]:
    with Client(server_url) as c:
        yield c


def _differentiable(client: Client, name: str, tensors: dict[str, torch.Tensor]) -> list[str]:
    spec = client.spec(name)
    return [
        t.name
        for t in spec.inputs
        if t.differentiable and t.name in tensors and tensors[t.name].is_floating_point()
    ]


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_builtin_loss_matches_torch(client: Client, name: str) -> None:
    tensors, params = make_case(name, torch.float64)
    grad = _differentiable(client, name, tensors)  # float targets included: torch has them
    # poisson_nll_loss(full=True)'s target gradient is NaN at a zero count, in torch too
    sent = {**params, "nonfinite": "allow"}
    result = client.evaluate(name, params=sent, grad=grad, **tensors)
    value, grads = reference(name, tensors, params, grad)
    torch.testing.assert_close(result.loss, value)
    assert result.grads.keys() == grads.keys()
    for key, expected in grads.items():
        assert result.grads[key].dtype == tensors[key].dtype
        torch.testing.assert_close(result.grads[key], expected, equal_nan=True)


def test_positional_order_and_numpy(client: Client) -> None:
    tensors, params = make_case("gaussian_nll_loss", torch.float64)
    arrays = {k: v.numpy() for k, v in tensors.items()}
    result = client.evaluate(
        "gaussian_nll_loss", arrays["input"], arrays["target"], arrays["var"], params=params
    )
    value, grads = reference("gaussian_nll_loss", tensors, params, ["input", "var"])
    assert isinstance(result.loss, np.ndarray)
    np.testing.assert_allclose(result.loss, value.numpy())
    np.testing.assert_allclose(result.grads["var"], grads["var"].numpy())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_round_trip(client: Client, dtype: torch.dtype) -> None:
    x = torch.randn(8, 5).to(dtype).requires_grad_()
    y = torch.randn(8, 5).to(dtype)
    result = client.evaluate("smooth_l1_loss", x, y, grad=["input"])
    expected = F.smooth_l1_loss(x, y)
    expected.backward()
    assert result.loss.dtype == dtype and result.grads["input"].dtype == dtype
    torch.testing.assert_close(result.loss, expected.detach())
    torch.testing.assert_close(result.grads["input"], x.grad)


def test_unreduced_loss_with_upstream_gradient(client: Client) -> None:
    x = torch.randn(4, 6, requires_grad=True)
    y = torch.randn(4, 6)
    upstream = torch.rand(4, 6)
    result = client.evaluate(
        "l1_loss", x, y, params={"reduction": "none"}, grad=["input"], grad_loss=upstream
    )
    F.l1_loss(x, y, reduction="none").backward(upstream)
    torch.testing.assert_close(result.grads["input"], x.grad)


def test_composition_matches_the_weighted_local_sum(client: Client) -> None:
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 3, 1, 2, 2, 0])
    terms = [
        ComposeTerm(loss="cross_entropy", params={"label_smoothing": 0.1}),
        {"loss": "multi_margin_loss", "weight": 0.5, "label": "margin", "params": {"margin": 0.5}},
    ]
    result = client.evaluate_terms(terms, x, y, grad=["input"])
    ce = F.cross_entropy(x, y, label_smoothing=0.1)
    margin = F.multi_margin_loss(x, y, margin=0.5)
    (ce + 0.5 * margin).backward()
    assert result.weights == {"cross_entropy": 1.0, "margin": 0.5}
    assert result.terms["cross_entropy"] == pytest.approx(ce.item())
    assert result.terms["margin"] == pytest.approx(margin.item())
    torch.testing.assert_close(result.loss, (ce + 0.5 * margin).detach())
    torch.testing.assert_close(result.grads["input"], x.grad)


def test_composition_is_checked_client_side(client: Client) -> None:
    with pytest.raises(errors.InvalidParameter, match="unknown parameter 'gamma'"):
        client.evaluate_terms(
            [{"loss": "cross_entropy", "params": {"gamma": 1.0}}],
            torch.randn(2, 3),
            torch.tensor([0, 1]),
        )


def test_async_client_concurrent_requests(server_url: str) -> None:
    x = torch.randn(16, 5, requires_grad=True)
    y = torch.randint(0, 5, (16,))
    F.cross_entropy(x, y).backward()

    async def main() -> list[Any]:
        async with AsyncClient(server_url) as client:
            calls = [client.evaluate("cross_entropy", x, y, grad=["input"]) for _ in range(8)]
            calls.append(client.evaluate_terms(["cross_entropy"], x, y))
            return await asyncio.gather(*calls)

    *singles, composed = asyncio.run(main())
    for result in singles:
        torch.testing.assert_close(result.grads["input"], x.grad)
    torch.testing.assert_close(composed.grads["input"], x.grad)


def test_catalog(client: Client) -> None:
    everything = client.losses()
    assert set(CASES) <= {s.name for s in everything}
    expected = {
        s.name for s in everything if fnmatch.fnmatch(s.name, "*margin*") and "ranking" in s.tags
    }
    assert expected == {"margin_ranking_loss"}
    assert {s.name for s in client.losses(pattern="*margin*", tags=["ranking"])} == expected
    spec = client.spec("cross_entropy")
    assert spec.params_schema["properties"]["label_smoothing"]["maximum"] == 1
    assert client.health() is True and client.ready() is True


BAD_REQUESTS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("cross_entropy", (torch.randn(4, 3),), {}),
    ("nll_loss", (torch.randn(4, 3), torch.rand(4)), {}),
    ("mse_loss", (torch.randn(4, 3), torch.randn(3, 3)), {}),
    (
        "multi_margin_loss",
        (torch.randn(4, 3), torch.tensor([0, 1, 2, 0])),
        {"weight": torch.ones(5)},
    ),
    ("mse_loss", (torch.randn(2), torch.randn(2)), {"params": {"gamma": 2.0}}),
    ("soft_margin_loss", (torch.randn(2), torch.randn(2)), {"grad": ["target"]}),
    ("mse_loss", (torch.randn(2), torch.randn(2)), {"wieght": torch.ones(2)}),
    ("mse_loss", (torch.randn(2), torch.randn(2)), {"params": {"weight": 2.0}}),
    ("nll_loss", (torch.randn(4, 3), torch.tensor([0.0, 1.0, 2.0, 0.0])), {}),
    ("mse_loss", (torch.randn(2), torch.randn(2)), {"bias": torch.randn(2)}),
]


@pytest.mark.parametrize(("name", "tensors", "kwargs"), BAD_REQUESTS)
def test_checks_before_sending_match_the_live_server(
    server_url: str, name: str, tensors: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    with Client(server_url, validate=False) as trusting, Client(server_url) as checking:
        with pytest.raises(errors.LossRegError) as by_server:
            trusting.evaluate(name, *tensors, **kwargs)
        with pytest.raises(errors.LossRegError) as by_client:
            checking.evaluate(name, *tensors, **kwargs)
    assert "request_id" in by_server.value.details  # it did come from the server
    assert "request_id" not in by_client.value.details  # it did not
    assert type(by_client.value) is type(by_server.value)
    assert (by_client.value.message, by_client.value.field) == (
        by_server.value.message,
        by_server.value.field,
    )


def test_server_errors_keep_their_class_and_details(client: Client) -> None:
    with pytest.raises(errors.LossNotFound) as info:
        client.evaluate("cross_entropyy", torch.randn(2, 3), torch.tensor([0, 1]))
    assert "cross_entropy" in info.value.suggestions
    with pytest.raises(errors.InvalidInput) as rejected:
        client.evaluate("cross_entropy", torch.randn(2, 3), torch.tensor([0, 7]))
    assert rejected.value.field == "target" and "class index 7" in rejected.value.message
    with pytest.raises(errors.LossRejectedInput):  # what torch itself refuses
        client.evaluate("binary_cross_entropy", torch.tensor([0.5, 1.5]), torch.tensor([0.0, 1.0]))


def test_api_keys() -> None:
    with serve(Settings(device="cpu", log_level="warning", api_keys=["k1"])) as url:
        with Client(url) as anonymous:
            assert anonymous.health() is True
            with pytest.raises(errors.Unauthorized):
                anonymous.spec("mse_loss")
        with Client(url, api_key="k1") as client:
            result = client.evaluate("mse_loss", torch.ones(3), torch.zeros(3))
            assert result.item() == 1.0


def test_a_busy_server_is_retried_until_every_request_is_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One compute thread, a queue of one: a burst gets 503 + Retry-After, and retries win.

    Small bodies to a slow loss: a request holds a queue place once its body has arrived (an
    upload in progress holds none), so the burst's requests reach the queue together."""
    waits: list[float] = []
    lock = threading.Lock()
    real_sleep = _retry.sleep

    def recording_sleep(seconds: float) -> None:
        with lock:
            waits.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(_retry, "sleep", recording_sleep)
    settings = SlowSettings(device="cpu", log_level="warning", compute_threads=1, max_queue=1)
    x = torch.randn(1000)
    with serve(settings) as url, Client(url, retries=20) as client:
        client.spec("slow_loss")
        results: list[tuple[torch.Tensor, torch.Tensor]] = []
        failures: list[BaseException] = []

        def work() -> None:
            try:
                answer = client.evaluate("slow_loss", x, params={"seconds": 0.3}, grad=["input"])
                with lock:
                    results.append((answer.loss, answer.grads["input"]))
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(exc)

        threads = [threading.Thread(target=work) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert failures == []
    assert len(results) == 6
    for loss, grad in results:
        torch.testing.assert_close(loss, (x * x).sum())
        torch.testing.assert_close(grad, 2 * x)
    assert waits, "the burst should have met a full queue at least once"
    assert min(waits) >= 1.0  # the server's Retry-After (at least 1 s) was honoured


@pytest.mark.gpu
def test_cuda_tensors_come_back_on_their_device(client: Client) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    x = torch.randn(4, 3, device="cuda", requires_grad=True)
    y = torch.tensor([0, 1, 2, 0], device="cuda")
    result = client.evaluate("cross_entropy", x, y, grad=["input"])
    F.cross_entropy(x, y).backward()
    assert result.loss.device == x.device and result.grads["input"].device == x.device
    torch.testing.assert_close(result.grads["input"], x.grad)
