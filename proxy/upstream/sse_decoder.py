"""Server-sent events, decoded incrementally from an upstream's byte stream, per the WHATWG spec.

Why our own: the maintained SSE clients either own the HTTP connection
(aiohttp-sse-client, sseclient) or decode lines that something else already
split (httpx-sse's SSEDecoder, private API, tied to httpx's line decoder); the
lean path reads raw aiohttp chunks. The spec's algorithm is short
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):
lines end with CRLF, LF or CR; one leading BOM is dropped; `:` starts a comment;
`field: value` drops one space after the colon; a line without a colon is a field
with an empty value; several `data` lines join with LF; a blank line dispatches
(nothing when no `data` came); an event not followed by a blank line when the
stream ends is never dispatched.
"""

from __future__ import annotations

from typing import NamedTuple

BOM = b"\xef\xbb\xbf"


class Event(NamedTuple):  # a NamedTuple: made once per upstream chunk, it must be cheap
    data: str
    event: str = "message"
    id: str = ""  # the last event ID in force when this event was dispatched
    retry: int | None = None  # the last `retry` (ms) the stream set


class SSEDecoder:
    """feed(bytes) -> the events those bytes completed; `pending` says whether an event is half-read."""

    def __init__(self, max_line_bytes: int | None = None) -> None:
        self.max_line_bytes = max_line_bytes
        self._buf = b""  # the bytes of a line not yet ended
        self._started = False  # the leading BOM was checked
        self._data: list[str] = []
        self._event = ""
        self._id = ""
        self.retry: int | None = None

    @property
    def pending(self) -> bool:
        """Something of an event was read but no blank line dispatched it."""
        return bool(self._data or self._event or self._buf.strip(b"\r"))

    def feed(self, data: bytes) -> list[Event]:
        buf = self._buf + data if self._buf else data
        if not self._started:
            if len(buf) < len(BOM) and BOM.startswith(buf):
                self._buf = buf
                return []
            self._started = True
            if buf.startswith(BOM):
                buf = buf[len(BOM):]
        if b"\r" in buf:
            # A CR at the very end may be the first half of a CRLF: it stays with the unfinished line.
            tail = b"\r" if buf.endswith(b"\r") else b""
            buf = (buf[:-1] if tail else buf).replace(b"\r\n", b"\n").replace(b"\r", b"\n") + tail
        *lines, self._buf = buf.split(b"\n")
        if self.max_line_bytes is not None and len(self._buf) > self.max_line_bytes:
            raise ValueError(f"an event stream line exceeds {self.max_line_bytes} bytes")
        events: list[Event] = []
        for line in lines:
            event = self._line(line.decode("utf-8", "replace"))
            if event is not None:
                events.append(event)
        return events

    def close(self) -> list[Event]:
        """End of stream: a line cut by the end is processed, but the event it belongs to is dropped (spec)."""
        if self._buf.endswith(b"\r"):
            events = self.feed(b"\n")  # the CR ended a line after all
        else:
            events = []
        return events

    def _line(self, line: str) -> Event | None:
        if line.startswith("data:"):  # nearly every line of a model's stream
            self._data.append(line[6:] if line[5:6] == " " else line[5:])
            return None
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self.retry = int(value)
        return None  # other fields are ignored, as the spec says

    def _dispatch(self) -> Event | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return Event("\n".join(data), event or "message", self._id, self.retry)
