"""The serving benchmark: lossreg against the in-process limit and the alternatives, in one run.

    python -m benchmarks.serving            # full run (8 minutes on 2 busy cores)
    python -m benchmarks.serving --quick    # ~4 minutes: fewer runs and sizes, caps

Sections (``--sections``, default all). Each lossreg measure runs against the ``default``
server (``lossreg serve`` with no settings) and a tuned one:

- ``latency``: sequential value+gradient requests, CE 32x10 ... 4096x1000 float32 and a Dice
  16x1x256x256 batch, through the engine in-process (the limit), lossreg's Python client and
  ``tritonclient.http`` (default and tuned servers), ``tritonclient.grpc``, system shared
  memory, lossreg's JSON API, and the peers: a hand-written FastAPI endpoint with pydantic
  nested lists, LitServe, Ray Serve and PyTriton (those installed); plus the empty-endpoint
  floor. Every method's gradient is checked against the in-process one before it is timed.
- ``concurrency``: CE 32x10 over 1, 4 and 16 keep-alive connections (wrk, or a multi-process
  raw-socket generator): the empty endpoint, the default server (and with the access log
  off), the tuned one with dynamic batching on and off, the peers; the default and tuned
  servers over gRPC too, 1, 4 and 16 concurrent streams of ``tritonclient.grpc.aio``.
- ``memory``: the server's peak RSS per in-flight 16 MB request, and RSS after 100 vs 10,000
  requests, for the tuned (one worker) and the default server.
- ``scaling``: latency, server time and the raw TCP floor against payload size, 1 KB-64 MB.
- ``gpu`` (only with a CUDA device): 256 concurrent CE 32x10 connections against a server on
  the GPU with and without dynamic batching (vmapped on CUDA), and sequential latency there.

Writes the tables to stdout, all numbers to ``--json``, the README-format tables beside it
(``.md``), latency vs size to ``--plot`` and the scaling curve to ``scaling.png`` beside the JSON.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import http.client
import importlib.util
import os
import platform
import resource
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import _cases, _markdown, _peers, _procs, _report, _scaling, _targets
from ._grpc_load import run_grpc_load
from ._load import have_wrk, run_load

HERE = Path(__file__).resolve().parent
MB = 1024 * 1024
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
BATCHING = {"LOSSREG_BATCH_MAX_SIZE": "64", "LOSSREG_BATCH_MAX_DELAY_US": "0"}
NO_BATCHING = {"LOSSREG_BATCH_MAX_SIZE": "1"}
SERVER = {"LOSSREG_ALLOW_CLIENT_SHM": "true", "LOSSREG_ACCESS_LOG": "false",
          "OMP_WAIT_POLICY": "PASSIVE", **BATCHING}  # fmt: skip
# The tuned servers, set by hand for each measure (the `default` server is `lossreg serve` with
# no settings at all: _procs.default_server).
# Sequential requests: one worker, one computation at a time using every core, as in-process.
LATENCY_SERVER = {**SERVER, "LOSSREG_WORKERS": "1", "LOSSREG_INTRA_OP_THREADS": str(CORES)}
# Many connections: a worker process per core (each with its own batcher), a thread per op.
THROUGHPUT_SERVER = {**SERVER, "LOSSREG_WORKERS": str(CORES), "LOSSREG_INTRA_OP_THREADS": "1"}
ACCESS_LOG_OFF = {"LOSSREG_ACCESS_LOG": "false"}


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer runs and sizes, caps")
    parser.add_argument(
        "--sections",
        default="latency,concurrency,memory,scaling,gpu",
        help="comma list of sections",
    )
    parser.add_argument("--cases", default="ce32,ce256,ce1k,ce4k,seg", help="payloads to run")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "serving.json")
    parser.add_argument("--plot", type=Path, default=HERE / "results" / "serving.png")
    parser.add_argument(
        "--load-tool", choices=("auto", "wrk", "python"), default="auto", help="load generator"
    )
    return parser.parse_args(argv)


# -- latency ------------------------------------------------------------------------------------


def _runs(case: _cases.Case, quick: bool) -> tuple[int, float]:
    """How many rounds of sequential runs, and the time budget, for one case."""
    if case.nbytes < MB:
        return (100, 5.0) if quick else (300, 20.0)
    return (8, 5.0) if quick else (30, 30.0)


def _skip(method: str, case: _cases.Case, quick: bool) -> str | None:
    """Methods too slow to run on a big payload in this mode (said in the table)."""
    if method == "baseline" and case.nbytes > (MB if quick else 64 * MB):
        return "capped (--quick)"
    if method == "json_api" and quick and case.nbytes > 4 * MB:
        return "capped (--quick)"
    return None


def _baseline_runs(case: _cases.Case) -> tuple[int, float]:
    """Nested JSON lists take seconds per 16 MB request: a few runs suffice."""
    return (3, 1.0) if case.nbytes > MB else (20, 3.0)


def _methods(
    case: _cases.Case, servers: dict[str, _procs.Server]
) -> Iterator[tuple[str, Callable[[], _cases.Call]]]:
    lossreg, baseline, lit = servers["lossreg"], servers["baseline"], servers.get("litserve")
    default = servers["default"]
    yield "tcp_floor", lambda: _cases.make_tcp_floor(case, servers["echo"].url)
    yield "default", lambda: _cases.make_tritonclient(case, default.url)
    yield "default_client", lambda: _cases.make_client(case, default.url)
    yield "client", lambda: _cases.make_client(case, lossreg.url)
    yield "uds", lambda: _cases.make_client(case, "http://localhost", transport=_uds(servers))
    if _has_extension(lossreg.url, "system_shared_memory"):
        yield "shm", lambda: _cases.make_shm(case, lossreg.url)
    yield "tritonclient", lambda: _cases.make_tritonclient(case, lossreg.url)
    yield (
        "tritonclient_grpc",
        lambda: _cases.make_tritonclient_grpc(case, _procs.grpc_target(lossreg)),
    )
    yield "json_api", lambda: _cases.make_json_api(case, lossreg.url)
    yield "baseline", lambda: _cases.make_baseline(case, baseline.url)
    if lit is not None:
        yield "litserve", lambda: _cases.make_litserve(case, lit.url)
    if "ray_serve" in servers:
        yield "ray_serve", lambda: _peers.make_ray_serve(case, servers["ray_serve"].url)
    if "pytriton" in servers:
        yield "pytriton", lambda: _peers.make_pytriton(case, servers["pytriton"].url)


def _has_extension(url: str, extension: str) -> bool:
    import httpx

    return extension in httpx.get(url + "/v2").json().get("extensions", [])


def _uds(servers: dict[str, _procs.Server]) -> Any:
    from lossreg._transport import HTTPTransport

    return HTTPTransport(uds=servers["lossreg uds"].uds)


def run_latency(args: argparse.Namespace, results: dict[str, Any], progress: Progress) -> None:
    cases = _cases.cases(args.cases.split(","))
    have_litserve = importlib.util.find_spec("litserve") is not None
    have_ray, have_pytriton = _peers.have_ray(), _peers.have_pytriton()
    _note_missing_peers(results, have_litserve, have_ray, have_pytriton)
    peers = have_litserve + have_ray + have_pytriton
    task = progress.add_task("latency", total=len(cases) * (11 + peers) + 1)
    latency: dict[str, Any] = {}
    uds = Path(tempfile.mkdtemp(prefix="lossreg-bench-")) / "lossreg.sock"
    progress.update(task, description="latency: starting the servers")
    with _procs.start_all({
        "lossreg": _procs.lossreg_server(LATENCY_SERVER),
        "lossreg uds": _procs.lossreg_server(LATENCY_SERVER, uds=str(uds)),
        "default": _procs.default_server(),
        "baseline": _procs.baseline_server(),
        "echo": _procs.echo_server(),
        "litserve": _procs.litserve_server() if have_litserve else None,
        "ray_serve": _procs.ray_serve_server() if have_ray else None,
        "pytriton": _procs.pytriton_server() if have_pytriton else None,
    }) as servers:  # fmt: skip
        baseline = servers["baseline"]
        floor = _cases.time_calls(_cases.make_empty(baseline.url), runs=300, budget_s=5)
        results["floor_ms"] = floor.median_ms
        progress.advance(task)
        for case in cases:
            runs, budget = _runs(case, args.quick)
            row: dict[str, Any] = {"mbytes": case.nbytes / MB, "methods": {}}
            latency[case.label] = row
            progress.update(task, description=f"latency {case.label}: checking answers")
            inprocess = _cases.InProcess(case)
            reference = inprocess.gradient()
            calls: dict[str, tuple[Any, int]] = {"inprocess": (inprocess, runs)}
            for method, make in _methods(case, servers):
                skipped = _skip(method, case, args.quick)
                if skipped:
                    row["methods"][method] = {"skipped": skipped}
                    progress.advance(task)
                    continue
                call = make()
                if method != "tcp_floor":  # moves bytes only
                    np.testing.assert_allclose(call(), reference, rtol=1e-4, atol=1e-6)
                n = _baseline_runs(case)[0] if method in ("baseline", "json_api") else runs
                calls[method] = (call, n)
                progress.advance(task)
            progress.update(task, description=f"latency {case.label}: timing, interleaved")
            block = 20 if case.nbytes < MB else 4
            timings = _cases.time_interleaved(calls, block=block, budget_s=budget)
            for method, timing in timings.items():
                row["methods"][method] = _entry(timing)
            inprocess.close()
            progress.advance(task)
        while _cases.CLEANUP:
            _cases.CLEANUP.pop()()
    results["latency"] = latency


def _note_missing_peers(results: dict[str, Any], *have: bool) -> None:
    installs = ("LitServe (pip install -e '.[bench]')", "Ray Serve (pip install -e '.[bench]')",
                "PyTriton (pip install nvidia-pytriton)")  # fmt: skip
    for present, what in zip(have, installs):
        if not present:
            results["notes"].append(f"{what} not installed: skipped")


def _entry(timing: _cases.Timing) -> dict[str, Any]:
    return {"median_ms": timing.median_ms, "p90_ms": timing.p90_ms, "runs": len(timing.seconds)}


# -- concurrency --------------------------------------------------------------------------------


def run_concurrency(args: argparse.Namespace, results: dict[str, Any], progress: Progress) -> None:
    connections = [16] if args.quick else [1, 4, 16]  # --quick checks the section runs
    seconds = 2.0 if args.quick else 5.0
    case = _cases.CASES["ce32"]()
    body, length = _cases.kserve_body(case)
    infer = "/v2/models/cross_entropy/infer"
    rows: list[dict[str, Any]] = []
    if not have_wrk() and args.load_tool != "python":
        results["notes"].append("wrk not found (apt-get install wrk): Python load generator used")
    no_batching = {**THROUGHPUT_SERVER, **NO_BATCHING}
    plan: list[tuple[str, Any, str, bytes, int | None, list[int]]] = [
        ("empty endpoint", lambda: _procs.baseline_server(CORES), "/empty", b"", None,
         connections),
        ("default (lossreg serve)", _procs.default_server, infer, body, length, connections),
        ("default, LOSSREG_ACCESS_LOG=false", lambda: _procs.default_server(ACCESS_LOG_OFF),
         infer, body, length, [16]),
        ("tuned, batching", lambda: _procs.lossreg_server(THROUGHPUT_SERVER), infer, body,
         length, connections),
        ("tuned, no batching", lambda: _procs.lossreg_server(no_batching), infer, body, length,
         connections),
        *_peer_plan(case),
    ]  # fmt: skip
    grpc = ("default (lossreg serve)", "tuned, batching")  # the same servers over gRPC
    runs = sum(len(n) * (1 + (label in grpc)) for label, *_, n in plan)
    task = progress.add_task("concurrency", total=runs)
    for label, start, path, payload, header_length, counts in plan:
        progress.update(task, description=f"concurrency {label}: starting")
        with start() as server:
            for n in counts:
                progress.update(task, description=f"concurrency {label} x{n}")
                content_type = _MULTIPART.get(payload, "application/octet-stream")
                load, cpu = _load_twice(args, server, path, payload, n, seconds, header_length,
                                        content_type)  # fmt: skip
                rows.append({"server": label, **vars(load), "rps": load.rps, **cpu})
                progress.advance(task)
                if label in grpc:
                    progress.update(task, description=f"concurrency {label}, gRPC x{n}")
                    target = _procs.grpc_target(server)
                    run_grpc_load(target, case, streams=n, seconds=1)
                    before = _procs.cpu_seconds(server.pid), _load_generator_cpu()
                    load = run_grpc_load(target, case, streams=n, seconds=seconds)
                    cpu = _cpu_per_request(server, before, load.requests)
                    rows.append({"server": f"{label}, gRPC", **vars(load), "rps": load.rps,
                                 **cpu})  # fmt: skip
                    progress.advance(task)
    results["concurrency"] = rows


_MULTIPART: dict[bytes, str] = {}
"""Content types of the multipart bodies built for LitServe (their boundary)."""


def _load_twice(
    args: argparse.Namespace,
    server: Any,
    path: str,
    body: bytes,
    n: int,
    seconds: float,
    header_length: int | None,
    content_type: str,
) -> tuple[Any, dict[str, float]]:
    """A 1 s warm-up run, then the measured one, with the CPU the server and the load
    generator spent on each request."""
    url = server.url + path
    run_load(url, body, connections=n, seconds=1, header_length=header_length,
             content_type=content_type, tool=args.load_tool)  # fmt: skip
    before = _procs.cpu_seconds(server.pid), _load_generator_cpu()
    load = run_load(url, body, connections=n, seconds=seconds, header_length=header_length,
                    content_type=content_type, tool=args.load_tool)  # fmt: skip
    return load, _cpu_per_request(server, before, load.requests)


def _load_generator_cpu() -> float:
    """CPU used so far by this process and the load generators it ran and waited for (wrk,
    the Python generator's workers, the gRPC client's threads)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _cpu_per_request(server: Any, before: tuple[float, float], requests: int) -> dict[str, float]:
    """Microseconds of CPU a request cost the server and the load generator: where the two
    cores went (the servers outside this process tree, Ray's and Triton's, count partly)."""
    if not requests:
        return {}
    server_s = _procs.cpu_seconds(server.pid) - before[0]
    client_s = _load_generator_cpu() - before[1]
    return {"server_cpu_us": 1e6 * server_s / requests, "load_cpu_us": 1e6 * client_s / requests}


def _peer_plan(case: _cases.Case) -> list[tuple[str, Any, str, bytes, int | None, list[int]]]:
    """The installed peers, loaded with 16 connections each."""
    plan: list[tuple[str, Any, str, bytes, int | None, list[int]]] = []
    if importlib.util.find_spec("litserve") is not None:
        import httpx

        files = {n: (n, a.tobytes()) for n, a in case.inputs.items()}
        shape = ",".join(str(d) for d in case.inputs["input"].shape)
        request = httpx.Request("POST", "http://peer/predict", files=files,
                                data={"shape": shape, "loss": case.loss})  # fmt: skip
        body = request.read()
        _MULTIPART[body] = request.headers["content-type"]
        plan.append(("LitServe", _procs.litserve_server, "/predict", body, None, [16]))
    if _peers.have_ray():
        path, body, length = _peers.ray_load(case)
        plan.append(("Ray Serve", _procs.ray_serve_server, path, body, length, [16]))
    if _peers.have_pytriton():
        path, body, length = _peers.pytriton_load(case)
        plan.append(("PyTriton", _procs.pytriton_server, path, body, length, [16]))
    return plan


# -- memory -------------------------------------------------------------------------------------


def _post(conn: http.client.HTTPConnection, path: str, body: bytes, length: int) -> None:
    conn.request(
        "POST",
        path,
        body=body,
        headers={"Inference-Header-Content-Length": str(length), "Content-Length": str(len(body))},
    )
    answer = conn.getresponse()
    answer.read()
    if answer.status != 200:
        raise RuntimeError(f"server answered {answer.status}")


def run_memory(args: argparse.Namespace, results: dict[str, Any], progress: Progress) -> None:
    """The tuned server (one worker: its memory is the process's) and the default one (a
    supervisor and a worker per core: the sum over every process of the server)."""
    task = progress.add_task("memory", total=8)
    with _procs.lossreg_server({**SERVER, "LOSSREG_WORKERS": "1"}) as server:
        results["memory"] = _memory(server, args, progress, task)
    with _procs.default_server() as server:
        results["memory_default"] = _memory(server, args, progress, task)


def _memory(
    server: _procs.Server, args: argparse.Namespace, progress: Progress, task: Any
) -> dict[str, Any]:
    big = _cases.CASES["ce4k"]()
    big_body, big_length = _cases.kserve_body(big)
    small_body, small_length = _cases.kserve_body(_cases.CASES["ce32"]())
    path = "/v2/models/cross_entropy/infer"
    many = 2000 if args.quick else 10_000
    in_flight = 4
    memory: dict[str, Any] = {}
    pids = _procs.tree_pids(server.pid)

    def rss() -> int:
        return sum(_procs.rss(pid) for pid in pids)

    def peak() -> int:
        return sum(_procs.peak_rss(pid) for pid in pids)

    def reset() -> None:
        for pid in pids:
            _procs.reset_peak(pid)

    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    _post(conn, path, small_body, small_length)
    idle = rss()
    memory["processes"] = len(pids)
    memory["idle RSS (MB)"] = idle / MB
    reset()
    for _ in range(5):
        _post(conn, path, big_body, big_length)
    peak_one = peak() - rss()
    progress.advance(task)
    after_one = rss()
    reset()
    base = rss()

    def send_big() -> None:
        c = http.client.HTTPConnection(host, int(port), timeout=120)
        for _ in range(3):
            _post(c, path, big_body, big_length)
        c.close()

    with concurrent.futures.ThreadPoolExecutor(in_flight) as pool:
        list(pool.map(lambda _: send_big(), range(in_flight)))
    peak_many = peak() - base
    progress.advance(task)
    payload = big.nbytes
    memory["payload per 16 MB request (MB)"] = payload / MB
    memory["peak over steady, 1 in flight (MB)"] = (peak_one + after_one - idle) / MB
    memory[f"peak over steady, {in_flight} in flight (MB)"] = peak_many / MB
    memory["peak per in-flight request / payload"] = peak_many / in_flight / payload
    for _ in range(100):
        _post(conn, path, small_body, small_length)
    after_100 = rss()
    progress.advance(task)
    for _ in range(many - 100):
        _post(conn, path, small_body, small_length)
    after_many = rss()
    progress.advance(task)
    memory["RSS after 100 small (MB)"] = after_100 / MB
    memory[f"RSS after {many} small (MB)"] = after_many / MB
    memory["growth 100 -> many (MB)"] = (after_many - after_100) / MB
    memory["small requests"] = many
    conn.close()
    return memory


# -- gpu ----------------------------------------------------------------------------------------


def run_gpu(args: argparse.Namespace, results: dict[str, Any], progress: Progress) -> None:
    import torch

    if not torch.cuda.is_available():
        results["notes"].append("no CUDA device: the GPU section did not run")
        return
    seconds = 3.0 if args.quick else 8.0
    case = _cases.CASES["ce32"]()
    body, length = _cases.kserve_body(case)
    infer = "/v2/models/cross_entropy/infer"
    gpu = {**SERVER, "LOSSREG_DEVICE": "cuda", "LOSSREG_COMPUTE_THREADS": "2"}
    rows: list[dict[str, Any]] = []
    task = progress.add_task("gpu", total=4)
    for label, env in (("batching (vmap)", gpu), ("no batching", {**gpu, **NO_BATCHING})):
        with _procs.lossreg_server(env) as server:
            run_load(server.url + infer, body, connections=256, seconds=1,
                     header_length=length, tool=args.load_tool)  # fmt: skip
            load = run_load(server.url + infer, body, connections=256, seconds=seconds,
                            header_length=length, tool=args.load_tool)  # fmt: skip
            rows.append({"server": f"lossreg cuda, {label}", **vars(load), "rps": load.rps})
            progress.advance(task)
            if label.startswith("batching"):
                for name in ("ce32", "ce4k"):
                    big = _cases.CASES[name]()
                    inproc = _cases.time_calls(_cases.make_inprocess(big, "cuda"), runs=50,
                                               budget_s=5)  # fmt: skip
                    client = _cases.time_calls(_cases.make_client(big, server.url), runs=50,
                                               budget_s=10)  # fmt: skip
                    results.setdefault("gpu_latency", {})[big.label] = {
                        "inprocess_ms": inproc.median_ms,
                        "client_ms": client.median_ms,
                    }
                    progress.advance(task)
    results["gpu"] = rows


# -- main ---------------------------------------------------------------------------------------


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.serving" + (" --quick" if args.quick else ""),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "machine": platform.machine(),
        "load_tool": "wrk" if have_wrk() and args.load_tool != "python" else "python",
        "latency_server": LATENCY_SERVER,
        "throughput_server": THROUGHPUT_SERVER,
        "default_server": "lossreg serve (no LOSSREG_* settings)",
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _args(argv)
    console = Console(width=max(Console().width, 150))
    results: dict[str, Any] = {"meta": _meta(args), "notes": []}
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    runners = {"latency": run_latency, "concurrency": run_concurrency, "memory": run_memory,
               "scaling": _scaling.run_scaling, "gpu": run_gpu}  # fmt: skip
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    )  # fmt: skip
    with tempfile.TemporaryDirectory(), Progress(*columns, console=console) as progress:
        for name, runner in runners.items():
            if name in sections:
                runner(args, results, progress)
    results["targets"] = _targets.evaluate(results)
    _report.print_tables(results, console)
    for note in results["notes"]:
        console.print(f"note: {note}")
    markdown = _markdown.tables(results)
    console.print(markdown, markup=False, highlight=False, soft_wrap=True)
    _report.save_json(results, args.json)
    args.json.with_suffix(".md").write_text(markdown)
    plotted = _report.save_plot(results, args.plot) if "latency" in results else False
    scaled = args.json.with_name("scaling.png")
    scaled_ok = _scaling.save_plot(results, scaled) if "scaling" in results else False
    console.print(f"JSON: {args.json}, README tables: {args.json.with_suffix('.md')}"
                  + (f", plot: {args.plot}" if plotted else "")
                  + (f", scaling plot: {scaled}" if scaled_ok else ""))  # fmt: skip
    return results


if __name__ == "__main__":
    main()
