"""Everything the proxy emits during the fault campaign, and a search of it for the secrets.

The campaign gives its config recognizable secrets (the upstream key, the server key, a checker's
header and env through `os.environ/`) and then must find none of them in anything the proxy
said: every response body and header (an httpx transport that keeps a copy of each byte the
client read), stderr (the access log, warnings; a tee installed before the proxy's log handlers),
the trace file and a final `/metrics` scrape. Each secret is searched plain and base64-encoded
(at every byte alignment, so a secret inside a longer encoded string is found too, e.g. a
`Basic` or `Bearer` header value); the `Bearer <secret>` form contains the plain one.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import sys
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TextIO

import httpx

from itsproxy.proxy.telemetry import access_log


class Sink:
    """What was captured, in pieces, thread-safe (the load runs many clients at once)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self._lock = threading.Lock()

    def add(self, where: str, data: bytes | str) -> None:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        with self._lock:
            self.parts.append(f"[{where}] {text}")

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.parts)


def _headers(response: httpx.Response) -> str:
    return "\n".join(f"{k}: {v}" for k, v in response.headers.multi_items())


class _TeeStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, sink: Sink) -> None:
        self.inner, self.sink = inner, sink

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.sink.add("body", chunk)
            yield chunk

    def close(self) -> None:
        self.inner.close()


class _AsyncTeeStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, sink: Sink) -> None:
        self.inner, self.sink = inner, sink

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            self.sink.add("body", chunk)
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class TeeTransport(httpx.HTTPTransport):
    """An httpx transport that copies every response's headers and body bytes into `sink`."""

    def __init__(self, sink: Sink, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.sink = sink

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.sink.add("headers", _headers(response))
        assert isinstance(response.stream, httpx.SyncByteStream)
        response.stream = _TeeStream(response.stream, self.sink)
        return response


class AsyncTeeTransport(httpx.AsyncHTTPTransport):
    def __init__(self, sink: Sink, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.sink = sink

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        self.sink.add("headers", _headers(response))
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _AsyncTeeStream(response.stream, self.sink)
        return response


class StderrTee(io.TextIOBase):
    """sys.stderr while the campaign runs: written through, and kept."""

    def __init__(self, target: TextIO, sink: Sink) -> None:
        self.target, self.sink = target, sink

    def write(self, s: str) -> int:
        self.sink.add("stderr", s)
        return self.target.write(s)

    def flush(self) -> None:
        self.target.flush()


def install_stderr_tee(sink: Sink) -> TextIO:
    """Put the tee in place (before the proxy creates its log handlers); returns the real stderr."""
    real = sys.stderr
    sys.stderr = StderrTee(real, sink)  # type: ignore[assignment]
    return real


def forms(secret: str) -> list[str]:
    """The secret plain and base64-encoded at each of the three byte alignments (standard and
    URL-safe alphabets), trimmed to the characters that depend on the secret alone."""
    out = [secret]
    raw = secret.encode()
    for pad in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            enc = encode(b"\0" * pad + raw).decode().rstrip("=")
            start = -(-4 * pad // 3)  # ceil: the first character with none of the padding in it
            out.append(enc[start:len(enc) - 3])
    return out


def found(text: str, secrets: Sequence[str]) -> list[str]:
    """Which secrets appear in `text`, in any of their forms (plain, base64, `Bearer`)."""
    return [s for s in secrets if any(f and f in text for f in forms(s))]


class EchoingVerifier:
    """An http checker's verifier that refuses every candidate, echoing the credential it was sent
    (as careless services do): the critique then carries the checker's secret header."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length") or 0))
                auth = self.headers.get("authorization", "")
                body = json.dumps({"error": f"token {auth.split()[-1] if auth else '-'} rejected ({auth!r})"})
                self.send_response(401)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/verify"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def proxy_output(sink: Sink) -> Iterator[None]:
    """stderr teed into `sink`, with the log handlers `itsproxy serve` installs (its warnings and
    access log, written to that stderr); on exit stderr and the loggers are as they were."""
    loggers = [logging.getLogger("itsproxy"), access_log.log]
    saved = [(lg, list(lg.handlers), lg.level, lg.propagate) for lg in loggers]
    real = install_stderr_tee(sink)
    try:
        for lg in loggers:
            lg.handlers.clear()
        access_log.configure("info")
        yield
    finally:
        sys.stderr = real
        for lg, handlers, level, propagate in saved:
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate = propagate
