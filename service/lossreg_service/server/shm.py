"""System shared memory (Triton's extension): co-located clients pass tensors by reference.

A client creates a POSIX shared-memory object (``/dev/shm/<key>``; tritonclient's
``utils.shared_memory`` does it), registers a window of it as a named region, and then names
the region instead of sending bytes: an input's ``parameters`` carry
``shared_memory_region``, ``shared_memory_byte_size`` and optionally ``shared_memory_offset``;
an output asked for with the same parameters is written into the region, and its response
entry names the region instead of carrying data. The server maps each region once, at
registration, so an input becomes a tensor over the mapped pages without a copy.

Off unless ``LOSSREG_ALLOW_CLIENT_SHM=true`` (Triton's ``--allow-client-shm``): a client that
may register regions can make the server read and write any shared-memory object its user
can open. Keys are plain names (``[A-Za-z0-9._-]``, one optional leading ``/``), opened
without following links, and must be regular shared-memory objects big enough for the window.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lossreg.errors import (
    InvalidTensor,
    RegionExists,
    RegionNotFound,
    SharedMemoryDisabled,
    SharedMemoryError,
)

__all__ = [
    "SHM_BYTE_SIZE",
    "SHM_OFFSET",
    "SHM_REGION",
    "Region",
    "SharedMemoryRegions",
    "reference",
    "regions",
    "write_output",
]

SHM_REGION = "shared_memory_region"
SHM_BYTE_SIZE = "shared_memory_byte_size"
SHM_OFFSET = "shared_memory_offset"
SHM_DIR = Path("/dev/shm")
_KEY = re.compile(r"^/?[A-Za-z0-9._-]{1,250}$")
_DISABLED = (
    "system shared memory is disabled on this server (start it with LOSSREG_ALLOW_CLIENT_SHM=true)"
)


@dataclasses.dataclass(eq=False)
class Region:
    """A registered window ``[offset, offset + byte_size)`` of a shared-memory object."""

    name: str
    key: str
    offset: int
    byte_size: int
    mapping: mmap.mmap

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset,
                "byte_size": self.byte_size}  # fmt: skip

    def view(self, offset: int, byte_size: int, tensor: str) -> memoryview:
        """Writable bytes ``[offset, offset + byte_size)`` of the region, for ``tensor``.

        Raises:
            InvalidTensor: the window runs past the region.
        """
        if offset < 0 or byte_size < 0 or offset + byte_size > self.byte_size:
            raise InvalidTensor(
                f"tensor {tensor!r}: {byte_size} bytes at offset {offset} run past shared "
                f"memory region {self.name!r} ({self.byte_size} bytes)",
                field=tensor,
            )
        start = self.offset + offset
        return memoryview(self.mapping)[start : start + byte_size]

    def close(self) -> None:
        try:
            self.mapping.close()
        except BufferError:
            pass  # a computation still reads it: the mapping goes when its last view does


class SharedMemoryRegions:
    """The registered regions of one server, by name.

    Args:
        enabled: whether clients may register regions (``LOSSREG_ALLOW_CLIENT_SHM``).
        root: where shared-memory objects live (``/dev/shm`` on Linux).
    """

    def __init__(self, enabled: bool, root: Path = SHM_DIR) -> None:
        self.enabled = enabled
        self.root = root
        self._regions: dict[str, Region] = {}

    def register(self, name: str, key: Any, offset: Any, byte_size: Any) -> Region:
        """Map ``byte_size`` bytes at ``offset`` of the object ``key`` as region ``name``.

        Raises:
            SharedMemoryDisabled: clients may not register regions on this server.
            RegionExists: the name is taken.
            RegionNotFound: no shared-memory object ``key`` exists.
            SharedMemoryError: the key is not a plain name, or the window does not fit.
        """
        if not self.enabled:
            raise SharedMemoryDisabled(_DISABLED, field="key")
        if name in self._regions:
            raise RegionExists(
                f"shared memory region {name!r} is already registered; unregister it first",
                field="name",
            )
        for field, value in (("offset", offset), ("byte_size", byte_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SharedMemoryError(
                    f"{field} must be a non-negative integer, got {value!r}", field=field
                )
        if not isinstance(key, str) or not _KEY.match(key):
            raise SharedMemoryError(
                f"key must name a shared-memory object ([A-Za-z0-9._-], one optional leading "
                f"'/'), got {key!r}",
                field="key",
            )
        mapping = self._map(key, offset + byte_size)
        region = Region(name, key, offset, byte_size, mapping)
        self._regions[name] = region
        return region

    def _map(self, key: str, needed: int) -> mmap.mmap:
        path = self.root / key.lstrip("/")
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise RegionNotFound(
                f"cannot open shared memory object {key!r}: no such object", field="key"
            ) from None
        except OSError as exc:
            raise SharedMemoryError(
                f"cannot open shared memory object {key!r}: {exc.strerror}", field="key"
            ) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise SharedMemoryError(f"{key!r} is not a shared memory object", field="key")
            if needed > info.st_size or info.st_size == 0:
                raise SharedMemoryError(
                    f"offset + byte_size = {needed} bytes do not fit in shared memory object "
                    f"{key!r} ({info.st_size} bytes)",
                    field="byte_size",
                )
            return mmap.mmap(fd, info.st_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)

    def unregister(self, name: str | None = None) -> None:
        """Forget region ``name`` (every region when None); an unknown name is not an error."""
        names = list(self._regions) if name is None else [name]
        for each in names:
            region = self._regions.pop(each, None)
            if region is not None:
                region.close()

    def status(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every region's status, or just ``name``'s.

        Raises:
            RegionNotFound: no region ``name`` is registered.
        """
        if name is None:
            return [r.status() for r in self._regions.values()]
        region = self._regions.get(name)
        if region is None:
            raise RegionNotFound(f"no shared memory region {name!r} is registered", field="name")
        return [region.status()]

    def get(self, name: str, field: str) -> Region:
        """Region ``name``; `InvalidTensor` naming ``field`` when it is not registered."""
        region = self._regions.get(name)
        if region is None:
            if not self.enabled:
                raise InvalidTensor(_DISABLED, field=field)
            raise InvalidTensor(
                f"{field!r}: no shared memory region {name!r} is registered", field=field
            )
        return region

    def close(self) -> None:
        self.unregister()


def reference(parameters: Mapping[str, Any] | None, tensor: str) -> tuple[str, int, int] | None:
    """The ``(region, offset, byte_size)`` a tensor's parameters point at, or None.

    Raises:
        InvalidTensor: a region without a byte size (or the reverse), or values of the wrong type.
    """
    if not isinstance(parameters, Mapping):
        return None
    region, size = parameters.get(SHM_REGION), parameters.get(SHM_BYTE_SIZE)
    offset = parameters.get(SHM_OFFSET, 0)
    if region is None and size is None:
        return None
    if region is None or size is None:
        raise InvalidTensor(
            f"tensor {tensor!r}: {SHM_REGION} and {SHM_BYTE_SIZE} go together", field=tensor
        )
    if not isinstance(region, str):
        raise InvalidTensor(f"tensor {tensor!r}: {SHM_REGION} must be a string", field=tensor)
    for key, value in ((SHM_BYTE_SIZE, size), (SHM_OFFSET, offset)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidTensor(
                f"tensor {tensor!r}: {key} must be a non-negative integer, got {value!r}",
                field=tensor,
            )
    return region, offset, size


def regions(app: Any) -> SharedMemoryRegions:
    """The app's regions (made on first use, from its settings)."""
    found: SharedMemoryRegions | None = getattr(app.state, "shm", None)
    if found is None:
        found = app.state.shm = SharedMemoryRegions(app.state.settings.allow_client_shm)
    return found


def write_output(name: str, array: Any, window: memoryview) -> int:
    """Copy output ``name`` into its shared-memory ``window``; the bytes written (REST and gRPC).

    Raises:
        InvalidTensor: the window is smaller than the output.
    """
    raw = np.ascontiguousarray(array).data.cast("B")
    if raw.nbytes > window.nbytes:
        raise InvalidTensor(
            f"output {name!r} needs {raw.nbytes} bytes but its shared memory window has "
            f"{window.nbytes}",
            field=name,
        )
    window[: raw.nbytes] = raw
    return raw.nbytes
