"""Relaying a passthrough route's upstream stream to the client, chunk by chunk."""

from __future__ import annotations

from typing import Any

from itsproxy.proxy.errors import ApiError
from itsproxy.proxy.http.sse import DONE, sse


class ChunkRelay:
    """A passthrough stream (chat or completions chunks), relayed live. The upstream is always
    asked for usage (to meter); the client gets a usage chunk only if it asked, made from the
    ledger, so it is there (flagged estimated in `its`) even when the upstream sent none.
    `its` rides on the last chunk."""

    def __init__(self, include_usage: bool) -> None:
        self.include_usage = include_usage
        self.held: dict[str, Any] | None = None
        self.head: dict[str, Any] = {}

    def feed(self, c: dict[str, Any]) -> list[bytes]:
        if not self.head:
            self.head = {k: c[k] for k in ("id", "object", "created", "model", "system_fingerprint") if k in c}
        c.pop("usage", None)
        if not c.get("choices"):
            return []  # the usage chunk asked for on our own behalf: the ledger has read it
        out = [sse(self.held)] if self.held is not None else []
        self.held = c
        return out

    def end(self, its: dict[str, Any], usage: dict[str, int]) -> list[bytes]:
        out = []
        if self.include_usage:
            if self.held is not None:
                out.append(sse(self.held))
            self.held = {**self.head, "choices": [], "usage": usage}
        if self.held is not None:
            self.held["its"] = its
            out.append(sse(self.held))
        return [*out, DONE]

    def error(self, err: ApiError) -> list[bytes]:
        out = [sse(self.held)] if self.held is not None else []
        self.held = None
        return [*out, sse(err.body())]
