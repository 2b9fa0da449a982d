"""The `traces:` section: where decision traces go (the writer is telemetry/traces.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from itsproxy.proxy.config_fields import boolean, integer, mapping, number, string

KEYS = {"path", "max_bytes", "keep_files", "retention_days", "include_passthrough", "queue_size"}


@dataclass(frozen=True)
class TraceSettings:
    path: str
    max_bytes: int = 100 * 1024 * 1024
    keep_files: int = 10
    retention_days: float = 30.0
    include_passthrough: bool = False
    queue_size: int = 10_000


def parse_traces(raw: Any, path: str = "traces") -> TraceSettings | None:
    """The `traces:` section; None when tracing is off (no section, or no `path`)."""
    if raw is None:
        return None
    raw = mapping(raw, path, KEYS)
    d = TraceSettings(path="")
    settings = TraceSettings(
        path=string(raw.get("path"), f"{path}.path", required=False) or "",
        max_bytes=integer(raw.get("max_bytes"), f"{path}.max_bytes", default=d.max_bytes, minimum=1024),
        keep_files=integer(raw.get("keep_files"), f"{path}.keep_files", default=d.keep_files, minimum=1),
        retention_days=number(raw.get("retention_days"), f"{path}.retention_days", default=d.retention_days,
                              exclusive_min=True),
        include_passthrough=boolean(raw.get("include_passthrough"), f"{path}.include_passthrough"),
        queue_size=integer(raw.get("queue_size"), f"{path}.queue_size", default=d.queue_size, minimum=1),
    )
    return settings if settings.path else None
