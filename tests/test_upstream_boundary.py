"""The upstream layer against a deliberately difficult upstream (tests/difficult_upstream.py):
every legal SSE spelling decodes, every malformed reply is a 502-class UpstreamError raised after
the good chunks, usage is never told negative, Retry-After is listened to, cancelled calls metered."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from itsproxy.proxy.config import parse_config
from itsproxy.proxy.metering.ledger import CallRecord, Ledger
from itsproxy.proxy.metering.tokens import count_message
from itsproxy.proxy.upstream.backends.base import UpstreamError, UpstreamProtocolError
from itsproxy.proxy.upstream.pool import Upstream
from tests.difficult_upstream import ANSWER, serve

USER = [{"role": "user", "content": "What is six times seven?"}]
MODES = ["ok", "multiline", "comments", "crlf", "cr", "bom", "split", "no_done", "truncated", "cut_event",
         "malformed_chunk", "error_event", "json_reply", "json_error", "html", "ratelimit", "ratelimit_date",
         "ratelimit_long", "n_refused", "usage_str", "usage_list", "usage_negative", "bad_choices",
         "object_content", "parts_content", "huge", "slow"]


@pytest.fixture(scope="module")
def difficult():
    handle, state = serve()
    yield handle, state
    handle.stop()


def config(url: str, client: str = "auto", **server: Any):
    return parse_config({
        "model_list": [{"model_name": m, "litellm_params": {"model": f"openai/{m}", "api_base": f"{url}/v1",
                                                            "api_key": "sk-difficult"}} for m in MODES],
        "routes": [],
        "server": {"upstream_client": client, "max_upstream_body_bytes": 1024 * 1024, **server},
    })


async def collect(up: Upstream, mode: str, deadline: float | None = None):
    """One metered stream: its chunks, the error it ended with (if any), its call record."""
    ledger = Ledger()
    got: list[dict] = []
    error: UpstreamError | None = None
    try:
        async for c in up.bind(ledger, deadline).stream(mode, {"messages": USER}):
            got.append(c)
    except UpstreamError as exc:
        error = exc
    return got, error, ledger.calls[0]


async def call(up: Upstream, mode: str, **body):
    ledger = Ledger()
    sampler = up.bind(ledger)
    try:
        resp, _ = await sampler.call(sampler.entry(mode), {"messages": USER, **body}, "generate")
        return resp, None, ledger.calls[0]
    except UpstreamError as exc:
        return None, exc, ledger.calls[0]


def text(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def run(difficult, body, client: str = "auto", **server):
    async def main():
        up = Upstream(config(difficult[0].url, client, **server))
        try:
            return await body(up)
        finally:
            await up.aclose()
    return asyncio.run(main())


def told(record: CallRecord) -> None:
    assert record.prompt_tokens == 11 and record.completion_tokens == 5 and not record.estimated


@pytest.mark.parametrize("mode", ["ok", "multiline", "comments", "crlf", "cr", "bom", "split", "no_done",
                                  "json_reply"])
def test_every_legal_stream_spelling_decodes(difficult, mode):
    got, error, record = run(difficult, lambda up: collect(up, mode))
    assert error is None and text(got) == ANSWER
    assert record.outcome == "ok"
    told(record)


@pytest.mark.parametrize("mode, code, good", [
    ("truncated", "upstream_truncated", 5), ("cut_event", "upstream_truncated", 5),
    ("malformed_chunk", "upstream_malformed_chunk", 3), ("bad_choices", "upstream_protocol_error", 0),
    ("object_content", "upstream_protocol_error", 0)])
def test_broken_streams_raise_after_the_good_chunks_and_meter_them(difficult, mode, code, good):
    got, error, record = run(difficult, lambda up: collect(up, mode))
    assert isinstance(error, UpstreamProtocolError) and error.status == 502 and error.code == code
    assert len(got) == good
    assert record.outcome == "error" and record.estimated and record.prompt_tokens > 0
    partial = {"role": "assistant", "content": text(got) or None}
    assert record.completion_tokens == (count_message(partial) if got else 0)  # what got through, estimated


@pytest.mark.parametrize("mode, cls", [("html", UpstreamProtocolError), ("json_error", UpstreamError),
                                       ("error_event", UpstreamError), ("huge", UpstreamProtocolError)])
def test_non_streams_and_error_events_are_502(difficult, mode, cls):
    got, error, record = run(difficult, lambda up: collect(up, mode))
    assert isinstance(error, cls) and error.status == 502, error
    assert record.outcome == "error"
    if mode == "html":
        assert "text/html" in error.message and record.prompt_tokens == 0  # not a model's answer
    if mode == "json_error":
        assert error.message == "model is loading"


@pytest.mark.parametrize("mode", ["bad_choices", "object_content", "html", "huge"])
def test_malformed_replies_are_502_and_metered_as_far_as_known(difficult, mode):
    resp, error, record = run(difficult, lambda up: call(up, mode))
    assert isinstance(error, UpstreamProtocolError) and error.status == 502 and not error.rejected
    assert record.outcome == "error"
    if mode in ("bad_choices", "object_content"):  # a JSON answer with valid usage: that usage, flagged
        assert (record.prompt_tokens, record.completion_tokens, record.estimated) == (11, 5, True)
    else:
        assert record.prompt_tokens == 0
    if mode == "bad_choices":
        assert "$.choices[0]" in error.message
    if mode == "object_content":
        assert "$.choices[0].message.content" in error.message


@pytest.mark.parametrize("mode", ["usage_str", "usage_list", "usage_negative"])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_usage_is_dropped_and_estimated_never_negative(difficult, mode, stream):
    if stream:
        got, error, record = run(difficult, lambda up: collect(up, mode))
        assert error is None and text(got) == ANSWER and not any("usage" in c for c in got)
    else:
        resp, error, record = run(difficult, lambda up: call(up, mode))
        assert error is None and "usage" not in resp and resp["choices"][0]["message"]["content"] == ANSWER
    assert record.estimated and record.prompt_tokens > 0 and record.completion_tokens > 0


@pytest.mark.parametrize("stream", [False, True])
def test_text_parts_content_is_joined(difficult, stream):
    if stream:
        got, error, _ = run(difficult, lambda up: collect(up, "parts_content"))
        assert error is None and text(got) == "The answer is 42."
    else:
        resp, error, _ = run(difficult, lambda up: call(up, "parts_content"))
        assert resp["choices"][0]["message"]["content"] == "The answer is 42."


@pytest.mark.parametrize("mode", ["ratelimit", "ratelimit_date"])
@pytest.mark.parametrize("stream", [False, True])
def test_retry_after_is_honoured_then_success(difficult, mode, stream):
    before = difficult[1].hits.get(mode, 0)
    if stream:
        got, error, record = run(difficult, lambda up: collect(up, mode), num_retries=2)
        assert error is None and text(got) == ANSWER
    else:
        resp, error, record = run(difficult, lambda up: call(up, mode), num_retries=2)
        assert error is None and resp["choices"][0]["message"]["content"] == ANSWER
    assert difficult[1].hits[mode] - before == 2
    told(record)


def test_retry_after_past_the_deadline_is_not_waited_but_carried(difficult):
    before = difficult[1].hits.get("ratelimit_long", 0)

    async def body(up):
        return await collect(up, "ratelimit_long", deadline=asyncio.get_running_loop().time() + 10)

    got, error, _ = run(difficult, body, num_retries=3)
    assert error.status == 429 and error.retry_after == 120.0 and not error.rejected
    assert difficult[1].hits["ratelimit_long"] - before == 1


def test_a_400_about_n_is_a_rejection_and_sample_fans_out(difficult):
    resp, error, _ = run(difficult, lambda up: call(up, "n_refused", n=3), num_retries=3)
    assert error.status == 400 and error.rejected and error.about_n and error.param == "n"

    async def sample(up):
        return await up.bind(Ledger()).sample(USER, model="n_refused", n=3)

    assert [s.message["content"] for s in run(difficult, sample)] == [ANSWER] * 3


def test_a_cancelled_call_meters_the_prompt_it_sent(difficult):
    async def body(up):
        ledger = Ledger()
        sampler = up.bind(ledger)
        task = asyncio.ensure_future(sampler.call(sampler.entry("slow"), {"messages": USER}, "generate"))
        while difficult[1].hits.get("slow", 0) == 0:  # the upstream has the request
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return ledger.calls[0]

    record = run(difficult, body)
    assert record.outcome == "cancelled" and record.estimated and record.prompt_tokens > 0
    assert record.completion_tokens == 0


# ---- the same upstream through litellm (server.upstream_client: litellm). What litellm 1.110 cannot
# see is documented in the branch report: a JSON, error-JSON or HTML answer to a stream request, and
# object or text-part content in a stream, come out of litellm as an empty stream, not an error.

@pytest.mark.parametrize("mode", ["ok", "crlf", "cr", "bom", "split", "no_done", "multiline"])
def test_litellm_path_decodes_legal_streams(difficult, mode):
    got, error, record = run(difficult, lambda up: collect(up, mode), "litellm")
    assert error is None and text(got) == ANSWER and record.outcome == "ok"


@pytest.mark.parametrize("mode", ["truncated", "cut_event", "malformed_chunk", "error_event", "bad_choices",
                                  "comments"])
def test_litellm_path_broken_streams_are_502_after_the_good_chunks(difficult, mode):
    got, error, record = run(difficult, lambda up: collect(up, mode), "litellm")
    assert isinstance(error, UpstreamProtocolError) and error.status == 502
    assert record.outcome == "error" and record.estimated and record.prompt_tokens > 0
    if mode in ("truncated", "cut_event"):
        assert text(got) == ANSWER


@pytest.mark.parametrize("mode", ["bad_choices", "object_content", "usage_str", "usage_list", "html"])
def test_litellm_path_malformed_replies_are_502_not_retried(difficult, mode):
    before = difficult[1].hits.get(mode, 0)
    resp, error, record = run(difficult, lambda up: call(up, mode), "litellm", num_retries=2)
    assert isinstance(error, UpstreamProtocolError) and error.status == 502
    assert difficult[1].hits[mode] - before == 1
    assert record.outcome == "error" and record.estimated


def test_litellm_path_negative_usage_is_estimated(difficult):
    resp, error, record = run(difficult, lambda up: call(up, "usage_negative"), "litellm")
    assert error is None and "usage" not in resp and record.estimated and record.prompt_tokens > 0


def test_litellm_path_retry_after(difficult):
    before = difficult[1].hits.get("ratelimit", 0)
    resp, error, record = run(difficult, lambda up: call(up, "ratelimit"), "litellm", num_retries=2)
    assert error is None and difficult[1].hits["ratelimit"] - before == 2
    before = difficult[1].hits.get("ratelimit_long", 0)
    resp, error, record = run(difficult, lambda up: call(up, "ratelimit_long"), "litellm", num_retries=2)
    assert error.status == 429 and error.retry_after == 120.0
    assert difficult[1].hits["ratelimit_long"] - before == 1
