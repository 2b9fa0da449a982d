"""A base model behind `/v1/completions`, as the strategies see every model: chat-shaped.

A model whose `model_info.mode` is `completion` (LiteLLM's name) is called with a
raw prompt, never a chat template: base models ramble under chat prompts. The
conversation a strategy hands over is rendered as plain text (`prompt_of`): the
client's prompt as it came, an augmenting string where the route puts it, a repair
round's candidate and critique appended. Replies and stream chunks come back as
chat completions, logprobs in chat's shape, so votes, judges and checkers do not
know the difference.
"""

from __future__ import annotations

from typing import Any

# Chat-only parameters with no meaning for a raw prompt.
CHAT_ONLY = frozenset({"messages", "tools", "tool_choice", "parallel_tool_calls", "response_format", "functions",
                       "function_call", "modalities", "audio", "prediction", "web_search_options", "top_logprobs",
                       "logprobs", "reasoning_effort", "verbosity", "store", "metadata", "continue_final_message"})


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # text parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def prompt_of(messages: list[dict[str, Any]]) -> str:
    """The conversation as one raw prompt: turns joined by a blank line, except that an
    assistant turn continues the text before it (a base model writes on from the prompt)."""
    out = ""
    for m in messages:
        text = _text(m.get("content"))
        if not out or m.get("role") == "assistant":
            out += text
        else:
            out += ("" if out.endswith("\n\n") else "\n\n") + text
    return out


def text_body(body: dict[str, Any]) -> dict[str, Any]:
    """A chat request body as a /completions body."""
    out = {k: v for k, v in body.items() if k not in CHAT_ONLY}
    out["prompt"] = prompt_of(body.get("messages") or [])
    if body.get("logprobs"):
        out["logprobs"] = max(1, int(body.get("top_logprobs") or 1))
    return out


def chat_logprobs(lp: Any) -> dict[str, Any] | None:
    """Completions logprobs (`tokens`, `token_logprobs`, `top_logprobs`) in chat's shape."""
    if not isinstance(lp, dict) or not isinstance(lp.get("tokens"), list):
        return None
    tops = lp.get("top_logprobs") or []
    content = []
    for i, (token, logprob) in enumerate(zip(lp["tokens"], lp.get("token_logprobs") or [])):
        top = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        content.append({"token": token, "logprob": logprob,
                        "top_logprobs": [{"token": t, "logprob": v} for t, v in top.items()]})
    return {"content": content}


def _chat_choice(c: dict[str, Any]) -> dict[str, Any]:
    return {"index": c.get("index", 0), "message": {"role": "assistant", "content": c.get("text")},
            "finish_reason": c.get("finish_reason"), "logprobs": chat_logprobs(c.get("logprobs"))}


def as_chat(resp: dict[str, Any]) -> dict[str, Any]:
    """A (checked) text completion as a chat completion."""
    return {**resp, "object": "chat.completion", "choices": [_chat_choice(c) for c in resp["choices"]]}


def chunk_as_chat(chunk: dict[str, Any]) -> dict[str, Any]:
    choices = [{"index": c.get("index", 0), "delta": {"content": c.get("text") or ""},
                "finish_reason": c.get("finish_reason"), "logprobs": chat_logprobs(c.get("logprobs"))}
               for c in chunk["choices"]]
    return {**chunk, "object": "chat.completion.chunk", "choices": choices}
