"""A reply's choices as the strategies and the ledger need them: messages, and each choice's
share of the call's tokens (one n-call's completion split by our tokenizer's counts, exactly),
and our own prompt estimate for an upstream that told no usage."""

from __future__ import annotations

from typing import Any

from itsproxy.proxy.metering.tokens import count_message, count_messages, count_text


def split_completion(total: int, messages: list[dict[str, Any]]) -> list[int]:
    """Share one call's completion tokens across its choices by their tiktoken counts, exactly."""
    if len(messages) <= 1 or total == 0:  # nothing to split: the same shares, without tokenizing
        return [total] * len(messages)
    counts = [count_message(m) for m in messages]
    if not counts:
        return []
    weight = sum(counts)
    if weight == 0:
        counts, weight = [1] * len(counts), len(counts)
    exact = [total * c / weight for c in counts]
    shares = [int(x) for x in exact]
    order = sorted(range(len(shares)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


def choice_message(choice: dict[str, Any]) -> dict[str, Any]:
    m = choice.get("message") or {}
    out: dict[str, Any] = {"role": "assistant", "content": m.get("content")}
    for key in ("tool_calls", "refusal", "function_call", "audio"):
        if m.get(key):
            out[key] = m[key]
    return out


def prompt_estimate(body: dict[str, Any]) -> int:
    """The prompt's tokens by our tokenizer, whatever the endpoint (for an upstream that told none)."""
    if "messages" in body:
        return count_messages(body.get("messages") or [], body.get("tools"))
    prompt = body.get("prompt", body.get("input"))
    texts = [prompt] if isinstance(prompt, str) else prompt if isinstance(prompt, list) else []
    return sum(count_text(t) if isinstance(t, str) else len(t) if isinstance(t, list) else 1 for t in texts)


def reply_message(choice: dict[str, Any]) -> dict[str, Any]:
    """A choice's message; a text completion's text as one."""
    if "message" in choice:
        return choice["message"]
    return {"role": "assistant", "content": choice.get("text") or ""}
