"""The peers beside LitServe and the hand-written endpoint: Ray Serve and PyTriton serving the
same function. One request function per peer (checked against the in-process gradient like
every method), and the pre-built body that the load generators POST to each."""

from __future__ import annotations

import importlib.util

import httpx
import numpy as np

from ._cases import Call, Case, kserve_body

__all__ = ["have_pytriton", "have_ray", "make_pytriton", "make_ray_serve", "pytriton_load",
           "ray_load"]  # fmt: skip


def have_ray() -> bool:
    return importlib.util.find_spec("ray") is not None


def have_pytriton() -> bool:
    return importlib.util.find_spec("pytriton") is not None


def _ray_path(case: Case) -> str:
    shape = ",".join(str(d) for d in case.inputs["input"].shape)
    return f"/{case.baseline_route.strip('/')}?shape={shape}"


def _ray_body(case: Case) -> bytes:
    return case.inputs["input"].tobytes() + case.inputs["target"].tobytes()


def make_ray_serve(case: Case, url: str) -> Call:
    """Ray Serve: the tensors' raw bytes in the body, the shape in the query, the gradient's
    bytes back."""
    http = httpx.Client(timeout=600)
    path, body = url + _ray_path(case), _ray_body(case)

    def call() -> np.ndarray:
        answer = http.post(path, content=body)
        answer.raise_for_status()
        return np.frombuffer(answer.content, np.float32).reshape(case.inputs["input"].shape)

    return call


def ray_load(case: Case) -> tuple[str, bytes, int | None]:
    """Ray Serve's path, body and (no) inference header length, for the load generators."""
    return _ray_path(case), _ray_body(case), None


def _batched(case: Case) -> Case:
    """The case with Triton's batch dimension in front: one request, one sample."""
    inputs = {name: array[np.newaxis] for name, array in case.inputs.items()}
    return Case(case.label, case.loss, inputs, {}, case.baseline_route)


def make_pytriton(case: Case, url: str) -> Call:
    """PyTriton through ``tritonclient.http``, binary tensors both ways, batch of one."""
    import tritonclient.http as triton

    one = _batched(case)
    client = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=600)
    inputs = []
    for name, array in one.inputs.items():
        entry = triton.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32
                                  else "INT64")  # fmt: skip
        entry.set_data_from_numpy(array, binary_data=True)
        inputs.append(entry)
    outputs = [triton.InferRequestedOutput(n, binary_data=True) for n in ("loss", "grad_input")]

    def call() -> np.ndarray:
        result = client.infer(case.loss, inputs, outputs=outputs)
        return result.as_numpy("grad_input")[0]

    return call


def pytriton_load(case: Case) -> tuple[str, bytes, int | None]:
    """PyTriton's infer path and KServe binary body (batch of one), for the load generators."""
    body, length = kserve_body(_batched(case))
    return f"/v2/models/{case.loss}/infer", body, length
