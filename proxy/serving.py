"""Serving an ASGI app in a background thread (its own event loop): how the
tests, the benchmarks and `itsproxy serve` run the simulator beside the proxy."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Literal, TypeVar, overload

import uvicorn


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


class ServerHandle:
    """An app serving in a daemon thread. Also a context manager."""

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
    def app(self) -> Any:
        return self.server.config.app

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


H = TypeVar("H", bound="ServerHandle")


@overload
def serve_in_thread(config: uvicorn.Config, host: str = "127.0.0.1", port: int = 0, timeout: float = 15.0,
                    ) -> ServerHandle: ...
@overload
def serve_in_thread(config: uvicorn.Config, host: str = "127.0.0.1", port: int = 0, timeout: float = 15.0, *,
                    handle_cls: type[H]) -> H: ...
def serve_in_thread(config: uvicorn.Config, host: str = "127.0.0.1", port: int = 0,
                    timeout: float = 15.0, handle_cls: type[ServerHandle] = ServerHandle) -> ServerHandle:
    """Start `config.app` on (host, port) in a daemon thread; return once it accepts connections."""
    sock = bind(host, port)
    server = uvicorn.Server(config)
    errors: list[BaseException] = []

    def main() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # reported to the starting thread
            errors.append(exc)

    thread = threading.Thread(target=main, name=f"server-{sock.getsockname()[1]}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if errors or not thread.is_alive():
            sock.close()
            raise RuntimeError(f"server failed to start: {errors[0] if errors else 'thread exited'}")
        if time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("server did not start in time")
        time.sleep(0.005)
    return handle_cls(server, thread, sock, host)


def embedded_config(app: Any, host: str = "127.0.0.1", port: int = 0, lifespan: Literal["auto", "on", "off"] = "on",
                    ) -> uvicorn.Config:
    # Embedded: leave the host process's logging configuration alone.
    return uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan=lifespan,
                          timeout_graceful_shutdown=1, backlog=4096, log_config=None)
