"""The ``lossreg`` console script: the service's CLI when the server extra is installed."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable


def main() -> None:
    # OpenMP's idle threads sleep instead of spinning. libgomp reads this once, when torch
    # loads, so it is set before the service (and torch) is imported, for `lossreg serve`'s
    # workers too; the caller's own value wins. Spinning threads took the cores from the
    # event loop: on 2 busy cores a 16 KB value+gradient took 30-80 ms instead of ~1.5 ms.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        # Imported by name: the client package must not depend on the service, not even for
        # a type checker run on a client-only install.
        app: Callable[[], None] = importlib.import_module("lossreg_service.cli").app
    except ImportError as exc:  # the client-only install
        sys.stderr.write(
            f"lossreg: the command line needs the service side ({exc}).\n"
            'Install it with: pip install "lossreg[server]"\n'
        )
        raise SystemExit(2) from None
    app()
