"""Where a `command` checker runs: a bubblewrap sandbox that cannot reach the proxy.

Threat model. A command checker may run text the model wrote (the LLM-Modulo "run the
candidate's code" checker), so we treat it as hostile. The sandbox defends against:
- reading the proxy's secrets: new PID namespace (its /proc shows only the sandbox), the bwrap
  process itself started with an empty environment, a cleared environment inside (only the
  route's `env` plus PATH, LANG, HOME=/tmp, PYTHONPATH), an unprivileged uid with no capabilities;
- reading the proxy's files: a fresh root holding read-only binds of /usr, the /lib and /bin
  links, a few files of /etc (no shadow, passwd, or anything else), the Python installation,
  itsproxy's own package directories and the checker's `files`; a private tmpfs /tmp (size
  capped at `memory_mb`); no working directory, state directory or config file of the proxy;
- talking to the proxy or anything else: a new network namespace (loopback only, and not the
  host's) unless the route says `network: true`;
- outliving its verdict or exhausting the host: --die-with-parent and a PID namespace (when the
  checker's main process ends or is killed, every process in it dies, `setsid` or not),
  RLIMIT_NPROC (`max_processes`), RLIMIT_CPU, RLIMIT_AS, capped output (see command.py);
- signalling other checkers: each run has its own PID namespace (and, as root, its own uid).

It does not defend against: kernel exploits (namespaces share the host kernel; use a VM or gVisor
for that), side channels (timing, CPU cache), what the route deliberately passes in (`env`
values and `files` are readable by the checker, and with `network: true` it can reach anything the
proxy can, including the proxy's own port), or a checker lying in its verdict.

Two ways in, by who runs the proxy:
- as root (containers, CI): bwrap creates the namespaces with real privileges (no user namespace)
  and `setpriv` drops to a fresh uid per run (no capabilities, no_new_privs); RLIMIT_NPROC then
  counts exactly that run's processes.
- as another user: bwrap's user namespace (`--unshare-user --uid 65534`), and `prlimit` sets
  RLIMIT_NPROC inside it (counted per user namespace by the kernel).
Where namespaces cannot be created (e.g. a container whose seccomp profile forbids them), the
probe fails and every verdict of the checker is a failure saying so, unless the route sets
`sandbox: false` — then the checker runs as the proxy's user and can read everything the proxy
can, including its API keys (only for checkers whose code is trusted, like `python:` ones).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import secrets
import shutil
import sys
from dataclasses import dataclass

ETC = ("alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "ssl", "ca-certificates",
       "nsswitch.conf", "os-release", "mime.types", "protocols", "services")
NET_ETC = ("resolv.conf", "hosts", "host.conf", "gai.conf")
ROOT_ENTRIES = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
PACKAGES = ("itsproxy.proxy", "itsproxy.strategies")  # so `python -m itsproxy.proxy.demo_checks` runs
NOBODY = 65534
RUN_UID_BASE = 2_000_000_000  # as root: a fresh uid per run in [base, base + span)
RUN_UID_SPAN = 100_000_000
PROBE_TIMEOUT_S = 10.0
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class SandboxSpec:
    network: bool = False
    max_processes: int = 64
    tmp_mb: int = 1024
    files: tuple[str, ...] = ()  # extra read-only paths (absolute), bound at the same place


def as_root() -> bool:
    return os.geteuid() == 0


def python_roots() -> list[str]:
    """The interpreter, its venv, and itsproxy's own package directories (editable installs)."""
    roots = [sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(sys.executable))]
    for name in PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is not None and spec.submodule_search_locations:
            roots += list(spec.submodule_search_locations)
    return [os.path.realpath(r) for r in roots if os.path.isdir(r)]


def _covered(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


class Binds:
    """bwrap filesystem arguments: read-only binds at their own paths, parents created 0755."""

    def __init__(self) -> None:
        self.args: list[str] = []
        self.bound: list[str] = ["/usr"]
        self.dirs: set[str] = {"/", "/usr", "/etc", "/tmp", "/proc", "/dev"}

    def _parents(self, path: str) -> None:
        parent = os.path.dirname(path)
        if parent in self.dirs or _covered(parent, self.bound):
            return
        self._parents(parent)
        self.dirs.add(parent)
        self.args += ["--perms", "0755", "--dir", parent]

    def bind(self, path: str, *, try_: bool = False) -> None:
        path = os.path.abspath(path)
        if _covered(path, self.bound):
            return
        self._parents(path)
        self.args += ["--ro-bind-try" if try_ else "--ro-bind", path, path]
        self.bound.append(path)


def filesystem(spec: SandboxSpec, extra: list[str]) -> list[str]:
    b = Binds()
    b.args += ["--ro-bind", "/usr", "/usr"]
    for name in ROOT_ENTRIES:
        path = f"/{name}"
        if os.path.islink(path):
            b.args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            b.bind(path)
    b.args += ["--perms", "0755", "--dir", "/etc"]
    for name in ETC + (NET_ETC if spec.network else ()):
        b.args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    # mounts first: a bound file under /tmp must land on top of the private tmpfs, not under it
    b.args += ["--proc", "/proc", "--dev", "/dev",
               "--perms", "1777", "--size", str(spec.tmp_mb * 1024 * 1024), "--tmpfs", "/tmp"]
    for path in sorted(set(python_roots() + list(spec.files) + extra), key=len):
        b.bind(path, try_=True)
    return b.args


def namespaces(spec: SandboxSpec) -> list[str]:
    args = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--hostname", "checker"]
    if not spec.network:
        args.append("--unshare-net")
    if as_root():  # real privileges create the namespaces; setpriv drops them before the checker runs
        return args + ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    return args + ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY), "--disable-userns"]


def drop(spec: SandboxSpec) -> list[str]:
    """The prefix that turns the sandbox's first process into an unprivileged, limited one."""
    if as_root():
        uid = str(RUN_UID_BASE + secrets.randbelow(RUN_UID_SPAN))
        return [shutil.which("setpriv") or "setpriv", "--reuid", uid, "--regid", uid, "--clear-groups",
                "--no-new-privs", "--inh-caps=-all", "--"]
    # in a user namespace the kernel counts processes per namespace: the limit is set inside it
    return [shutil.which("prlimit") or "prlimit", f"--nproc={spec.max_processes}", "--"]


def wrap(argv: list[str], env: dict[str, str], spec: SandboxSpec, extra: list[str]) -> list[str]:
    """The bwrap command line that runs `argv` with exactly `env`, in the sandbox."""
    bwrap = shutil.which("bwrap") or "bwrap"
    setenv = [a for key, value in env.items() for a in ("--setenv", key, value)]
    return [bwrap, *namespaces(spec), *filesystem(spec, extra), "--chdir", "/tmp", "--die-with-parent",
            "--new-session", "--clearenv", *setenv, "--", *drop(spec), *argv]


def launcher_env() -> dict[str, str]:
    """bwrap's own environment: nothing (its PID 1 would show it in /proc/1/environ)."""
    return {"PATH": SANDBOX_PATH}


_probed: dict[tuple[str | None, bool], str | None] = {}  # (bwrap, network) -> None (works) or why not


async def unavailable(spec: SandboxSpec) -> str | None:
    """Why the sandbox cannot run here (probed once per bwrap binary), or None when it can."""
    key = (shutil.which("bwrap"), spec.network)
    if key not in _probed:
        _probed[key] = await _probe(spec)
    return _probed[key]


async def _probe(spec: SandboxSpec) -> str | None:
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed"
    tool = "setpriv" if as_root() else "prlimit"
    if shutil.which(tool) is None:
        return f"{tool} (util-linux) is not installed"
    argv = wrap(["true"], {"PATH": SANDBOX_PATH}, SandboxSpec(network=spec.network), [])
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE, env=launcher_env())
    except OSError as exc:
        return f"bwrap could not be run: {exc}"
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            _, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return f"bwrap did not start within {PROBE_TIMEOUT_S:g}s"
    if proc.returncode != 0:
        detail = err.decode("utf-8", errors="replace").strip()[-300:]
        return f"bwrap cannot create its namespaces here (exit {proc.returncode}: {detail})"
    return None
