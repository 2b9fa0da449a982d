"""Running the simulator: inside another event loop, in a background thread, or in
the foreground (the CLI)."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from .config import SimConfig
from .server import SimState, create_app


def _uvicorn_config(config: SimConfig, host: str, port: int, embedded: bool) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(config), host=host, port=port, log_level="warning" if embedded else "info",
        access_log=False, lifespan="off", timeout_graceful_shutdown=1, backlog=4096,
        # Embedded: leave the host process's logging configuration alone.
        log_config=None if embedded else uvicorn.config.LOGGING_CONFIG,
    )


def make_server(config: SimConfig, host: str = "127.0.0.1", port: int = 0) -> uvicorn.Server:
    """A uvicorn server for the simulator, to run as a task in an existing loop
    (`await server.serve()`); with port 0, read the port from
    `server.servers[0].sockets[0].getsockname()[1]` once `server.started`."""
    return uvicorn.Server(_uvicorn_config(config, host, port, embedded=True))


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


class SimHandle:
    """A simulator serving in a daemon thread. Also a context manager."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, sock: socket.socket, host: str):
        self.server = server
        self.thread = thread
        self.sock = sock
        self.host = host
        self.port: int = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}"
        self.base_url = self.url + "/v1"

    @property
    def state(self) -> SimState:
        """The live state (config, stats); read-only use from other threads."""
        return self.server.config.app.state.sim

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> SimHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_in_thread(config: SimConfig, host: str = "127.0.0.1", port: int = 0,
                    timeout: float = 10.0) -> SimHandle:
    """Start the simulator in a daemon thread (its own event loop) and return once it
    accepts connections."""
    sock = _bind(host, port)
    server = make_server(config, host, port)
    errors: list[BaseException] = []

    def main() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # reported to the starting thread
            errors.append(exc)

    thread = threading.Thread(target=main, name=f"simulator-{sock.getsockname()[1]}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if errors or not thread.is_alive():
            sock.close()
            raise RuntimeError(f"simulator failed to start: {errors[0] if errors else 'thread exited'}")
        if time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("simulator did not start in time")
        time.sleep(0.005)
    return SimHandle(server, thread, sock, host)


def run(config: SimConfig, host: str = "127.0.0.1", port: int = 8001) -> None:
    """Serve in the foreground until interrupted (for the CLI)."""
    server = uvicorn.Server(_uvicorn_config(config, host, port, embedded=False))
    print(f"itsproxy simulator on http://{host}:{port}/v1 (seed {config.seed})", flush=True)
    server.run()
