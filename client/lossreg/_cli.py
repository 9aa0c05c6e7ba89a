"""The ``lossreg`` console script: the service's CLI when the server extra is installed."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from lossreg_service.cli import app
    except ImportError as exc:  # the client-only install
        sys.stderr.write(
            f"lossreg: the command line needs the service side ({exc}).\n"
            'Install it with: pip install "lossreg[server]"\n'
        )
        raise SystemExit(2) from None
    app()
