"""Judge and reward behaviour against known truth. Pure (no I/O).

A chat request is a *verifier request* when its (non-assistant) messages hold
`<answer>...</answer>` / `<answer id="X">...</answer>` blocks and a "What is A + B?"
question outside them. A candidate's value is the last number in its block.

- 1 block: pointwise. Believed correct with P = judge_tpr if it is, judge_fpr if not.
  JSON mode: {"score": 0-10, "reason": ...}; else "Yes"/"No" (P(first token) reported
  so that top_logprobs can carry both Yes and No).
- 2 blocks: pairwise, {"winner": id} or the bare id.
- 3+ blocks: universal self-consistency, {"best": id} or the bare id.
- judge_garbage: that share of verifier replies is unparseable.

Reward model stand-in: score = 1[candidate's last number is the truth] + N(0, reward_noise).
On a chain problem (step-wise mode) it is a process reward: 1[every step so far is right] + noise,
and a pointwise judge of one (partial) chain believes it sound with P = judge_tpr if every step so
far is right, judge_fpr if not.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .config import SimConfig
from .questions import QUESTION_RE, Question, content_text, find_question, last_number, parse_question
from .steps import Chain, find_chain, sound_so_far

BLOCK_RE = re.compile(
    r"<answer(?:\s+id\s*=\s*[\"']?([^\"'>\s]*)[\"']?)?\s*>(.*?)</answer\s*>", re.DOTALL | re.IGNORECASE
)
GARBAGE = "I am not sure."
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(slots=True, frozen=True)
class Block:
    id: str
    value: int | float | None  # the last number in the block


def find_blocks(messages: list[dict[str, Any]]) -> list[Block] | None:
    """The answer blocks of a verifier request, or None when it is not one."""
    blocks: list[Block] = []
    for m in messages:
        if m.get("role") == "assistant":
            continue
        text = content_text(m.get("content"))
        if "<answer" not in text and "<ANSWER" not in text:
            continue
        for match in BLOCK_RE.finditer(text):
            ident = match.group(1)
            if not ident:
                ident = LETTERS[len(blocks)] if len(blocks) < len(LETTERS) else str(len(blocks) + 1)
            blocks.append(Block(ident, last_number(match.group(2))))
    if not blocks or all(b.value is None for b in blocks):
        return None
    return blocks


def judge(cfg: SimConfig, question: Question, blocks: list[Block], json_mode: bool,
          rng: random.Random) -> tuple[str, tuple[str, float] | None]:
    """The verifier's reply text and, for Yes/No replies, (other token, P(sampled token))."""
    if cfg.judge_garbage and rng.random() < cfg.judge_garbage:
        return GARBAGE, None
    truth = question[0] + question[1]
    if len(blocks) == 1:
        return _pointwise(cfg, blocks[0].value == truth, json_mode, rng)
    if len(blocks) == 2:
        winner = _pairwise(cfg, blocks, truth, rng)
        return (json.dumps({"winner": winner}) if json_mode else winner), None
    best = _universal(cfg, blocks, rng)
    return (json.dumps({"best": best}) if json_mode else best), None


def _pointwise(cfg: SimConfig, correct: bool, json_mode: bool,
               rng: random.Random) -> tuple[str, tuple[str, float] | None]:
    believed = rng.random() < (cfg.judge_tpr if correct else cfg.judge_fpr)
    if json_mode:
        score = rng.randint(7, 10) if believed else rng.randint(0, 3)
        reason = "The sum checks out." if believed else "The sum looks wrong."
        return json.dumps({"score": score, "reason": reason}), None
    confidence = rng.uniform(0.6, 0.95)
    return ("Yes", ("No", confidence)) if believed else ("No", ("Yes", confidence))


def chain_block(messages: list[dict[str, Any]]) -> tuple[Chain, str] | None:
    """(the chain problem, the one block's text) of a verifier request about one chain, if it is one."""
    texts = [content_text(m.get("content")) for m in messages if m.get("role") != "assistant"]
    found = [m.group(2) for t in texts for m in BLOCK_RE.finditer(t)]
    chain = next((c[0] for t in texts if (c := find_chain(BLOCK_RE.sub(" ", t))) is not None), None)
    return (chain, found[0].strip("\n")) if chain is not None and len(found) == 1 else None


def judge_chain(cfg: SimConfig, chain: Chain, text: str, json_mode: bool,
                rng: random.Random) -> tuple[str, tuple[str, float] | None]:
    """A pointwise verdict on a (partial) chain: is every step so far right?"""
    if cfg.judge_garbage and rng.random() < cfg.judge_garbage:
        return GARBAGE, None
    return _pointwise(cfg, sound_so_far(chain, text), json_mode, rng)


def _pairwise(cfg: SimConfig, blocks: list[Block], truth: int, rng: random.Random) -> str:
    first, second = blocks
    ok1, ok2 = first.value == truth, second.value == truth
    if ok1 != ok2:
        right, wrong = (first, second) if ok1 else (second, first)
        return right.id if rng.random() < cfg.judge_tpr else wrong.id
    return rng.choice((first.id, second.id))


def _universal(cfg: SimConfig, blocks: list[Block], rng: random.Random) -> str:
    counts = Counter(b.value for b in blocks if b.value is not None)
    top = max(counts.values())
    modes = {v for v, c in counts.items() if c == top}
    good = [b.id for b in blocks if b.value in modes]
    if rng.random() < cfg.judge_tpr:
        return rng.choice(good)
    return rng.choice([b.id for b in blocks])


# ---------------------------------------------------------------- reward model


def reward_score(cfg: SimConfig, question: Question | None, candidate: str, salt: Any = None) -> float:
    """1.0 if the candidate's last number is the truth (else 0.0) plus seeded Gaussian noise."""
    correct = question is not None and last_number(candidate) == question[0] + question[1]
    rng = random.Random(f"reward|{cfg.seed}|{salt}|{question}|{candidate}")
    noise = rng.gauss(0.0, cfg.reward_noise) if cfg.reward_noise else 0.0
    return round((1.0 if correct else 0.0) + noise, 6)


def chain_reward(cfg: SimConfig, chain: Chain, candidate: str, salt: Any = None) -> float:
    """A process reward on a (partial) chain: 1.0 if every step so far is right, plus seeded noise."""
    rng = random.Random(f"reward|{cfg.seed}|{salt}|{chain}|{candidate}")
    noise = rng.gauss(0.0, cfg.reward_noise) if cfg.reward_noise else 0.0
    return round((1.0 if sound_so_far(chain, candidate) else 0.0) + noise, 6)


def prompt_chain(prompt: Any) -> Chain | None:
    """The chain problem of a /reward prompt (a string or chat messages), if it is one."""
    if isinstance(prompt, list):
        prompt = "\n".join(content_text(m.get("content")) for m in prompt if isinstance(m, dict))
    found = find_chain(prompt) if isinstance(prompt, str) else None
    return found[0] if found else None


def probability_correct(score: float) -> float:
    return round(1.0 / (1.0 + math.exp(-4.0 * (score - 0.5))), 6)


def classify_text(cfg: SimConfig, text: str, salt: Any = None) -> float:
    """P(correct) for one input holding both the question and the candidate answer."""
    question = parse_question(text)
    candidate = QUESTION_RE.sub(" ", text)
    return probability_correct(reward_score(cfg, question, candidate, salt))


def prompt_question(prompt: Any) -> Question | None:
    """The question of a /reward prompt: a string or a list of chat messages."""
    if isinstance(prompt, str):
        return parse_question(prompt)
    if isinstance(prompt, list):
        return find_question([m for m in prompt if isinstance(m, dict)])
    return None
