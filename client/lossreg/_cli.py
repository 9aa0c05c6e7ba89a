"""The ``lossreg`` console script: the service's CLI when the server extra is installed."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def main() -> None:
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
