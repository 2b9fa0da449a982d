"""`itsproxy serve | check-config | simulate | traces | eval`."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import sys
import tempfile

from itsproxy.proxy.config import Config, ConfigError, load_config
from itsproxy.proxy.config.simulator import SimulatorSettings
from itsproxy.proxy.metering.budgets import StateError, verify_budget_file
from itsproxy.proxy.telemetry import access_log

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
# Event-loop watchdog: asyncio debug mode, logging every callback that holds the loop
# longer than this many milliseconds (and counting them; the count is printed at exit).
LOOP_DEBUG_ENV = "ITSPROXY_LOOP_DEBUG_MS"


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _load(path: str | None) -> Config:
    try:
        config = load_config(path)
        if config.server.state.backend == "sqlite":
            verify_budget_file(config.budgets, config.server.state_dir)
        return config
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except StateError as exc:
        print(f"state error: budget store {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def summary(config: Config) -> str:
    deployments = sum(len(m.deployments) for m in config.models.values())
    keys = len(config.server.api_keys)
    auth = f"auth on ({keys} key{'s' if keys != 1 else ''})" if keys else "auth OFF (no server.api_keys)"
    lines = [f"config {config.source}: {len(config.models)} models ({deployments} deployments), "
             f"{len(config.routes)} routes, {auth}"]
    for r in config.routes:
        if r.passthrough:
            what = f"passthrough -> {r.target}"
        else:
            p = r.pipeline
            assert p is not None  # a scaling route has one
            pool = ", ".join(f"{m.model}x{m.n}" for m in p.generate.pool)
            what = f"{p.strategy} over {pool} (max_n {r.limits.max_n}, timeout {r.limits.timeout_s:g}s)"
            if p.repair:
                what += f", repair {p.repair.rounds} rounds"
        lines.append(f"  {r.name:<20} match {r.match!r:<16} {what}")
    return "\n".join(lines)


def cmd_check_config(args) -> int:
    """Exit 0 when every file is valid, else 2; with several files each error line starts with its file."""
    if len(args.paths) == 1:
        print(summary(_load(args.paths[0])))
        return 0
    status = 0
    for path in args.paths:
        try:
            config = load_config(path)
            if config.server.state.backend == "sqlite":
                verify_budget_file(config.budgets, config.server.state_dir)
            print(summary(config))
        except ConfigError as exc:
            print(f"{path}: config error: {exc}", file=sys.stderr)
            status = 2
        except StateError as exc:
            print(f"{path}: state error: budget store {exc}", file=sys.stderr)
            status = 2
    return status


def _start_simulator(settings: SimulatorSettings):
    from itsproxy.proxy.simulator import serve_in_thread

    handle = serve_in_thread(settings.sim, host=settings.host, port=settings.port)
    print(f"simulated upstream on {handle.url}", file=sys.stderr)
    return handle


class SlowCallbacks(logging.StreamHandler):
    """Writes asyncio's warnings to stderr and counts the slow-callback ones."""

    count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, str) and record.msg.startswith("Executing") and "took" in record.msg:
            SlowCallbacks.count += 1
        super().emit(record)


def loop_debug_ms() -> float | None:
    raw = os.environ.get(LOOP_DEBUG_ENV, "").strip()
    return float(raw) if raw else None


def debug_loop() -> asyncio.AbstractEventLoop:
    """uvicorn loop factory (`loop="itsproxy.proxy.cli:debug_loop"`): uvloop (or asyncio) in debug mode.
    Debug stays on: uvicorn's runner calls set_debug(False) on the loop it is given."""
    base: type[asyncio.AbstractEventLoop]
    try:
        import uvloop

        base = uvloop.Loop
    except ImportError:
        base = asyncio.SelectorEventLoop
    pinned: type[asyncio.AbstractEventLoop] = type(
        "DebugLoop", (base,), {"set_debug": lambda self, enabled: base.set_debug(self, True)})
    loop = pinned()
    loop.set_debug(True)
    loop.slow_callback_duration = (loop_debug_ms() or 100.0) / 1000.0
    return loop


def _watch_loop() -> str:
    """The uvicorn `loop` setting; with ITSPROXY_LOOP_DEBUG_MS set, the debug loop and its counter."""
    if loop_debug_ms() is None:
        return "auto"
    logging.getLogger("asyncio").addHandler(SlowCallbacks(sys.stderr))
    return "itsproxy.proxy.cli:debug_loop"


def _freeze_heap() -> None:
    """Move everything built at startup (modules, config, tokenizer) out of the garbage
    collector's reach: a full collection then scans only what requests create, instead of
    pausing the loop ~20 ms over the whole heap now and then (a p99 spike)."""
    import gc

    gc.collect()
    gc.freeze()


def cmd_serve(args) -> int:
    config = _load(args.config)
    if not is_loopback(args.host) and not config.server.api_keys and not config.server.allow_unauthenticated:
        print(f"refusing to serve on {args.host} with no server.api_keys configured "
              "(set server.allow_unauthenticated: true to override)", file=sys.stderr)
        return 2
    import uvicorn

    access_log.configure(args.log_level)
    os.environ[access_log.LEVEL_ENV] = args.log_level  # workers (spawned) configure theirs from it
    sim = _start_simulator(config.simulator) if config.simulator is not None else None
    print(summary(config), file=sys.stderr)
    print(f"itsproxy serving on http://{args.host}:{args.port}  (dashboard: /dashboard, metrics: /metrics)",
          file=sys.stderr)
    # uvicorn's "auto" picks uvloop and httptools when they are installed (uvicorn[standard]).
    # proxy_headers off: nothing here reads the client's address, and the middleware costs every request.
    opts = dict(host=args.host, port=args.port, log_level=args.log_level, access_log=False, proxy_headers=False,
                loop=_watch_loop())
    try:
        if args.workers > 1:
            # Several processes share one metrics directory so /metrics adds them up.
            os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="itsproxy-metrics-"))
            if args.config:
                os.environ["ITSPROXY_CONFIG"] = os.path.abspath(args.config)
            uvicorn.run("itsproxy.proxy.http.app:app_from_env", factory=True, workers=args.workers, **opts)
        else:
            from itsproxy.proxy.http.app import create_app

            app = create_app(config)
            _freeze_heap()
            uvicorn.run(app, **opts)
    finally:
        if sim is not None:
            sim.stop()
        if loop_debug_ms() is not None:
            print(f"itsproxy loop debug: {SlowCallbacks.count} callbacks took longer than {loop_debug_ms():g} ms",
                  file=sys.stderr)
    return 0


def cmd_simulate(args) -> int:
    from itsproxy.proxy.simulator import config_from_args, run

    run(config_from_args(args), args.host, args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="itsproxy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the proxy (default config: the offline demo)")
    serve.add_argument("--config", default=None, help="config.yaml (default: the packaged offline demo)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=4100)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--log-level", default="warning")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate config files and summarise their routes")
    check.add_argument("paths", nargs="+", metavar="path")
    check.set_defaults(func=cmd_check_config)

    from itsproxy.proxy.simulator import add_cli_arguments

    sim = sub.add_parser("simulate", help="serve the simulated upstream (a noisy arithmetic model)")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=4101)
    add_cli_arguments(sim)
    sim.set_defaults(func=cmd_simulate)

    from itsproxy.proxy.telemetry.traces_export import register as register_traces

    register_traces(sub)
    from itsproxy.proxy.eval.cli import register as register_eval

    register_eval(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    raise SystemExit(main())
