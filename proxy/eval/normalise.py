"""How `itsproxy eval` decides that an answer equals a reference.

One normaliser, deliberately conservative (a grader that accepts too much inflates
every curve): numbers compare as numbers; text compares after folding case,
accents, punctuation, spacing and the "St."/"Saint" spelling, nothing more.
"""

from __future__ import annotations

import re
import unicodedata

from itsproxy.strategies.extract import normalise_number

_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_NUMBER = re.compile(r"\s*[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?\s*")


def fold(text: str) -> str:
    """'Saint John's' and 'St. Johns' -> 'saintjohns'; 'Brasília' -> 'brasilia'; 'The X' -> 'x'."""
    decomposed = unicodedata.normalize("NFKD", text)
    ascii_ = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).lower()
    words = _NON_ALNUM.sub(" ", ascii_.replace("&", " and ")).split()
    if words[:1] == ["the"]:
        words = words[1:]
    return "".join("saint" if w == "st" else w for w in words)


def canonical(text: str) -> str:
    """The comparison key of one answer: a normalised number, else the folded text."""
    if _NUMBER.fullmatch(text):
        number = normalise_number(text.strip())
        if number is not None:
            return number
    return fold(text)


def first_line(text: str) -> str:
    """A few-shot completion's answer: its first non-empty line, without a trailing full stop."""
    for line in text.splitlines():
        if line.strip():
            return line.strip().rstrip(".").strip()
    return ""


def matches(answer: str | None, references: list[str]) -> bool:
    if answer is None:
        return False
    key = canonical(answer)
    return bool(key) and any(key == canonical(ref) for ref in references)
