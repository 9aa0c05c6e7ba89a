"""Service settings, read from ``LOSSREG_*`` environment variables (pydantic-settings).

Built by `Settings()` inside the app factory and the CLI, never at import time, so tests can
pass their own. List-valued settings take JSON (``'["a*", "b"]'``) or a comma-separated string.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .registry import LossRegistry

CommaList = Annotated[list[str], NoDecode]


CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
"""cgroup v2's CPU quota (``"200000 100000"``: 2 cores' time; ``"max 100000"``: none)."""


def cpu_cores() -> int:
    """The cores this process may use: its affinity mask (a container's cpuset), or fewer
    when a cgroup CPU quota (a Kubernetes CPU limit) allows less time, rounded up."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        quota, period = CPU_MAX.read_text().split()[:2]
        if quota != "max":
            cores = min(cores or 1, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores or 1)


class Settings(BaseSettings):
    """Every knob of the service; the README's settings table mirrors this class."""

    model_config = SettingsConfigDict(
        env_prefix="LOSSREG_",
        env_ignore_empty=True,
        extra="ignore",
        hide_input_in_errors=True,  # a start-up error must not print an API key
    )

    # -- registry -------------------------------------------------------------------------------
    disable_plugin_autoload: bool = Field(
        False, description="Load only lossreg's own losses and those of LOSSREG_PLUGINS."
    )
    plugins: CommaList = Field(
        default_factory=list, description="Distributions to load even with autoload disabled."
    )
    allow: CommaList = Field(
        default_factory=list, description="Only loss names matching these globs are loaded."
    )
    deny: CommaList = Field(
        default_factory=list, description="Loss names matching these globs are skipped."
    )
    strict_plugins: bool = Field(False, description="A plugin that fails to load stops start-up.")

    # -- engine ---------------------------------------------------------------------------------
    device: str = Field(
        "auto",
        description="auto (every CUDA device, else CPU), cpu, cuda:N, or a comma list "
        "(cuda:0,cuda:1): one bounded compute pool per device.",
    )
    compute_dtype: Literal["float32", "float64"] | None = Field(
        None, description="Compute float16/bfloat16 inputs in this dtype (e.g. float32)."
    )

    # -- server ---------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Interface `lossreg serve` binds.")
    port: int = Field(8000, ge=0, le=65535, description="Port `lossreg serve` binds.")
    workers: int = Field(
        0, ge=0, description="uvicorn worker processes; 0: one per CPU core (the affinity mask)."
    )
    grpc_port: int = Field(
        8001,
        ge=0,
        le=65535,
        description="Port of the gRPC service (inference.GRPCInferenceService) beside HTTP, on "
        "the same host; 0 turns gRPC off.",
    )
    api_keys: CommaList = Field(
        default_factory=list, description="If set, compute and catalog routes need one (Bearer)."
    )
    max_request_bytes: int = Field(
        256 * 1024 * 1024, ge=1, description="Request body cap, after decompression."
    )
    compute_threads: int = Field(2, ge=1, description="Concurrent computations per device.")
    max_queue: int = Field(64, ge=1, description="Requests waiting for compute before 503.")
    compute_timeout_s: float = Field(60.0, gt=0, description="A computation past this answers 504.")
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        "info", description="Logging level."
    )
    access_log: bool = Field(
        True,
        description="One structured access-log line per request (lossreg.access); off: none. "
        "uvicorn's own access log is always off under `lossreg serve`.",
    )
    retry_after_s: float = Field(
        1.0, ge=0, description="Retry-After (seconds) sent with 503 when the queue is full."
    )
    compress_min_bytes: int = Field(
        1024,
        ge=0,
        description="Responses at least this big are compressed if Accept-Encoding asks.",
    )
    drain_s: float = Field(
        5.0,
        ge=0,
        description="On SIGTERM, answer not-ready and keep serving this long before shutting "
        "down, so load balancers stop sending first.",
    )
    nonfinite: Literal["reject", "allow"] = Field(
        "reject",
        description="NaN/Inf in inputs or results: reject (422 non_finite) or allow (computed, "
        "and the response lists the non-finite outputs); a request may choose per call.",
    )

    # -- performance ----------------------------------------------------------------------------
    batch_max_size: int = Field(
        64,
        ge=1,
        description="Dynamic batching: up to this many concurrent small inference requests "
        "with the same loss, parameters and shapes run as one computation; 1 turns it off.",
    )
    batch_max_delay_us: int = Field(
        0,
        ge=0,
        description="How long (microseconds) a request may wait for others to join its batch, "
        "like Triton's max_queue_delay_microseconds; 0: batch what is already waiting.",
    )
    batch_max_bytes: int = Field(
        64 * 1024, ge=0, description="Only requests whose body is at most this big are batched."
    )
    inline_max_bytes: int = Field(
        16 * 1024,
        ge=0,
        description="A first-party loss (torch.nn, the zoo) on the CPU whose tensors are at most "
        "this many bytes computes on the event loop, without a worker hand-off, unless batching "
        "waits (batch_max_delay_us > 0); plugin losses always use a worker. 0 turns it off.",
    )
    batch_vmap: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Run a batch as one torch.func.vmap computation: auto = on CUDA, off on CPU "
        "(off: one by one in one worker call, bit-identical to unbatched).",
    )
    allow_client_shm: bool = Field(
        False,
        description="Let clients register system shared-memory regions (/v2/systemsharedmemory, "
        "Triton's --allow-client-shm) and pass tensors in them; for co-located clients.",
    )
    intra_op_threads: int = Field(
        0,
        ge=0,
        description="torch intra-op threads per computation; 0: every CPU core, so a "
        "computation that runs alone uses them all (concurrent big ones then share them).",
    )

    # -- connections: what bounds a request before it costs (README: "Hostile load") ----------
    max_header_bytes: int = Field(
        64 * 1024, ge=1024, description="Request line + headers cap, in bytes; past it 431."
    )
    max_headers: int = Field(100, ge=8, description="Header fields per request; past it 431.")
    client_header_timeout_s: float = Field(
        60.0, gt=0, description="A connection must send a whole request head in this time."
    )
    client_body_timeout_s: float = Field(
        60.0, gt=0, description="Longest pause between two reads of a request body."
    )
    client_body_min_rate: float = Field(
        64 * 1024,
        ge=0,
        description="When the body budget is full, uploads slower than this (bytes/s) give "
        "way to new requests (503); 0: never.",
    )
    keep_alive_timeout_s: float = Field(
        5.0, gt=0, description="An idle keep-alive connection is closed after this."
    )
    max_connections: int = Field(
        0,
        ge=0,
        description="Open connections per worker; past it the one idle longest is closed. "
        "0: the file-descriptor limit less 128.",
    )
    max_body_bytes_in_flight: int = Field(
        0,
        ge=0,
        description="Request-body bytes received or held per worker; past it a new body gets "
        "503 + Retry-After before it is read. 0: a quarter of the machine's memory / workers.",
    )

    @field_validator("plugins", "allow", "deny", "api_keys", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("workers", mode="after")
    @classmethod
    def _resolve_workers(cls, workers: int) -> int:
        """0 (the default) becomes one worker per core, so every reader sees a real count."""
        return workers or cpu_cores()

    @field_validator("api_keys", mode="after")
    @classmethod
    def _clean_keys(cls, keys: list[str]) -> list[str]:
        """Trim each key (in the JSON form as in the comma form); refuse one that could never
        match a ``Bearer`` token, naming it by position, never by value."""
        cleaned = []
        for i, key in enumerate(keys, 1):
            key = key.strip()
            if not key:
                raise ValueError(f"API key {i} of {len(keys)} is empty")
            if not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
                raise ValueError(
                    f"API key {i} of {len(keys)} holds a space, a control or a non-ASCII "
                    "character: no 'Authorization: Bearer' header can carry it"
                )
            cleaned.append(key)
        return cleaned

    @property
    def device_names(self) -> list[str]:
        """``device`` as a list of names (``"cuda:0, cuda:1"`` -> two); ``auto`` stays itself."""
        names = [part.strip().lower() for part in self.device.split(",") if part.strip()]
        return names or ["auto"]

    def build_registry(self) -> LossRegistry:
        """The registry these settings describe (discovery runs now)."""
        return LossRegistry.from_entry_points(
            autoload=not self.disable_plugin_autoload,
            plugins=self.plugins,
            allow=self.allow,
            deny=self.deny,
            strict=self.strict_plugins,
        )
