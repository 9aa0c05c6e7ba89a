"""The ``lossreg`` console script: the service's CLI when the server extra is installed."""

from __future__ import annotations

import os
import sys


def main() -> None:
    # OpenMP's idle threads sleep instead of spinning. libgomp reads this once, when torch
    # loads, so it is set before the service (and torch) is imported, for `lossreg serve`'s
    # workers too; the caller's own value wins. Spinning threads took the cores from the
    # event loop: on 2 busy cores a 16 KB value+gradient took 30-80 ms instead of ~1.5 ms.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        from lossreg_service.cli import app
    except ImportError as exc:  # the client-only install
        sys.stderr.write(
            f"lossreg: the command line needs the service side ({exc}).\n"
            'Install it with: pip install "lossreg[server]"\n'
        )
        raise SystemExit(2) from None
    app()
