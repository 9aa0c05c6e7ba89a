"""gRPC under bad input, keys, health, metrics and statistics: every bad request gets the mapped
status with the message and code REST gives the same request, and the next request is served."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lossreg_service.server import create_app
from lossreg_service.server.grpc.proto import grpc_service_pb2 as pb
from lossreg_service.server.grpc.proto import grpc_service_pb2_grpc as pb_grpc
from lossreg_service.settings import Settings
from tests.support.plugins import make_distribution
from tests.support.server import free_port, serve

grpcclient = pytest.importorskip("tritonclient.grpc")


@pytest.fixture(scope="module")
def channel(grpc_server: tuple[str, str]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(grpc_server[1]) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> Any:
    return pb_grpc.GRPCInferenceServiceStub(channel)


def _mse(values: list[float] | None = None, **overrides: Any) -> pb.ModelInferRequest:
    """A valid raw-tensor request for mse_loss (2 inputs of 3 FP32)."""
    request = pb.ModelInferRequest(model_name=overrides.pop("model", "mse_loss"))
    data = np.array(values or [1.0, 2.0, 3.0], np.float32)
    for name, array in (("input", data), ("target", np.zeros(3, np.float32))):
        request.inputs.add(name=name, datatype="FP32", shape=[3])
        request.raw_input_contents.append(array.tobytes())
    return request


def _served(stub: Any) -> None:
    """The server answers a good request right after a bad one."""
    response = stub.ModelInfer(_mse(), timeout=30)
    assert np.frombuffer(response.raw_output_contents[0], np.float32)[0] == np.float32(14 / 3)


def _fails(stub: Any, request: pb.ModelInferRequest, status: grpc.StatusCode) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=30)
    assert caught.value.code() == status, caught.value.details()
    _served(stub)
    return caught.value


def _trailing(error: grpc.RpcError) -> dict[str, str]:
    return dict(error.trailing_metadata() or ())


def _wrong_byte_count() -> pb.ModelInferRequest:
    r = _mse()
    r.raw_input_contents[0] = b"\0" * 11
    return r


def _raw_for_one_input_only() -> pb.ModelInferRequest:
    r = _mse()
    del r.raw_input_contents[1]
    return r


def _raw_and_contents() -> pb.ModelInferRequest:
    r = _mse()
    r.inputs[0].contents.fp32_contents.extend([1.0, 2.0, 3.0])
    return r


def _unknown_datatype() -> pb.ModelInferRequest:
    r = _mse()
    r.inputs[0].datatype = "FP8"
    return r


def _missing_input() -> pb.ModelInferRequest:
    r = _mse()
    del r.inputs[1]
    del r.raw_input_contents[1]
    return r


def _unknown_parameter() -> pb.ModelInferRequest:
    r = _mse()
    r.parameters["margin"].double_param = 1.0
    return r


def _bad_parameter_value() -> pb.ModelInferRequest:
    r = _mse()
    r.parameters["reduction"].string_param = "average"
    return r


def _bad_parameter_type() -> pb.ModelInferRequest:
    r = _mse()
    r.parameters["reduction"].int64_param = 3
    return r


def _unknown_output() -> pb.ModelInferRequest:
    r = _mse()
    r.outputs.add(name="grad_nothing")
    return r


def _negative_shape() -> pb.ModelInferRequest:
    r = _mse()
    r.inputs[0].shape[:] = [-3]
    return r


def _wrong_contents_field() -> pb.ModelInferRequest:
    r = pb.ModelInferRequest(model_name="mse_loss")
    for name in ("input", "target"):
        t = r.inputs.add(name=name, datatype="FP32", shape=[2])
        t.contents.int64_contents.extend([1, 2])
    return r


INVALID = {
    "wrong raw byte count": (_wrong_byte_count, "invalid_tensor", "input"),
    "raw for one input only": (_raw_for_one_input_only, "invalid_request", "raw_input_contents"),
    "raw and contents on one input": (_raw_and_contents, "invalid_tensor", "input"),
    "unknown datatype": (_unknown_datatype, "invalid_tensor", "input"),
    "missing input": (_missing_input, "invalid_input", "target"),
    "unknown parameter": (_unknown_parameter, "invalid_parameter", "margin"),
    "bad parameter value": (_bad_parameter_value, "invalid_parameter", "reduction"),
    "bad parameter type": (_bad_parameter_type, "invalid_parameter", "reduction"),
    "unknown output": (_unknown_output, "invalid_input", "grad_nothing"),
    "negative shape": (_negative_shape, None, None),
    "values in another datatype's contents": (_wrong_contents_field, "invalid_tensor", "input"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_bad_requests_are_invalid_argument_naming_the_field(stub: Any, case: str) -> None:
    make, code, field = INVALID[case]
    error = _fails(stub, make(), grpc.StatusCode.INVALID_ARGUMENT)
    trailing = _trailing(error)
    if code is not None:
        assert trailing["lossreg-code"] == code
        assert trailing.get("lossreg-field") == field
    assert trailing["x-request-id"]


def test_the_same_request_gets_the_same_message_and_code_as_over_rest(
    stub: Any, grpc_server: tuple[str, str]
) -> None:
    body = {
        "inputs": [
            {"name": "input", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]},
            {"name": "target", "shape": [3], "datatype": "FP32", "data": [0, 0, 0]},
        ],
        "parameters": {"reduction": "average"},
    }
    rest = httpx.post(f"{grpc_server[0]}/v2/models/mse_loss/infer", json=body, timeout=30)
    error = _fails(stub, _bad_parameter_value(), grpc.StatusCode.INVALID_ARGUMENT)
    assert rest.status_code == 422
    assert error.details() == rest.json()["error"]
    assert _trailing(error)["lossreg-code"] == rest.json()["code"]


def test_unknown_model_and_version_are_not_found(stub: Any) -> None:
    error = _fails(stub, _mse(model="mse_losss"), grpc.StatusCode.NOT_FOUND)
    assert "did you mean 'mse_loss'" in error.details()
    request = _mse()
    request.model_version = "999"
    _fails(stub, request, grpc.StatusCode.NOT_FOUND)


def test_an_oversized_message_is_resource_exhausted(stub: Any) -> None:
    request = _mse()
    request.inputs[0].shape[:] = [2 * 1024 * 1024]  # 8 MiB, over the 4 MiB cap
    request.raw_input_contents[0] = b"\0" * (8 * 1024 * 1024)
    _fails(stub, request, grpc.StatusCode.RESOURCE_EXHAUSTED)


def test_a_non_finite_input_is_rejected_then_allowed_on_request(stub: Any) -> None:
    _fails(stub, _mse([1.0, float("nan"), 3.0]), grpc.StatusCode.INVALID_ARGUMENT)
    request = _mse([1.0, float("nan"), 3.0])
    request.parameters["nonfinite"].string_param = "allow"
    response = stub.ModelInfer(request, timeout=30)
    assert "loss" in response.parameters["nonfinite"].string_param
    assert np.isnan(np.frombuffer(response.raw_output_contents[0], np.float32)[0])


def test_model_control_is_failed_precondition(stub: Any) -> None:
    for rpc, message in (
        (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="mse_loss")),
        (stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name="mse_loss")),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            rpc(message, timeout=30)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "LOSSREG_ALLOW" in caught.value.details()
    _served(stub)


def test_request_ids_are_echoed(stub: Any) -> None:
    _, call = stub.ModelInfer.with_call(_mse(), metadata=[("x-request-id", "abc-123")], timeout=30)
    assert dict(call.trailing_metadata())["x-request-id"] == "abc-123"


def test_health_is_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "inference.GRPCInferenceService"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_metrics_count_grpc_requests(stub: Any, grpc_server: tuple[str, str]) -> None:
    def counts() -> tuple[float, float]:
        text = httpx.get(f"{grpc_server[0]}/metrics", timeout=10).text
        ok = bad = 0.0
        for line in text.splitlines():
            if line.startswith('lossreg_requests_total{loss="mse_loss",outcome="success"}'):
                ok = float(line.split()[-1])
            if line.startswith('lossreg_requests_total{loss="mse_loss",outcome="invalid_tensor"}'):
                bad = float(line.split()[-1])
        return ok, bad

    ok0, bad0 = counts()
    for _ in range(3):
        stub.ModelInfer(_mse(), timeout=30)
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(_wrong_byte_count(), timeout=30)
    ok1, bad1 = counts()
    assert (ok1 - ok0, bad1 - bad0) == (3, 1)
    text = httpx.get(f"{grpc_server[0]}/metrics", timeout=10).text
    assert 'method="GRPC",route="/inference.GRPCInferenceService/ModelInfer"' in text


def test_api_keys_are_enforced_on_grpc() -> None:
    port = free_port()
    settings = Settings(device="cpu", log_level="warning", grpc_port=port, api_keys=["s3cret"])
    with serve(settings), grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live  # open, as over REST
        for metadata in ([], [("authorization", "Bearer wrong")], [("authorization", "s3cret")]):
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(_mse(), metadata=metadata, timeout=30)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelMetadata(pb.ModelMetadataRequest(name="mse_loss"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        good = [("authorization", "Bearer s3cret")]
        response = stub.ModelInfer(_mse(), metadata=good, timeout=30)
        assert response.model_name == "mse_loss"
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.get_model_metadata("mse_loss", headers={"authorization": "Bearer s3cret"})
        client.close()


def test_grpc_statistics_count_successes_and_failures_and_batch_with_rest() -> None:
    """N requests over gRPC, some failing, and concurrent REST + gRPC requests that the dynamic
    batcher merges: tritonclient.grpc reads the counts back."""
    port = free_port()
    settings = Settings(
        device="cpu", log_level="warning", grpc_port=port, batch_max_delay_us=200_000
    )
    with serve(settings) as url:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        for _ in range(4):
            stub.ModelInfer(_mse(), timeout=30)
        for _ in range(2):
            with pytest.raises(grpc.RpcError):
                stub.ModelInfer(_missing_input(), timeout=30)
        stats = client.get_inference_statistics("mse_loss").model_stats[0]
        assert stats.inference_stats.success.count == 4
        assert stats.inference_stats.fail.count == 2
        assert stats.inference_count == 4 and stats.inference_stats.queue.count == 4
        assert stats.inference_stats.compute_infer.ns > 0 and stats.last_inference > 0

        async def mixed() -> None:
            body = {
                "inputs": [
                    {"name": "input", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]},
                    {"name": "target", "shape": [3], "datatype": "FP32", "data": [0, 0, 0]},
                ]
            }
            async with (
                httpx.AsyncClient(base_url=url, timeout=30) as http,
                grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
            ):
                astub = pb_grpc.GRPCInferenceServiceStub(channel)
                calls = [http.post("/v2/models/l1_loss/infer", json=body) for _ in range(4)]
                calls += [astub.ModelInfer(_mse(model="l1_loss"), timeout=30) for _ in range(4)]
                answers = await asyncio.gather(*calls)
                assert all(a.status_code == 200 for a in answers[:4])

        asyncio.run(mixed())
        l1 = client.get_inference_statistics("l1_loss").model_stats[0]
        assert l1.inference_count == 8
        assert l1.execution_count < 8  # REST and gRPC requests were computed together
        assert any(b.batch_size > 1 for b in l1.batch_stats)
        config = client.get_model_config("l1_loss").config
        assert config.backend == "lossreg" and config.max_batch_size == 0
        assert config.dynamic_batching.max_queue_delay_microseconds == 200_000
        index = {m.name: m.state for m in client.get_model_repository_index().models}
        assert index["l1_loss"] == "READY"
        client.close()


SLOW = """
import time

def loss(input):
    time.sleep(1.5)
    return input.sum()
"""


def test_a_passed_client_deadline_takes_the_request_out_of_the_queue(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One worker busy with a slow loss; a second request whose deadline passes while it waits
    in the queue is DEADLINE_EXCEEDED for the client and never computed by the server."""
    root = tmp_path_factory.mktemp("slow")
    make_distribution(root, "lossreg-grpc-slow", {"grpc_slow": "lossreg_grpc_slow:loss"},
                      modules={"lossreg_grpc_slow": SLOW})  # fmt: skip
    monkeypatch.syspath_prepend(str(root))
    port = free_port()
    settings = Settings(
        device="cpu", log_level="warning", grpc_port=port, compute_threads=1, batch_max_size=1
    )

    def slow_request() -> pb.ModelInferRequest:
        request = pb.ModelInferRequest(model_name="grpc_slow")
        request.inputs.add(name="input", datatype="FP32", shape=[2])
        request.raw_input_contents.append(np.ones(2, np.float32).tobytes())
        return request

    async def run() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            astub = pb_grpc.GRPCInferenceServiceStub(channel)
            first = asyncio.ensure_future(astub.ModelInfer(slow_request(), timeout=30))
            await asyncio.sleep(0.3)  # the first one holds the only worker
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await astub.ModelInfer(slow_request(), timeout=0.3)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            answer = await first
            assert np.frombuffer(answer.raw_output_contents[0], np.float32)[0] == 2.0

    with serve(settings) as url:
        asyncio.run(run())
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        stats = client.get_inference_statistics("grpc_slow").model_stats[0]
        client.close()
        assert stats.inference_count == 1 and stats.inference_stats.fail.count == 1
        assert stats.execution_count == 1  # the abandoned request never reached a worker
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert 'lossreg_requests_queued{device="cpu"} 0.0' in metrics
        assert 'lossreg_requests_total{loss="grpc_slow",outcome="cancelled"} 1.0' in metrics


def test_every_error_class_maps_to_the_status_the_protocol_lists() -> None:
    from lossreg import errors
    from lossreg_service.server.grpc.service import grpc_status

    expected = {
        400: grpc.StatusCode.INVALID_ARGUMENT,
        422: grpc.StatusCode.INVALID_ARGUMENT,
        401: grpc.StatusCode.UNAUTHENTICATED,
        404: grpc.StatusCode.NOT_FOUND,
        409: grpc.StatusCode.FAILED_PRECONDITION,
        413: grpc.StatusCode.RESOURCE_EXHAUSTED,
        503: grpc.StatusCode.UNAVAILABLE,
        504: grpc.StatusCode.DEADLINE_EXCEEDED,
        500: grpc.StatusCode.INTERNAL,
    }
    classes = [getattr(errors, n) for n in errors.__all__]
    served = [c for c in classes if isinstance(c, type) and issubclass(c, errors.LossRegError)]
    served = [c for c in served if not issubclass(c, errors.ClientError)]
    for cls in served:
        status = grpc_status(cls("x"))
        if cls.status_code in expected:
            assert status == expected[cls.status_code], cls
    assert grpc_status(errors.SharedMemoryDisabled("x")) == grpc.StatusCode.PERMISSION_DENIED


def test_a_grpc_port_taken_by_another_program_stops_start_up() -> None:
    """Start-up fails (the process never turns ready) rather than serving HTTP without gRPC."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = create_app(Settings(device="cpu", log_level="critical", grpc_port=port))

        async def start() -> None:
            async with app.router.lifespan_context(app):
                pass

        with pytest.raises(RuntimeError, match=f"cannot bind 127.0.0.1:{port} .LOSSREG_GRPC_PORT"):
            asyncio.run(start())


def test_health_turns_not_serving_when_the_server_shuts_down() -> None:
    """A Kubernetes-style Watch sees SERVING, then NOT_SERVING once shut-down begins."""
    port = free_port()
    settings = Settings(device="cpu", log_level="warning", grpc_port=port)
    seen: list[int] = []
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")  # open until the server is gone
    with serve(settings):
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"), timeout=60
        )

        def read() -> None:
            try:
                for answer in watch:
                    seen.append(answer.status)
            except grpc.RpcError:
                pass  # the server went away after saying so

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen == [health_pb2.HealthCheckResponse.SERVING]
    reader.join(timeout=15)
    channel.close()
    assert seen[-1] == health_pb2.HealthCheckResponse.NOT_SERVING
