"""Ray Serve tests start a real local Ray: heavy, so only `.ci/ray.sh` (which installs
``lossreg[ray]`` in its own venv and sets ``RUN_RAY_TESTS=1``) collects them; the default test
command never starts Ray."""

from __future__ import annotations

import os

if os.environ.get("RUN_RAY_TESTS") != "1":
    collect_ignore_glob = ["test_*.py"]
