"""The upstream SSE decoder against the WHATWG spec's own examples, fed whole and byte by byte."""

from __future__ import annotations

import pytest

from itsproxy.proxy.upstream.sse_decoder import Event, SSEDecoder


def decode(stream: bytes, step: int | None = None) -> list[Event]:
    d = SSEDecoder()
    out: list[Event] = []
    step = step or len(stream) or 1
    for i in range(0, len(stream), step):
        out += d.feed(stream[i:i + step])
    return out + d.close()


def both(stream: bytes) -> list[Event]:
    """Decoded whole, and one byte at a time: the same events either way."""
    whole = decode(stream)
    assert decode(stream, 1) == whole
    assert decode(stream, 3) == whole
    return whole


def test_spec_multiline_data_joins_with_newline():
    # "data: YHOO / data: +2 / data: 10" fires one message "YHOO\n+2\n10".
    assert [e.data for e in both(b"data: YHOO\ndata: +2\ndata: 10\n\n")] == ["YHOO\n+2\n10"]


def test_spec_comment_ids_and_leading_space():
    stream = (b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\n"
              b"data:  third event\n\n")
    events = both(stream)
    assert [(e.data, e.id) for e in events] == [("first event", "1"), ("second event", ""), (" third event", "")]


def test_spec_empty_data_and_undispatched_last_block():
    # "data\n\ndata\ndata\n\ndata:": "", then "\n"; the last block has no blank line: discarded.
    events = both(b"data\n\ndata\ndata\n\ndata:")
    assert [e.data for e in events] == ["", "\n"]


def test_spec_space_after_colon_is_optional():
    assert [e.data for e in both(b"data:test\n\ndata: test\n\n")] == ["test", "test"]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(eol):
    stream = eol.join([b"data: a", b"data: b", b"", b"event: error", b"data: c", b"", b""])
    events = both(stream)
    assert [(e.event, e.data) for e in events] == [("message", "a\nb"), ("error", "c")]


def test_mixed_line_endings_and_cr_split_across_chunks():
    d = SSEDecoder()
    assert d.feed(b"data: x\r") == []  # the CR might be half of a CRLF
    assert d.feed(b"\n\r") == []
    assert [e.data for e in d.feed(b"\ndata: y\n\n")] == ["x", "y"]


def test_leading_bom_dropped_once_even_when_split():
    stream = b"\xef\xbb\xbfdata: a\n\n"
    assert [e.data for e in both(stream)] == ["a"]
    # a second BOM is not at the stream start: it is part of the field name, so the line is ignored
    assert [e.data for e in both(b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n")] == []


def test_fields_retry_id_with_null_and_unknown():
    events = both(b"retry: 1500\nretry: 1x\nid: 7\nid: a\0b\nfoo: bar\ndata\n\n")
    assert events == [Event("", "message", "7", 1500)]


def test_event_type_resets_after_dispatch_but_id_persists():
    events = both(b"event: add\nid: 3\ndata: 1\n\ndata: 2\n\n")
    assert [(e.event, e.id) for e in events] == [("add", "3"), ("message", "3")]


def test_event_without_data_is_not_dispatched():
    assert both(b"event: ping\n\n: keepalive\n\n") == []


def test_pending_tells_a_cut_event():
    d = SSEDecoder()
    d.feed(b"data: {\"a\": 1}\n\ndata: {\"b\"")
    assert d.pending
    d2 = SSEDecoder()
    d2.feed(b"data: 1\n\n")
    assert not d2.pending


def test_line_cap():
    d = SSEDecoder(max_line_bytes=10)
    with pytest.raises(ValueError):
        d.feed(b"data: " + b"x" * 20)


def test_utf8_split_inside_a_character():
    text = "héllo ✓".encode()
    stream = b"data: " + text + b"\n\n"
    assert [e.data for e in both(stream)] == ["héllo ✓"]
