"""Running the simulator: inside another event loop, in a background thread, or in
the foreground (the CLI)."""

from __future__ import annotations

import uvicorn

from itsproxy.proxy import serving

from .config import SimConfig
from .server import SimState, create_app


def _uvicorn_config(config: SimConfig, host: str, port: int, embedded: bool) -> uvicorn.Config:
    if embedded:
        return serving.embedded_config(create_app(config), host, port, lifespan="off")
    return uvicorn.Config(create_app(config), host=host, port=port, log_level="info", access_log=False,
                          lifespan="off", timeout_graceful_shutdown=1, backlog=4096)


def make_server(config: SimConfig, host: str = "127.0.0.1", port: int = 0) -> uvicorn.Server:
    """A uvicorn server for the simulator, to run as a task in an existing loop
    (`await server.serve()`); with port 0, read the port from
    `server.servers[0].sockets[0].getsockname()[1]` once `server.started`."""
    return uvicorn.Server(_uvicorn_config(config, host, port, embedded=True))


class SimHandle(serving.ServerHandle):
    """A simulator serving in a daemon thread. Also a context manager."""

    @property
    def state(self) -> SimState:
        """The live state (config, stats); read-only use from other threads."""
        return self.app.state.sim


def serve_in_thread(config: SimConfig, host: str = "127.0.0.1", port: int = 0,
                    timeout: float = 10.0) -> SimHandle:
    """Start the simulator in a daemon thread (its own event loop) and return once it
    accepts connections."""
    return serving.serve_in_thread(_uvicorn_config(config, host, port, embedded=True), host, port,
                                   timeout, handle_cls=SimHandle)


def run(config: SimConfig, host: str = "127.0.0.1", port: int = 8001) -> None:
    """Serve in the foreground until interrupted (for the CLI)."""
    server = uvicorn.Server(_uvicorn_config(config, host, port, embedded=False))
    print(f"itsproxy simulator on http://{host}:{port}/v1 (seed {config.seed})", flush=True)
    server.run()
