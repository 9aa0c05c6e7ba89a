"""Make real, tiny installed distributions on a temporary sys.path entry.

A ``<name>-<version>.dist-info`` folder with METADATA and entry_points.txt is all
``importlib.metadata`` needs, so discovery runs exactly as it does for a pip-installed plugin.
"""

from __future__ import annotations

import textwrap
from pathlib import Path


def make_distribution(
    root: Path,
    name: str,
    entry_points: dict[str, str],
    modules: dict[str, str] | None = None,
    version: str = "1.0",
    group: str = "lossreg.losses",
) -> Path:
    """Write the distribution (and its modules) under ``root``; return ``root``."""
    dist_info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    )
    lines = [f"[{group}]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for module, source in (modules or {}).items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    return root
