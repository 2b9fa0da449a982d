"""A lean HTTP/1.1 load client: keep-alive sockets on loopback, pre-encoded bodies.

httpx costs ~0.5 ms of CPU per request; on a 2-core machine shared with the proxy
and the simulator that would be the bottleneck, so the driver speaks just enough
HTTP/1.1 itself (content-length and chunked bodies). Every load is bounded in
request count and in time, and only ever connects to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

HOST = "127.0.0.1"  # the only address a load ever targets


class HttpError(Exception):
    pass


@dataclass
class Target:
    port: int
    path: str
    bodies: list[bytes]  # rotated, pre-encoded JSON bodies
    fan: int = 1  # requests issued together per sample (a client-side fan-out baseline)
    headers: dict[str, str] = field(default_factory=dict)

    def head(self, body: bytes) -> bytes:
        extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        return (f"POST {self.path} HTTP/1.1\r\nhost: {HOST}:{self.port}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n{extra}\r\n").encode() + body


def bodies(model: str, count: int = 64, **params) -> list[bytes]:
    """`count` different "What is A + B?" questions (deterministic), as request bodies."""
    out = []
    for i in range(count):
        a, b = 11 + (i * 37) % 89, 3 + (i * 53) % 97
        msg = {"model": model, "messages": [{"role": "user", "content": f"What is {a} + {b}?"}], **params}
        out.append(json.dumps(msg).encode())
    return out


class Conn:
    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        self.writer.write(raw)
        try:
            return await self._response()
        except (asyncio.IncompleteReadError, ConnectionError, HttpError):
            self.close()
            raise

    async def _response(self) -> tuple[int, bytes]:
        assert self.reader is not None
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            if k:
                headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._chunked()
        else:
            raise HttpError(f"response without a length: {lines[0]}")
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, body

    async def _chunked(self) -> bytes:
        assert self.reader is not None
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclass
class LoadResult:
    latencies: list[float]  # seconds, successful requests only
    errors: int
    wall_s: float
    sample_error: str | None = None

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def rps(self) -> float:
        return self.count / self.wall_s if self.wall_s > 0 else 0.0


class Worker:
    """One virtual client: `fan` keep-alive connections, one sample at a time."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.conns = [Conn(target.port) for _ in range(target.fan)]

    async def one(self, i: int) -> float:
        t = self.target
        raws = [t.head(t.bodies[(i + k) % len(t.bodies)]) for k in range(t.fan)]
        started = time.perf_counter()
        if t.fan == 1:
            results = [await self.conns[0].request(raws[0])]
        else:
            results = await asyncio.gather(*(c.request(r) for c, r in zip(self.conns, raws)))
        elapsed = time.perf_counter() - started
        for status, body in results:
            if status != 200 or body.startswith(b'{"error"') or b'data: {"error"' in body:
                raise HttpError(f"HTTP {status}: {body[:200]!r}")
        return elapsed

    def close(self) -> None:
        for c in self.conns:
            c.close()


async def run_load(target: Target, count: int, concurrency: int, max_s: float) -> LoadResult:
    """`count` requests from `concurrency` workers, stopping early after `max_s` seconds."""
    latencies: list[float] = []
    errors = 0
    sample_error: str | None = None
    next_i = 0
    deadline = time.monotonic() + max_s

    async def worker() -> None:
        nonlocal next_i, errors, sample_error
        w = Worker(target)
        try:
            while next_i < count and time.monotonic() < deadline:
                i = next_i
                next_i += 1
                try:
                    latencies.append(await asyncio.wait_for(w.one(i), max(0.1, deadline - time.monotonic())))
                except (TimeoutError, OSError, asyncio.IncompleteReadError, HttpError) as exc:
                    errors += 1
                    sample_error = sample_error or f"{type(exc).__name__}: {exc}"[:300]
                    w.close()
                    w = Worker(target)
        finally:
            w.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadResult(latencies, errors, time.perf_counter() - started, sample_error)


async def paired(a: Target, b: Target, count: int, max_s: float) -> tuple[list[float], list[float], int]:
    """Concurrency 1, alternating a and b request by request (drift on a noisy machine
    hits both alike). Returns both latency lists and the error count."""
    wa, wb = Worker(a), Worker(b)
    la: list[float] = []
    lb: list[float] = []
    errors = 0
    deadline = time.monotonic() + max_s
    try:
        for i in range(count):
            if time.monotonic() > deadline:
                break
            for w, out in ((wa, la), (wb, lb)) if i % 2 == 0 else ((wb, lb), (wa, la)):
                try:
                    out.append(await asyncio.wait_for(w.one(i), 30))
                except (TimeoutError, OSError, asyncio.IncompleteReadError, HttpError):
                    errors += 1
    finally:
        wa.close()
        wb.close()
    return la, lb, errors


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]
