"""A sound lookup-table checker for "What is the capital of X?" (the shipped capitals dataset).

As a route's checker:  check: {python: "itsproxy.proxy.eval.capitals:check"}
As `itsproxy eval --check itsproxy.proxy.eval.capitals:check`.

Sound means it never passes a wrong answer: it passes only a name in the table's
accepted list for the place asked about (datasets/capitals.tsv), and fails what it
cannot place. The critique never reveals the right answer.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files
from typing import Any

from itsproxy.proxy.eval.normalise import first_line, fold

_QUESTION = re.compile(r"capital of ([^?\n]+)\?", re.I)


@cache
def rows() -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """(kind, place as asked, accepted capitals), in table order: what the dataset is made from."""
    text = files("itsproxy.proxy.eval").joinpath("datasets/capitals.tsv").read_text(encoding="utf-8")
    lines = [line.split("\t") for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return tuple((kind, place, tuple(accepted.split("|"))) for kind, place, accepted in lines)


@cache
def table() -> dict[str, tuple[str, ...]]:
    """Folded place name -> accepted capitals (the first is the reference)."""
    return {fold(place): accepted for _kind, place, accepted in rows()}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def asked_place(payload: dict) -> str | None:
    """The place in the LAST "capital of X?" of the prompt (few-shot prompts ask several)."""
    texts = [_text(payload.get("prompt"))]
    texts += [_text(m.get("content")) for m in payload.get("messages") or []
              if isinstance(m, dict) and m.get("role") == "user"]
    found = None
    for text in texts:
        for m in _QUESTION.finditer(text):
            found = m.group(1)
    return found


def proposed(payload: dict) -> str:
    answer = payload.get("answer")
    if isinstance(answer, str) and answer.strip():
        return first_line(answer)
    return first_line(_text((payload.get("candidate") or {}).get("content")))


def check(payload: dict) -> tuple[bool, str]:
    place = asked_place(payload)
    if place is None:
        return False, "No 'What is the capital of X?' question found."
    accepted = table().get(fold(place))
    if accepted is None:
        return False, f"{place!r} is not in the capitals table; cannot verify."
    answer = proposed(payload)
    if not answer:
        return False, "No answer given. Reply with the name of the capital only."
    if fold(answer) in {fold(a) for a in accepted}:
        return True, f"{answer} is the capital of {place}"
    return False, f"{answer!r} is not the capital of {place}. Think again about {place}."
