"""Test-wide defaults: servers built by tests serve gRPC only when a test asks for a port."""

from __future__ import annotations

import os

os.environ.setdefault("LOSSREG_GRPC_PORT", "0")
