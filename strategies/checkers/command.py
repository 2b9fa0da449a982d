"""`check: {command: [...]}` — an external program decides.

The payload goes to stdin as JSON; exit code 0 is a pass; stdout is the
critique. The program runs without a shell, in its own session (so a timeout
kills the whole process group), under RLIMIT_CPU / RLIMIT_AS, with a scrubbed
environment. Anything that goes wrong is a failed verdict.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import resource
import shutil
import signal
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from typing import Any

from itsproxy.strategies.types import SpecError, Verdict

from ._common import (
    CRITIQUE_CAP,
    DEFAULT_CONCURRENCY,
    DEFAULT_TIMEOUT_S,
    LoopLocal,
    env_value,
    failed,
    positive_int,
    positive_number,
    secs,
    verdict,
)

STDERR_CAP = 4 * 1024  # the tail of stderr is kept (tracebacks end there)
DEFAULT_MEMORY_MB = 1024
_PYTHONS = ("python", "python3")


def _name(argv: list[str]) -> str:
    if argv[0] in _PYTHONS and len(argv) > 2 and argv[1] == "-m":
        return f"command:{argv[2]}"
    if argv[0] in _PYTHONS and len(argv) > 1 and not argv[1].startswith("-"):
        return f"command:{os.path.basename(argv[1])}"
    return f"command:{os.path.basename(argv[0])}"


def _child_pythonpath() -> str:
    """This process's sys.path minus the interpreter's own stdlib entries."""
    stdlib = sysconfig.get_path("stdlib")
    keep = []
    for entry in sys.path:
        entry = entry or os.getcwd()
        if entry == stdlib or os.path.dirname(entry) == stdlib:
            continue
        if entry.endswith(".zip") and os.path.dirname(entry) == os.path.dirname(stdlib):
            continue
        if entry not in keep:
            keep.append(entry)
    return os.pathsep.join(keep)


def _limiter(cpu_s: int, mem_bytes: int) -> Callable[[], None]:
    def clamp(kind: int, want: int) -> None:
        _, hard = resource.getrlimit(kind)
        if hard != resource.RLIM_INFINITY:
            want = min(want, hard)
        # soft limit: SIGXCPU / allocation failure; hard CPU limit one second later: SIGKILL
        new_hard = want + 1 if kind == resource.RLIMIT_CPU else want
        if hard != resource.RLIM_INFINITY:
            new_hard = min(new_hard, hard)
        resource.setrlimit(kind, (want, new_hard))

    def apply() -> None:  # runs in the child between fork and exec
        clamp(resource.RLIMIT_CPU, cpu_s)
        clamp(resource.RLIMIT_AS, mem_bytes)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


async def _read_head(stream: asyncio.StreamReader, cap: int) -> tuple[bytes, bool]:
    """Drain the stream to EOF, keeping the first `cap` bytes."""
    buf, over = bytearray(), False
    while chunk := await stream.read(65536):
        room = cap - len(buf)
        if room > 0:
            buf += chunk[:room]
        over = over or len(chunk) > room
    return bytes(buf), over


async def _read_tail(stream: asyncio.StreamReader, cap: int) -> bytes:
    buf = bytearray()
    while chunk := await stream.read(65536):
        buf += chunk
        if len(buf) > cap:
            del buf[: len(buf) - cap]
    return bytes(buf)


async def _feed(stream: asyncio.StreamWriter, data: bytes) -> None:
    try:
        stream.write(data)
        await stream.drain()
        stream.close()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the checker did not read its input; its exit code still decides


def _killpg(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: pgid == pid
    except (ProcessLookupError, PermissionError):
        pass


class CommandChecker:
    def __init__(
        self,
        argv: list[str],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        cpu_s: int | None = None,
        memory_mb: int = DEFAULT_MEMORY_MB,
        max_concurrency: int = DEFAULT_CONCURRENCY,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = _name(argv)
        self.argv = [sys.executable if argv[0] in _PYTHONS else argv[0], *argv[1:]]
        self.timeout_s = timeout_s
        self.cpu_s = cpu_s or max(1, math.ceil(timeout_s))
        self.memory_mb = memory_mb
        self.extra_env = dict(env or {})
        self._limit = LoopLocal(max_concurrency)

    def _env(self, home: str) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOME": home,
            "PYTHONPATH": _child_pythonpath(),
        }
        if "LC_ALL" in os.environ:
            env["LC_ALL"] = os.environ["LC_ALL"]
        env.update(self.extra_env)
        return env

    async def check(self, payload: dict[str, Any]) -> Verdict:
        data = json.dumps(payload, ensure_ascii=False, default=str).encode("utf-8")
        async with self._limit.sem():
            return await self._run(data)

    async def _run(self, data: bytes) -> Verdict:
        home = tempfile.mkdtemp(prefix="itsproxy-check-")
        proc = None
        try:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *self.argv,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env=self._env(home),
                    start_new_session=True,
                    preexec_fn=_limiter(self.cpu_s, self.memory_mb * 1024 * 1024),
                    close_fds=True,
                )
            except Exception as exc:  # FileNotFoundError, PermissionError, preexec failure
                return failed(self.name, f"checker could not be started: {exc}")
            assert proc.stdout is not None and proc.stderr is not None and proc.stdin is not None  # all PIPEs
            try:
                async with asyncio.timeout(self.timeout_s):
                    (out, over), err, _ = await asyncio.gather(
                        _read_head(proc.stdout, CRITIQUE_CAP),
                        _read_tail(proc.stderr, STDERR_CAP),
                        _feed(proc.stdin, data),
                    )
                    code = await proc.wait()
            except TimeoutError:
                return failed(self.name, f"checker timed out after {secs(self.timeout_s)}")
            return self._verdict(code, out, over, err)
        finally:
            if proc is not None:
                _killpg(proc)  # also reaps stragglers left behind by a finished checker
                if proc.returncode is None:
                    try:
                        await asyncio.wait_for(proc.wait(), 5)
                    except Exception:
                        pass
            shutil.rmtree(home, ignore_errors=True)

    def _verdict(self, code: int, out: bytes, over: bool, err: bytes) -> Verdict:
        text = out.decode("utf-8", errors="replace").strip()
        if over:
            text += " …[truncated]"
        if code == 0:
            return verdict(self.name, True, text)
        if code < 0:
            try:
                sig = signal.Signals(-code).name
            except ValueError:
                sig = str(-code)
            why = f"checker killed by signal {sig}"
            if sig == "SIGXCPU":
                why += f" (CPU limit of {self.cpu_s}s exceeded)"
        elif code == 1 and text:
            return failed(self.name, text)  # the conventional "no" with a critique
        else:
            why = f"checker failed with exit code {code}"
        detail = text or err.decode("utf-8", errors="replace").strip()
        return failed(self.name, f"{why}: {detail}" if detail else why)


def from_spec(spec: dict[str, Any], path: str) -> CommandChecker:
    argv = spec["command"]
    if not isinstance(argv, list) or not argv:
        raise SpecError(f"{path}.command", "must be a non-empty list of strings (argv, no shell)")
    for i, arg in enumerate(argv):
        if not isinstance(arg, str) or (i == 0 and not arg):
            raise SpecError(f"{path}.command[{i}]", f"must be a non-empty string, got {arg!r}")
    timeout_s = positive_number(spec, "timeout_s", path, DEFAULT_TIMEOUT_S)
    cpu_s = positive_int(spec, "cpu_s", path, max(1, math.ceil(timeout_s)))
    memory_mb = positive_int(spec, "memory_mb", path, DEFAULT_MEMORY_MB)
    env_spec: Any = spec.get("env") or {}
    if not isinstance(env_spec, dict):
        raise SpecError(f"{path}.env", "must be a mapping of variable names to values")
    env = {}
    for key, value in env_spec.items():
        if not isinstance(key, str) or not key or "=" in key:
            raise SpecError(f"{path}.env", f"invalid variable name {key!r}")
        env[key] = env_value(value, f"{path}.env.{key}")
    return CommandChecker(
        argv,
        timeout_s=timeout_s,
        cpu_s=cpu_s,
        memory_mb=memory_mb,
        max_concurrency=positive_int(spec, "max_concurrency", path, DEFAULT_CONCURRENCY),
        env=env,
    )
