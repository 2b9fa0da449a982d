"""`check: {command: [...]}` — an external program decides.

The payload goes to stdin as JSON; exit code 0 is a pass; stdout is the critique. The program
runs without a shell, in the bubblewrap sandbox of sandbox.py (its threat model is there), under
RLIMIT_CPU / RLIMIT_AS / RLIMIT_NPROC, with a cleared environment. Output is read until the main
process exits (then whatever still holds the pipes is killed with it); more than
`max_output_bytes` on stdout and stderr together is a failed verdict, at once. Anything that goes
wrong — including a sandbox that cannot be created here — is a failed verdict.

`sandbox: false` runs the program as the proxy's user, in its own session (a timeout kills its
process group, though not what escaped it with `setsid`): it can then read the proxy's memory,
environment and files. Only for programs as trusted as the proxy itself.
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

from itsproxy.strategies.checkers.sandbox import SANDBOX_PATH, SandboxSpec, launcher_env, unavailable, wrap
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
DEFAULT_MAX_OUTPUT = 64 * 1024  # stdout + stderr; more is a failed verdict
DEFAULT_MAX_PROCESSES = 64
EXIT_GRACE_S = 0.5  # after the main process exits, how long pipes may take to reach EOF
COMMAND_KEYS = ("sandbox", "network", "max_processes", "max_output_bytes", "files")
_PYTHONS = ("python", "python3")


def _name(argv: list[str]) -> str:
    if argv[0] in _PYTHONS and len(argv) > 2 and argv[1] == "-m":
        return f"command:{argv[2]}"
    if argv[0] in _PYTHONS and len(argv) > 1 and not argv[1].startswith("-"):
        return f"command:{os.path.basename(argv[1])}"
    return f"command:{os.path.basename(argv[0])}"


def _child_pythonpath(sandboxed: bool) -> str:
    """This process's sys.path minus the interpreter's own stdlib entries (and, sandboxed, the
    working directory, which the sandbox does not show)."""
    stdlib = sysconfig.get_path("stdlib")
    keep = []
    for entry in sys.path:
        if sandboxed and entry in ("", ".", os.getcwd()):
            continue
        entry = entry or os.getcwd()
        if entry == stdlib or os.path.dirname(entry) == stdlib:
            continue
        if entry.endswith(".zip") and os.path.dirname(entry) == os.path.dirname(stdlib):
            continue
        if entry not in keep:
            keep.append(entry)
    return os.pathsep.join(keep)


def _limiter(cpu_s: int, mem_bytes: int, nproc: int | None) -> Callable[[], None]:
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
        if nproc is not None:  # root sandbox: counts the processes of the run's own fresh uid
            clamp(resource.RLIMIT_NPROC, nproc)

    return apply


class _Output:
    """Both pipes of one run: the head of stdout, the tail of stderr, and the byte budget."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.used = 0
        self.out = bytearray()
        self.err = bytearray()
        self.flooded = asyncio.Event()

    def _count(self, chunk: bytes) -> None:
        self.used += len(chunk)
        if self.used > self.cap:
            self.flooded.set()

    async def read_out(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self._count(chunk)
            room = CRITIQUE_CAP + 1 - len(self.out)  # one byte more marks a truncation
            if room > 0:
                self.out += chunk[:room]

    async def read_err(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self._count(chunk)
            self.err += chunk
            if len(self.err) > STDERR_CAP:
                del self.err[: len(self.err) - STDERR_CAP]


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


def _program(argv0: str, path: str) -> str:
    """argv[0] as an absolute path, or OSError as exec would raise it."""
    found = os.path.abspath(argv0) if "/" in argv0 else shutil.which(argv0, path=path)
    if found is None or not os.path.isfile(found):
        raise FileNotFoundError(2, "No such file or directory", argv0)
    if not os.access(found, os.X_OK):
        raise PermissionError(13, "Permission denied", argv0)
    return found


async def _exit_code(proc: asyncio.subprocess.Process) -> int:
    """The main process's exit status. Not `proc.wait()`: asyncio's waits for the pipes to close
    too, and a child that escaped with them (unsandboxed) would turn a pass into a timeout."""
    while proc.returncode is None:
        await asyncio.sleep(0.02)
    return proc.returncode


async def _stop(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


DEFAULT_SANDBOX = SandboxSpec()  # frozen: one shared default

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
        sandbox: SandboxSpec | None = DEFAULT_SANDBOX,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT,
    ) -> None:
        self.name = _name(argv)
        self.argv = [sys.executable if argv[0] in _PYTHONS else argv[0], *argv[1:]]
        self.timeout_s = timeout_s
        self.cpu_s = cpu_s or max(1, math.ceil(timeout_s))
        self.memory_mb = memory_mb
        self.extra_env = dict(env or {})
        self.secrets = tuple(self.extra_env.values())  # the proxy redacts them from every critique
        self.sandbox = sandbox  # None: runs as the proxy's user (`sandbox: false`)
        self.max_output_bytes = max_output_bytes
        self._limit = LoopLocal(max_concurrency)

    def _env(self, home: str) -> dict[str, str]:
        sandboxed = self.sandbox is not None
        env = {  # sandboxed, a fixed PATH: the proxy's own PATH would name directories the sandbox lacks
            "PATH": (f"{os.path.dirname(sys.executable)}:{SANDBOX_PATH}" if sandboxed
                     else os.environ.get("PATH", os.defpath)),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOME": home,
            "PYTHONPATH": _child_pythonpath(sandboxed),
        }
        if "LC_ALL" in os.environ:
            env["LC_ALL"] = os.environ["LC_ALL"]
        env.update(self.extra_env)
        return env

    async def check(self, payload: dict[str, Any]) -> Verdict:
        data = json.dumps(payload, ensure_ascii=False, default=str).encode("utf-8")
        async with self._limit.sem():
            if self.sandbox is None:
                home = tempfile.mkdtemp(prefix="itsproxy-check-")
                try:
                    return await self._unsandboxed(data, home)
                finally:
                    shutil.rmtree(home, ignore_errors=True)
            why = await unavailable(self.sandbox)
            if why is not None:
                return failed(self.name, f"checker sandbox unavailable: {why}; the checker was not run "
                                         "(set `sandbox: false` only for trusted programs)")
            return await self._sandboxed(data)

    async def _sandboxed(self, data: bytes) -> Verdict:
        assert self.sandbox is not None
        env = self._env("/tmp")
        argv = list(self.argv)
        try:
            argv[0] = _program(argv[0], env["PATH"])
        except OSError as exc:
            return failed(self.name, f"checker could not be started: {exc}")
        files = [argv[0]]  # the program named, and a python script named, are bound read-only
        if self.argv[0] == sys.executable and len(argv) > 1 and os.path.isfile(argv[1]):
            argv[1] = os.path.abspath(argv[1])
            files.append(argv[1])
        nproc = self.sandbox.max_processes if os.geteuid() == 0 else None
        return await self._run(wrap(argv, env, self.sandbox, files), launcher_env(), data, nproc)

    async def _unsandboxed(self, data: bytes, home: str) -> Verdict:
        return await self._run(self.argv, self._env(home), data, None)

    async def _run(self, argv: list[str], env: dict[str, str], data: bytes, nproc: int | None) -> Verdict:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
                preexec_fn=_limiter(self.cpu_s, self.memory_mb * 1024 * 1024, nproc),
                close_fds=True,
            )
        except Exception as exc:  # FileNotFoundError, PermissionError, preexec failure
            return failed(self.name, f"checker could not be started: {exc}")
        output = _Output(self.max_output_bytes)
        assert proc.stdin and proc.stdout and proc.stderr
        readers = [asyncio.ensure_future(output.read_out(proc.stdout)),
                   asyncio.ensure_future(output.read_err(proc.stderr))]
        helpers = [asyncio.ensure_future(_feed(proc.stdin, data)), asyncio.ensure_future(output.flooded.wait())]
        exited = asyncio.ensure_future(_exit_code(proc))
        try:
            await asyncio.wait([exited, helpers[1]], timeout=self.timeout_s, return_when=asyncio.FIRST_COMPLETED)
            if output.flooded.is_set():
                return failed(self.name, f"checker output exceeded {self.max_output_bytes} bytes; it was stopped")
            if not exited.done():
                return failed(self.name, f"checker timed out after {secs(self.timeout_s)}")
            # The main process is gone; whatever still holds the pipes gets a moment, then is killed.
            await asyncio.wait(readers, timeout=EXIT_GRACE_S)
            return self._verdict(exited.result(), output)
        finally:
            _killpg(proc)  # sandboxed: bwrap and, with it, the whole PID namespace
            await asyncio.wait(readers, timeout=5)  # drained to EOF, so the transport can finish
            await _stop(readers + helpers + [exited])
            try:
                await asyncio.wait_for(proc.wait(), 5)  # reaped, pipes closed
            except TimeoutError:
                pass

    def _verdict(self, code: int, output: _Output) -> Verdict:
        text = bytes(output.out[:CRITIQUE_CAP]).decode("utf-8", errors="replace").strip()
        if len(output.out) > CRITIQUE_CAP:
            text += " …[truncated]"
        if self.sandbox is not None and code > 128 and code - 128 < signal.NSIG:
            code = -(code - 128)  # bwrap reports a child killed by signal N as 128 + N
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
        detail = text or bytes(output.err).decode("utf-8", errors="replace").strip()
        return failed(self.name, f"{why}: {detail}" if detail else why)


def _files(spec: dict[str, Any], path: str) -> tuple[str, ...]:
    files: Any = spec.get("files") or []
    if not isinstance(files, list):
        raise SpecError(f"{path}.files", "must be a list of absolute paths the checker may read")
    for i, f in enumerate(files):
        if not isinstance(f, str) or not os.path.isabs(f):
            raise SpecError(f"{path}.files[{i}]", f"must be an absolute path, got {f!r}")
        if not os.path.exists(f):
            raise SpecError(f"{path}.files[{i}]", f"{f!r} does not exist")
    return tuple(os.path.normpath(f) for f in files)


def _flag(spec: dict[str, Any], key: str, path: str, default: bool) -> bool:
    value = spec.get(key, default)
    if not isinstance(value, bool):
        raise SpecError(f"{path}.{key}", f"must be true or false, got {value!r}")
    return value


def _sandbox(spec: dict[str, Any], path: str, memory_mb: int) -> SandboxSpec | None:
    network = _flag(spec, "network", path, False)
    max_processes = positive_int(spec, "max_processes", path, DEFAULT_MAX_PROCESSES)
    files = _files(spec, path)
    if _flag(spec, "sandbox", path, True):
        return SandboxSpec(network=network, max_processes=max_processes, tmp_mb=memory_mb, files=files)
    for key in ("network", "max_processes", "files"):
        if key in spec:
            raise SpecError(f"{path}.{key}", "applies only to a sandboxed checker (`sandbox: false` is set)")
    return None


def _executable(program: str, path: str) -> str:
    """argv[0] resolved at load (on PATH, or a path to an executable file): a checker that
    cannot start would fail every candidate closed, and the route would never verify."""
    if program in _PYTHONS:
        return program  # this interpreter (CommandChecker maps it to sys.executable)
    found = shutil.which(program)
    if found is None:
        where = "is not an executable file" if os.sep in program else "is not found on PATH"
        raise SpecError(path, f"{program!r} {where}")
    return found


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
    max_concurrency = positive_int(spec, "max_concurrency", path, DEFAULT_CONCURRENCY)
    return CommandChecker(
        [_executable(argv[0], f"{path}.command[0]"), *argv[1:]],
        timeout_s=timeout_s,
        cpu_s=cpu_s,
        memory_mb=memory_mb,
        max_concurrency=max_concurrency,
        env=env,
        sandbox=_sandbox(spec, path, memory_mb),
        max_output_bytes=positive_int(spec, "max_output_bytes", path, DEFAULT_MAX_OUTPUT),
    )
