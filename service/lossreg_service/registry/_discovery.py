"""Find losses in installed distributions through the ``lossreg.losses`` entry-point group.

The pluggy way: the entry-point name is the loss name, the distribution that supplied it is
recorded, blocked names are skipped before anything is imported, and a plugin that fails to
import or to describe itself is kept as an *unavailable* entry carrying its error.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import traceback
from collections.abc import Iterator

from ._build import Loss, build_loss

GROUP = "lossreg.losses"

log = logging.getLogger("lossreg.registry")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One ``lossreg.losses`` entry point, not yet imported."""

    name: str
    value: str
    distribution: str | None
    version: str | None
    entry_point: importlib.metadata.EntryPoint


@dataclasses.dataclass(frozen=True)
class Failure:
    """A plugin that could not be loaded, with the error a person needs to fix it."""

    name: str
    distribution: str | None
    version: str | None
    entry_point: str
    error: str
    traceback: str


def iter_candidates(group: str = GROUP) -> Iterator[Candidate]:
    """Every entry point of ``group`` in every installed distribution, distribution recorded.

    Distributions are walked directly (not ``entry_points(group=...)``, which drops a name's
    second exporter) so that two distributions exporting one name are both seen.
    """
    seen: set[tuple[str | None, str, str]] = set()
    for dist in importlib.metadata.distributions():
        dist_name = dist.metadata["Name"] if dist.metadata else None
        for ep in dist.entry_points:
            if ep.group != group:
                continue
            key = (dist_name, ep.name, ep.value)
            if key in seen:  # the same distribution found twice on sys.path
                continue
            seen.add(key)
            yield Candidate(ep.name, ep.value, dist_name, dist.version, ep)


def load_candidate(candidate: Candidate) -> Loss | Failure:
    """Import one entry point and build its loss; never raises for a broken plugin."""
    try:
        obj = candidate.entry_point.load()
    except BaseException as exc:  # noqa: BLE001 - a plugin may raise anything, even SystemExit
        if isinstance(exc, KeyboardInterrupt):
            raise
        return _failure(
            candidate,
            f'Error importing loss plugin "{candidate.name}" '
            f"({candidate.value}): {type(exc).__name__}: {exc}",
        )
    try:
        return build_loss(
            obj,
            candidate.name,
            distribution=candidate.distribution,
            version=candidate.version,
            entry_point=candidate.value,
        )
    except Exception as exc:
        return _failure(
            candidate,
            f'Error describing loss plugin "{candidate.name}" '
            f"({candidate.value}): {type(exc).__name__}: {exc}",
        )


def _failure(candidate: Candidate, message: str) -> Failure:
    log.warning(message)
    return Failure(
        name=candidate.name,
        distribution=candidate.distribution,
        version=candidate.version,
        entry_point=candidate.value,
        error=message,
        traceback=traceback.format_exc(),
    )
