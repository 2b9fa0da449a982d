"""Step-wise mode: multi-step chain problems whose steps can go wrong, for searching over steps.

The task: "Start at 7, add 5, multiply by 3, subtract 4. What is the result?" The model answers
one line per operation and a final line (the wire format of steps):

    Step 1: 7 + 5 = 12
    Step 2: 12 * 3 = 36
    Step 3: 36 - 4 = 32
    The answer is 32.

Each step's result is right with probability `step_accuracy`; a wrong one is off by a little
(1-9 or 10) and the error propagates: the next step starts from the value written. The logprob
of a step's result tokens is log(confidence), where confidence = (1 - s) * u + s * v with
u ~ U(0.35, 0.95) whatever the step, v ~ U(0.8, 0.99) for a right step and U(0.15, 0.5) for a
wrong one, s = `step_signal` (0: confidence says nothing; 1: it separates right from wrong).
The final answer's tokens carry the last step's confidence.

Continuing a partial chain: the text already written after the question (a completions prompt
that ends mid-chain, or a chat's final assistant message with `continue_final_message: true`) is
read line by line. Whole "Step k: a op b = r" lines are kept as written, right or wrong, and the
model goes on from the last r. An unfinished last line is completed when it is a prefix of the
model's own line for that step; otherwise the model starts on a new line.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

CHAIN_RE = re.compile(
    r"Start (?:at|with) (-?\d+)((?:\s*,\s*(?:add|subtract|multiply by) \d+)+)\s*[.?]?(?:\s*What is the result\?)?",
    re.IGNORECASE)
OP_RE = re.compile(r"(add|subtract|multiply by) (\d+)", re.IGNORECASE)
STEP_RE = re.compile(r"\s*Step (\d+):\s*(-?\d+)\s*([+*-])\s*(\d+)\s*=\s*(-?\d+)\s*")
SYMBOLS = {"add": "+", "subtract": "-", "multiply by": "*"}
WORDS = {v: k for k, v in SYMBOLS.items()}


@dataclass(frozen=True, slots=True)
class Chain:
    start: int
    ops: tuple[tuple[str, int], ...]  # ("+", 5), ("*", 3), ...

    def truth(self) -> int:
        value = self.start
        for sym, n in self.ops:
            value = apply(value, sym, n)
        return value


def apply(value: int, sym: str, n: int) -> int:
    return value + n if sym == "+" else value - n if sym == "-" else value * n


def find_chain(text: str) -> tuple[Chain, int, int] | None:
    """The last chain question in `text`: (chain, where it starts, where it ends)."""
    found = None
    for m in CHAIN_RE.finditer(text):
        found = m
    if found is None:
        return None
    ops = tuple((SYMBOLS[op.lower()], int(n)) for op, n in OP_RE.findall(found.group(2)))
    return Chain(int(found.group(1)), ops), found.start(), found.end()


def chain_question(chain: Chain) -> str:
    ops = ", ".join(f"{WORDS[sym]} {n}" for sym, n in chain.ops)
    return f"Start at {chain.start}, {ops}. What is the result?"


def chains(seed: int, count: int, steps: int = 4) -> list[tuple[str, int]]:
    """`count` distinct (chain question, result) pairs of `steps` operations, reproducible."""
    rng = random.Random(f"chains|{seed}|{steps}")
    out: dict[str, int] = {}
    while len(out) < count:
        ops = []
        for _ in range(steps):
            sym = rng.choice("++--*")
            ops.append((sym, rng.randint(2, 5) if sym == "*" else rng.randint(1, 60)))
        chain = Chain(rng.randint(1, 30), tuple(ops))
        out.setdefault(chain_question(chain), chain.truth())
    return list(out.items())


def step_line(k: int, a: int, sym: str, b: int, r: int) -> str:
    return f"Step {k}: {a} {sym} {b} = {r}"


def read_written(written: str) -> tuple[list[int], str]:
    """(results of the whole step lines already written, the unfinished last line)."""
    *lines, tail = written.split("\n")
    if STEP_RE.fullmatch(tail):
        lines, tail = lines + [tail], ""
    results = [int(m.group(5)) for line in lines if (m := STEP_RE.fullmatch(line))]
    return results, tail


def confidence(rng: random.Random, right: bool, signal: float) -> float:
    u = rng.uniform(0.35, 0.95)
    v = rng.uniform(0.8, 0.99) if right else rng.uniform(0.15, 0.5)
    return (1.0 - signal) * u + signal * v


def _wrong(rng: random.Random, truth: int) -> int:
    off = rng.randint(1, 9) if rng.random() < 0.8 else 10
    return truth + off * rng.choice((-1, 1))


@dataclass(slots=True)
class Steps:
    text: str  # what the model writes (the continuation only, when continuing)
    spans: list[tuple[int, int, float]]  # (start, end, probability) of each result in `text`
    answer: int
    wrong_steps: int  # steps this reply got wrong


def write(chain: Chain, written: str, before: str, rng: random.Random, accuracy: float, signal: float,
          greedy: bool) -> Steps:
    """The model's continuation of `written` (the text after the question; "" for a fresh reply);
    `before` is all the text it follows (the prompt; "" for a fresh chat reply)."""
    results, tail = read_written(written)
    value = results[-1] if results else chain.start
    lines: list[tuple[str, tuple[int, int, float] | None]] = []  # (line, result span within it)
    wrong, conf = 0, 0.9
    for k in range(len(results), len(chain.ops)):
        sym, n = chain.ops[k]
        truth = apply(value, sym, n)
        right = accuracy >= 0.5 if greedy else rng.random() < accuracy
        r = truth if right else _wrong(rng, truth)
        wrong += not right
        conf = confidence(rng, right, signal)
        line = step_line(k + 1, value, sym, n, r)
        lines.append((line, (len(line) - len(str(r)), len(line), conf)))
        value = r
    final = f"The answer is {value}."
    if not written.rstrip().endswith(final):
        lines.append((final, (len(final) - 1 - len(str(value)), len(final) - 1, conf)))
    return _assemble(lines, tail, before.rsplit("\n", 1)[-1], value, wrong)


def _assemble(lines: list[tuple[str, tuple[int, int, float] | None]], tail: str, last_line: str,
              value: int, wrong: int) -> Steps:
    text, spans = "", []
    partial = tail.lstrip()
    if lines and partial and lines[0][0].startswith(partial):
        first, span = lines[0]
        cut = len(partial)
        lines = [(first[cut:], (span[0] - cut, span[1] - cut, span[2]) if span else None)] + lines[1:]
    elif last_line.strip():
        text = "\n"
    for i, (line, span) in enumerate(lines):
        if i:
            text += "\n"
        if span is not None and span[1] > 0:
            spans.append((len(text) + max(span[0], 0), len(text) + span[1], span[2]))
        text += line
    return Steps(text, spans, value, wrong)


def logprob_of(p: float) -> float:
    return math.log(min(max(p, 1e-4), 0.999))


FINAL_RE = re.compile(r"\s*The answer is (-?\d+)\.?\s*")


def sound_so_far(chain: Chain, text: str) -> bool:
    """A process reward's truth: every whole step line of `text` applies the chain's next operation
    to the value so far and computes it right, and a final line (if any) states that value."""
    value, k = chain.start, 0
    for line in text.split("\n"):
        if (m := STEP_RE.fullmatch(line)) is not None:
            a, sym, b, r = int(m.group(2)), m.group(3), int(m.group(4)), int(m.group(5))
            if k >= len(chain.ops) or (sym, b) != chain.ops[k] or a != value or r != apply(a, sym, b):
                return False
            value, k = r, k + 1
        elif (f := FINAL_RE.fullmatch(line)) is not None:
            return k == len(chain.ops) and int(f.group(1)) == value
    return True
