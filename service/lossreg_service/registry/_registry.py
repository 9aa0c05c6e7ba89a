"""The loss registry: built once at start-up, then only read.

Names: every loss is reachable by its qualified name ``<distribution>:<name>``; the bare name
works while exactly one distribution exports it. Two exporters make the bare name *ambiguous*
(reported by `conflicts`, `lossreg list` and the log) rather than letting one silently win.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any

from lossreg.errors import AmbiguousLoss, LossNotFound, LossUnavailable, PluginLoadError

from ._build import Loss, build_loss
from ._discovery import GROUP, Failure, iter_candidates, load_candidate
from .spec import LossSpec

log = logging.getLogger("lossreg.registry")

OWN_DISTRIBUTION = "lossreg"


def _natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _unavailable_spec(failure: Failure) -> LossSpec:
    return LossSpec(
        name=failure.name,
        summary="unavailable: the plugin failed to load",
        doc="",
        inputs=(),
        tensor_params=(),
        params_schema={},
        entry_point=failure.entry_point,
        distribution=failure.distribution,
        version=failure.version,
        available=False,
        error=failure.error,
    )


class LossRegistry:
    """Losses by name, with a query API (`list`, `get`, `__contains__`) and a conflict report."""

    def __init__(self) -> None:
        self._entries: dict[str, Loss | Failure] = {}  # qualified name -> loaded loss or failure
        self._by_name: dict[str, list[str]] = {}  # bare name -> qualified names exporting it

    # -- building ----------------------------------------------------------------------------

    @classmethod
    def from_entry_points(
        cls,
        *,
        autoload: bool = True,
        plugins: Iterable[str] = (),
        allow: Sequence[str] = (),
        deny: Sequence[str] = (),
        strict: bool = False,
        group: str = GROUP,
    ) -> LossRegistry:
        """Discover losses from installed distributions.

        Args:
            autoload: load every distribution's losses; when False, only lossreg's own and
                those of the distributions named in ``plugins``.
            plugins: distribution names to load even when autoload is off.
            allow: if given, only loss names matching one of these glob patterns are loaded.
            deny: loss names matching one of these glob patterns are skipped (before import).
            strict: raise `PluginLoadError` on the first plugin that fails to load.
            group: the entry-point group (tests use their own).
        """
        registry = cls()
        explicit = {p.lower() for p in plugins}
        for candidate in iter_candidates(group):
            dist = (candidate.distribution or "").lower()
            if not autoload and dist != OWN_DISTRIBUTION and dist not in explicit:
                continue
            if (allow and not _matches(candidate.name, allow)) or _matches(candidate.name, deny):
                log.info("loss %r from %s skipped by allow/deny settings", candidate.name, dist)
                continue
            loaded = load_candidate(candidate)
            if isinstance(loaded, Failure) and strict:
                raise PluginLoadError(loaded.error, field=candidate.name)
            registry._add(loaded, candidate.name, candidate.distribution)
        registry._log_conflicts()
        return registry

    def register(self, obj: Any, name: str, *, distribution: str | None = None) -> Loss:
        """Register a loss object directly (tests, notebooks); entry points are the usual way."""
        loaded = obj if isinstance(obj, Loss) else build_loss(obj, name, distribution=distribution)
        self._add(loaded, name, distribution)
        return loaded

    def _add(self, entry: Loss | Failure, name: str, distribution: str | None) -> None:
        qualified = f"{distribution}:{name}" if distribution else name
        if qualified in self._entries:
            raise ValueError(f"loss {qualified!r} is already registered")
        self._entries[qualified] = entry
        self._by_name.setdefault(name, []).append(qualified)

    def _log_conflicts(self) -> None:
        for name, owners in self.conflicts.items():
            log.warning(
                "loss name %r is exported by several distributions (%s); use a qualified name",
                name,
                ", ".join(owners),
            )

    # -- queries -----------------------------------------------------------------------------

    @property
    def conflicts(self) -> dict[str, list[str]]:
        """Bare names exported by more than one distribution -> their qualified names."""
        return {n: list(q) for n, q in self._by_name.items() if len(q) > 1}

    @property
    def failures(self) -> list[Failure]:
        return [e for e in self._entries.values() if isinstance(e, Failure)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._entries or name in self._by_name)

    def __len__(self) -> int:
        return len(self._entries)

    def qualified(self, name: str) -> str:
        """Resolve a bare or qualified name to the qualified one, or raise."""
        if name in self._entries:
            return name
        owners = self._by_name.get(name)
        if owners is None:
            suggestions = difflib.get_close_matches(name, list(self._by_name), n=5)
            hint = (
                f"; did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else ""
            )
            raise LossNotFound(
                f"no loss named {name!r}{hint}", field="name", suggestions=suggestions
            )
        if len(owners) > 1:
            raise AmbiguousLoss(
                f"loss name {name!r} is exported by several distributions; use one of "
                + ", ".join(repr(o) for o in owners),
                field="name",
                candidates=list(owners),
            )
        return owners[0]

    def get(self, name: str) -> Loss:
        """The loss called ``name`` (bare or ``dist:name``).

        Raises:
            LossNotFound: no such loss (with close-match suggestions).
            AmbiguousLoss: the bare name has several exporters.
            LossUnavailable: its plugin failed to load.
        """
        entry = self._entries[self.qualified(name)]
        if isinstance(entry, Failure):
            raise LossUnavailable(entry.error, field="name")
        return entry

    def spec(self, name: str) -> LossSpec:
        """The spec of ``name``, also for an unavailable loss (with its error)."""
        entry = self._entries[self.qualified(name)]
        return _unavailable_spec(entry) if isinstance(entry, Failure) else entry.spec

    def list(
        self,
        pattern: str | Sequence[str] | None = None,
        *,
        exclude: Sequence[str] = (),
        tags: Sequence[str] = (),
        include_unavailable: bool = True,
    ) -> list[LossSpec]:
        """Specs of the losses whose name matches, in natural order.

        Args:
            pattern: glob(s) on the bare or qualified name (``"dice*"``); None: all.
            exclude: globs to drop.
            tags: keep losses carrying every one of these tags.
            include_unavailable: keep entries whose plugin failed to load.
        """
        patterns = [pattern] if isinstance(pattern, str) else list(pattern or [])
        out = []
        for qualified, entry in self._entries.items():
            spec = _unavailable_spec(entry) if isinstance(entry, Failure) else entry.spec
            names = (spec.name, qualified)
            if patterns and not any(_matches(n, patterns) for n in names):
                continue
            if exclude and any(_matches(n, exclude) for n in names):
                continue
            if tags and not set(tags) <= set(spec.tags):
                continue
            if not include_unavailable and not spec.available:
                continue
            out.append(spec)
        return sorted(out, key=lambda s: (_natural_key(s.name), s.qualified_name))
