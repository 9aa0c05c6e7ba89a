"""``lossreg serve`` with two worker processes: both serve gRPC on the one port (SO_REUSEPORT)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from lossreg_service.server.grpc.proto import grpc_service_pb2 as pb
from lossreg_service.server.grpc.proto import grpc_service_pb2_grpc as pb_grpc
from tests.support.server import free_port


@pytest.mark.slow
def test_every_worker_serves_grpc_on_the_same_port(tmp_path: Path) -> None:
    lossreg = shutil.which("lossreg", path=str(Path(sys.executable).parent))
    assert lossreg, "the lossreg console script is installed next to this interpreter"
    http_port, grpc_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LOSSREG_")},
        "LOSSREG_PORT": str(http_port),
        "LOSSREG_GRPC_PORT": str(grpc_port),
        "LOSSREG_WORKERS": "2",
        "LOSSREG_DEVICE": "cpu",
        "LOSSREG_ALLOW": "l1_loss",
        "LOSSREG_LOG_LEVEL": "warning",
    }
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([lossreg, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    target = f"127.0.0.1:{grpc_port}"
    try:
        request = pb.ModelInferRequest(model_name="l1_loss")
        for name in ("input", "target"):
            request.inputs.add(name=name, datatype="FP32", shape=[1]).contents.fp32_contents.append(
                1.0
            )
        prefixes: set[str] = set()
        deadline = time.monotonic() + 120
        while len(prefixes) < 2:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, f"one worker answered: {prefixes}"
            with grpc.insecure_channel(target) as channel:  # a fresh connection each time
                try:
                    _, call = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer.with_call(
                        request, timeout=10
                    )
                except grpc.RpcError:  # the workers are still starting
                    time.sleep(0.5)
                    continue
            # request ids start with the answering process's random prefix
            prefixes.add(dict(call.trailing_metadata())["x-request-id"][:16])
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
