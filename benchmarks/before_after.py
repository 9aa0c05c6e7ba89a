"""Before and after: the default server (`lossreg serve`, no settings) of two installs of lossreg,
side by side, alternating, on the same machine.

    python -m benchmarks.before_after OLD_VENV/bin/lossreg NEW_VENV/bin/lossreg --rounds 2
    python -m benchmarks.before_after .venv/bin/lossreg .venv/bin/lossreg \
        --after-env LOSSREG_ACCESS_LOG=false     # one install, a setting's cost

Each round starts each version's server in turn (`_procs.default_server`: a fresh process, no
``LOSSREG_*`` variables, the same environment otherwise) and measures CE 32x10 value+gradient
requests over 16 keep-alive connections (wrk, or the Python generator), the server's CPU a
request, and sequential ``tritonclient.http`` latency of CE 32x10 and CE 256x100. Alternating the
versions round by round spreads this VM's drift over both. ``--before-env`` / ``--after-env``
``NAME=VALUE`` give one side a setting (then both sides may be the same install). Prints a
table and the JSON.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from . import _cases, _procs
from ._load import run_load


def measure(
    lossreg: str, seconds: float, settings: dict[str, str] | None = None
) -> dict[str, float]:
    """One version's figures from a fresh default server (with ``settings``, if any)."""
    with _procs.default_server(settings, lossreg=lossreg) as server:
        ce32, ce256 = _cases.CASES["ce32"](), _cases.CASES["ce256"]()
        body, length = _cases.kserve_body(ce32)
        infer = f"{server.url}/v2/models/cross_entropy/infer"
        run_load(infer, body, connections=16, seconds=2, header_length=length)
        cpu = _procs.cpu_seconds(server.pid)
        load = run_load(infer, body, connections=16, seconds=seconds, header_length=length)
        cpu = _procs.cpu_seconds(server.pid) - cpu
        out = {"rps": load.rps, "server_cpu_us": 1e6 * cpu / max(1, load.requests)}
        for key, case in (("ce32_ms", ce32), ("ce256_ms", ce256)):
            call = _cases.make_tritonclient(case, server.url)
            out[key] = _cases.time_calls(call, runs=400, budget_s=6).median_ms
        return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.before_after", description=__doc__)
    parser.add_argument("before", help="the old install's `lossreg` executable")
    parser.add_argument("after", help="the new install's `lossreg` executable")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=8.0, help="each load run")
    for side in ("before", "after"):
        parser.add_argument(
            f"--{side}-env",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help=f"an environment variable for the {side} server (repeatable)",
        )
    args = parser.parse_args(argv)
    envs = {
        side: dict(item.split("=", 1) for item in getattr(args, f"{side}_env"))
        for side in ("before", "after")
    }
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for _ in range(args.rounds):
        for label in ("before", "after"):
            runs[label].append(measure(getattr(args, label), args.seconds, envs[label] or None))
    print("| measure | before | after |\n|---|---:|---:|")
    for key, what in (("rps", "16-connection CE 32x10 req/s"),
                      ("server_cpu_us", "server CPU µs a request"),
                      ("ce32_ms", "CE 32x10 sequential ms (tritonclient)"),
                      ("ce256_ms", "CE 256x100 sequential ms (tritonclient)")):  # fmt: skip
        cells = [" / ".join(f"{r[key]:.{0 if key in ('rps', 'server_cpu_us') else 2}f}"
                            for r in runs[label]) for label in ("before", "after")]  # fmt: skip
        print(f"| {what} | {cells[0]} | {cells[1]} |")
    result = {"before": args.before, "after": args.after, "env": envs, "runs": runs}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
