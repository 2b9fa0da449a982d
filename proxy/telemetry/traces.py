"""Decision traces: one JSON line per finished request, for audit and fine-tuning export.

The request path only builds a record and enqueues it (never waits, never touches
disk); one background thread per process redacts, serialises and appends. Several
worker processes may share a path, so every append, size check and rotation happens
under an exclusive `flock` on a sidecar `<path>.lock` (the trace file itself is
renamed by rotation, so a lock on it would not be shared by everyone).
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from itsproxy.proxy.config.traces import TraceSettings, parse_traces  # noqa: F401  (re-exported)
from itsproxy.proxy.metering.ledger import Ledger, RequestReport
from itsproxy.proxy.redact import REDACTED, Redactor, is_credential_key  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from itsproxy.proxy.config import Config
    from itsproxy.proxy.outcome import Outcome

log = logging.getLogger("itsproxy.traces")



# ---------------------------------------------------------------- records


def build_record(report: RequestReport, outcome: Outcome | None) -> dict[str, Any]:
    """What is known about a finished request; the full decision when it produced an outcome."""
    rec: dict[str, Any] = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
                           "id": None, "route": report.route, "model": None, "status": report.status,
                           "passthrough": report.passthrough, "duration_s": round(report.duration_s, 4),
                           "verified": report.verified}
    if outcome is None:
        rec["candidates_drawn"] = report.candidates
        rec["usage"] = Ledger(calls=list(report.calls)).usage_breakdown(report.selected)
        return rec
    its, sel = outcome.its(), outcome.selection
    request: dict[str, Any] = {"messages": outcome.messages}
    params = getattr(outcome, "params", None)  # present once Outcome carries the allow-listed params
    if params:
        request["params"] = params
    rec.update(id=outcome.id, model=outcome.model, strategy=sel.strategy, request=request,
               candidates=[{**ev, "message": c.message} for ev, c in zip(its["evidence"], sel.candidates)],
               selected=its["selected"], verified=sel.verified, votes=sel.votes, tie=sel.tie,
               reasons=sel.reasons, rounds=[r.as_dict() for r in sel.rounds], usage=its["usage"])
    return rec


def redact(value: Any, secrets: list[str]) -> Any:
    """A copy with secrets replaced and credential-looking keys dropped (the one redactor's `value`)."""
    return Redactor(secrets).value(value)


def dumps(record: dict[str, Any]) -> bytes:
    # json escapes newlines inside strings, so a record is always exactly one line.
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str) + "\n").encode()


# ---------------------------------------------------------------- the file


def rotated(path: str) -> list[tuple[int, str]]:
    """Existing `<path>.N` files, (N, name), newest (N=1) first."""
    folder, base = os.path.split(os.path.abspath(path))
    out = []
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    for name in names:
        if name.startswith(base + ".") and name[len(base) + 1:].isdigit():
            out.append((int(name[len(base) + 1:]), os.path.join(folder, name)))
    return sorted(out)


class TraceFile:
    """Process-safe appends with size rotation and age retention."""

    def __init__(self, settings: TraceSettings) -> None:
        self.s = settings
        self.path = settings.path
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)

    @contextmanager
    def locked(self) -> Iterator[None]:
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def append(self, lines: list[bytes]) -> None:
        with self.locked():
            fd = self._open()
            try:
                for line in lines:
                    size = os.fstat(fd).st_size
                    if size and size + len(line) > self.s.max_bytes:
                        os.close(fd)
                        fd = -1
                        self._rotate()
                        fd = self._open()
                    _write_all(fd, line)
            finally:
                if fd >= 0:
                    os.close(fd)

    def _open(self) -> int:
        # Reopened per batch and after rotation: another process may have rotated meanwhile.
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def prune(self) -> None:
        """Remove rotated files past keep_files or older than retention_days."""
        cutoff = time.time() - self.s.retention_days * 86400
        for n, name in rotated(self.path):
            try:
                if n > self.s.keep_files or os.stat(name).st_mtime < cutoff:
                    os.remove(name)
            except FileNotFoundError:
                pass

    def prune_locked(self) -> None:
        with self.locked():
            self.prune()

    def _rotate(self) -> None:
        # Caller holds the lock. Shift .N -> .N+1 from the oldest down, then current -> .1.
        for n, name in reversed(rotated(self.path)):
            if n >= self.s.keep_files:
                os.remove(name)
            else:
                os.replace(name, f"{self.path}.{n + 1}")
        os.replace(self.path, f"{self.path}.1")
        self.prune()


def _write_all(fd: int, data: bytes) -> None:
    # One write() per line; regular files only return short on disk-full, when we finish the line
    # (still under the lock, so nothing else can land in the middle).
    while data:
        data = data[os.write(fd, data):]


# ---------------------------------------------------------------- the writer


class TraceWriter:
    """A bounded queue drained by one daemon thread into a TraceFile."""

    def __init__(self, settings: TraceSettings, redactor: Redactor | None = None) -> None:
        self.file = TraceFile(settings)
        self.redactor = redactor or Redactor()
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue(settings.queue_size)
        self.dropped = 0
        self.written = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="itsproxy-traces", daemon=True)
        self._thread.start()

    def submit(self, record: dict[str, Any]) -> bool:
        """Enqueue without waiting; a full queue drops the record (counted)."""
        try:
            self.queue.put_nowait(record)
            return True
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("trace queue full: %d records dropped so far", self.dropped)
            return False

    def _run(self) -> None:
        self._guard(self.file.prune_locked)  # retention at startup
        while not (self._stop.is_set() and self.queue.empty()):
            try:
                batch = [self.queue.get(timeout=0.2)]
            except queue.Empty:
                continue
            while len(batch) < 256:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            self._guard(functools.partial(self._write, batch))
            for _ in batch:
                self.queue.task_done()

    def _write(self, batch: list[dict[str, Any]]) -> None:
        lines = [dumps(self.redactor.value(r)) for r in batch]
        self.file.append(lines)
        self.written += len(lines)

    def _guard(self, fn) -> None:
        try:
            fn()
        except Exception:  # a broken disk must never take the proxy down; it is logged and counted
            self.errors += 1
            log.exception("trace writer failed on %s", self.file.path)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is on disk (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self.queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self.queue.unfinished_tasks

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        if self.dropped:
            log.warning("trace writer closed: %d written, %d dropped", self.written, self.dropped)


class TraceHook:
    """`Services.hooks` entry: builds the record on the loop (cheap), hands it to the writer."""

    def __init__(self, settings: TraceSettings, redactor: Redactor) -> None:
        self.settings = settings
        self.writer = TraceWriter(settings, redactor)

    def __call__(self, report: RequestReport, outcome: Outcome | None = None) -> None:
        if report.passthrough and not self.settings.include_passthrough:
            return
        try:
            self.writer.submit(build_record(report, outcome))
        except Exception:  # tracing is an observer: it must never fail a request
            log.exception("trace record failed for route %r", report.route)

    def flush(self, timeout: float = 10.0) -> bool:
        return self.writer.flush(timeout)

    def close(self) -> None:
        self.writer.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.writer.close)  # joining the thread must not block the loop


def build_trace_hook(config: Config) -> TraceHook | None:
    if config.traces is None:
        return None
    return TraceHook(config.traces, config.redactor)
