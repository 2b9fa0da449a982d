"""Eval datasets: JSONL rows, validated on load so a bad row fails before any token is spent.

A row is `{"id": str, "prompt": str | "messages": [...], "answer": str | [str, ...], "params"?: {...}}`:
a `prompt` goes to /v1/completions, `messages` to /v1/chat/completions; `answer` lists the
accepted answers; `params` are OpenAI request parameters for that row (max_tokens, stop, ...).
A bare name (`capitals`) is a dataset shipped in itsproxy.proxy.eval.datasets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

# Parameters a row may set; the route, the seed and `n` are the eval's to set.
ROW_PARAMS = frozenset({"max_tokens", "stop", "temperature", "top_p", "logprobs", "top_logprobs"})


class DatasetError(ValueError):
    pass


@dataclass(frozen=True)
class Row:
    id: str
    answers: tuple[str, ...]
    prompt: str | None = None
    messages: tuple[dict[str, Any], ...] | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def surface(self) -> str:
        return "completions" if self.prompt is not None else "chat"

    def checker_payload(self) -> dict[str, Any]:
        """What a checker sees of the question (the candidate and answer are added per answer)."""
        if self.prompt is not None:
            return {"prompt": self.prompt, "messages": [{"role": "user", "content": self.prompt}]}
        return {"messages": [dict(m) for m in self.messages or ()]}


def resolve(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.exists():
        return path
    packaged = files("itsproxy.proxy.eval").joinpath(f"datasets/{name_or_path}.jsonl")
    if packaged.is_file():
        return Path(str(packaged))
    raise DatasetError(f"no dataset file {name_or_path!r} (and no packaged dataset of that name)")


def parse_row(raw: Any, where: str) -> Row:
    if not isinstance(raw, dict):
        raise DatasetError(f"{where}: a row must be a JSON object")
    unknown = set(raw) - {"id", "prompt", "messages", "answer", "params"}
    if unknown:
        raise DatasetError(f"{where}: unknown keys {sorted(unknown)}")
    rid = raw.get("id")
    if not isinstance(rid, (str, int)) or isinstance(rid, bool) or str(rid) == "":
        raise DatasetError(f"{where}: 'id' must be a non-empty string or integer")
    answer = raw.get("answer")
    answers = [answer] if isinstance(answer, (str, int, float)) and not isinstance(answer, bool) else answer
    if not isinstance(answers, list) or not answers or not all(isinstance(a, (str, int, float)) for a in answers):
        raise DatasetError(f"{where}: 'answer' must be a string, a number or a non-empty list of them")
    prompt, messages = raw.get("prompt"), raw.get("messages")
    if (prompt is None) == (messages is None):
        raise DatasetError(f"{where}: exactly one of 'prompt' and 'messages' is required")
    if prompt is not None and (not isinstance(prompt, str) or not prompt):
        raise DatasetError(f"{where}: 'prompt' must be a non-empty string")
    if messages is not None and (not isinstance(messages, list) or not messages
                                 or not all(isinstance(m, dict) and "role" in m for m in messages)):
        raise DatasetError(f"{where}: 'messages' must be a non-empty list of chat messages")
    params = raw.get("params") or {}
    if not isinstance(params, dict) or set(params) - ROW_PARAMS:
        raise DatasetError(f"{where}: 'params' may only hold {sorted(ROW_PARAMS)}")
    return Row(id=str(rid), answers=tuple(str(a) for a in answers), prompt=prompt,
               messages=tuple(messages) if messages is not None else None, params=dict(params))


def load(name_or_path: str, limit: int | None = None) -> list[Row]:
    path = resolve(name_or_path)
    rows: list[Row] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                raw = json.loads(line)
            except ValueError as exc:
                raise DatasetError(f"{where}: not JSON ({exc})") from None
            row = parse_row(raw, where)
            if row.id in seen:
                raise DatasetError(f"{where}: duplicate id {row.id!r}")
            seen.add(row.id)
            rows.append(row)
    if not rows:
        raise DatasetError(f"{path}: no rows")
    return rows[:limit] if limit is not None else rows
