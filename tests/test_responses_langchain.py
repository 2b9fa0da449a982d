"""LangChain's `ChatOpenAI`, unchanged, against the proxy: Responses mode (its default for the Agents
SDK style of use) and plain chat mode, invoke, tools, streaming and `n=2`."""

from __future__ import annotations

import os
import re

import pytest

os.environ.setdefault("LANGSMITH_TRACING", "false")
langchain_openai = pytest.importorskip("langchain_openai")  # the `test` extra installs it
from langchain_core.messages import HumanMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402

Q = "What is 17 + 25?"


def llm(proxy, model: str = "sim", **kwargs):
    kwargs.setdefault("temperature", 0)  # the simulator answers greedily: right on this question
    return langchain_openai.ChatOpenAI(model=model, base_url=proxy.handle.base_url, api_key="none",
                                       max_retries=0, **kwargs)


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_responses_mode_invoke(proxy):
    msg = llm(proxy, use_responses_api=True).invoke(Q)
    assert "42" in msg.text
    assert msg.response_metadata["id"].startswith("resp_")
    assert msg.usage_metadata["total_tokens"] > 0


def test_responses_mode_on_a_vote_route(proxy):
    msg = llm(proxy, "math", use_responses_api=True).invoke(Q)
    assert re.search(r"\d", msg.text) and msg.usage_metadata["output_tokens"] > msg.usage_metadata["input_tokens"]


def test_responses_mode_tools(proxy):
    msg = llm(proxy, use_responses_api=True).bind_tools([add]).invoke(Q)
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "add" and msg.tool_calls[0]["args"]["a"] == 17


def test_responses_mode_stream(proxy):
    chunks = list(llm(proxy, use_responses_api=True).stream(Q))
    text = "".join(c.text for c in chunks)
    assert "42" in text and len(chunks) > 2


def test_chat_mode_invoke(proxy):
    msg = llm(proxy).invoke(Q)
    assert "42" in msg.text and msg.response_metadata["model_name"]


def test_chat_mode_n_2_generations(proxy):
    result = llm(proxy, n=2, temperature=1.0).generate([[HumanMessage(Q)]])
    assert len(result.generations[0]) == 2
