"""Container health probe: exit 0 when lossreg answers ``GET /v2/health/ready`` with 200.

The images run it from ``HEALTHCHECK`` and docker-compose's ``healthcheck``. It needs only the
standard library, so the image carries no curl. ``LOSSREG_PORT`` names the port when the service
does not listen on 8000; ``LOSSREG_HEALTH_URL`` overrides the whole address.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

TIMEOUT_S = 4.0


def ready_url(environ: Mapping[str, str] = os.environ) -> str:
    """The readiness address inside the container (the service binds 0.0.0.0)."""
    override = environ.get("LOSSREG_HEALTH_URL")
    if override:
        return override
    return f"http://127.0.0.1:{environ.get('LOSSREG_PORT', '8000')}/v2/health/ready"


def probe(url: str, timeout: float = TIMEOUT_S) -> int:
    """0 if the service is ready, 1 otherwise, with the reason on stderr for `docker inspect`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            if response.status == 200:
                return 0
            reason = f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:  # 503 while the registry loads or the queue is full
        reason = f"HTTP {exc.code}"
    except OSError as exc:  # refused, reset, timed out: not up (yet)
        reason = str(exc)
    sys.stderr.write(f"lossreg not ready at {url}: {reason}\n")
    return 1


if __name__ == "__main__":
    sys.exit(probe(ready_url()))
