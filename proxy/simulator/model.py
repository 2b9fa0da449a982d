"""The noisy answerer: given a chat request, sample `n` replies. Pure (no I/O).

Each question "What is A + B?" has a probability p of a correct sample, derived from
(server seed, A, B) by hash; wrong samples are often the question's shared common
wrong answer, so majority voting is not trivially right. Augmenting substrings in
the prompt shift p; a back-prompt (critique) raises it and steers wrong samples away
from earlier answers. Verifier requests (answer blocks) are handed to `verifier`, chain problems
("Start at 7, add 5, ...") to `steps`. Chat requests are read by `read_request`, completions
prompts by its twin `read_prompt`.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from . import steps, verifier
from .config import SimConfig
from .questions import QUESTION_RE, Question, content_text, find_question, last_number, parse_question

GENERIC_REPLY = "I can only add numbers."

TEMPLATES = (
    "Adding {a} and {b} step by step gives {x}. {f}The answer is {x}.",
    "{a} plus {b} equals {x}. {f}The answer is {x}.",
    "Let me compute {a} + {b}. {f}The sum is {x}. The answer is {x}.",
    "First take {a}, then add {b}, which makes {x}. {f}The answer is {x}.",
    "We need {a} + {b}. {f}So the total is {x}. The answer is {x}.",
    "Summing {a} with {b} gives {x}. {f}The answer is {x}.",
    "The answer is {x}.",
)
FILLERS = (
    "", "", "Carrying where needed. ", "Lining up the digits carefully. ",
    "Checking the signs first. ", "Working column by column. ",
    "Let me double-check that. ", "Keeping track of the carry. ",
)
CRITIQUE_OPENERS = ("Let me recheck. ", "You are right to ask again. ", "Recomputing carefully. ")


@dataclass(slots=True)
class Choice:
    message: dict[str, Any]
    finish_reason: str
    rng: random.Random  # continues the choice's stream (used for logprobs, ids)
    answer_p: float | None = None  # probability of the sampled answer (numeric logprobs)
    first_alt: tuple[str, float] | None = None  # judge: (other first token, P(sampled first token))
    spans: list[tuple[int, int, float]] | None = None  # step-wise: (start, end, P) of each scored number


@dataclass(slots=True)
class View:
    """What the answerer needs to know about a request."""

    model: str
    messages: list[dict[str, Any]]
    question: Question | None
    json_mode: bool
    tool: str | None  # the function to call, when the reply should be a tool call
    temperature: float
    seed: int | None
    critique: bool
    avoid: frozenset
    prompt_text: str  # lower-cased system + user text, for boosts
    blocks: list[verifier.Block] | None  # verifier request: the candidates
    turns: int
    fewshot: bool = False  # completions: a prompt ending in "A:" gets a bare answer ("42\n")
    lead: str = ""  # completions: what the text starts with (a space after a prompt's last word)
    chain: steps.Chain | None = None  # a step-wise problem (then `question` is None)
    written: str = ""  # step-wise: the chain text already written after the question
    before: str = ""  # step-wise: all the text the reply continues ("" for a fresh chat reply)
    judged: tuple[steps.Chain, str] | None = None  # step-wise: a judge asked about one (partial) chain


# A base-model prompt that ends in an answer cue ("A:", "Answer:", "Sum:", "=") is answered like a
# few-shot example: " 42\n", not a sentence.
FEWSHOT_CUE = re.compile(r"(?:\b(?:A|Answer|Sum|Result|Total)\s*:|=)[ \t]*\Z", re.IGNORECASE)


def _sampling(body: dict[str, Any]) -> tuple[float, int | None]:
    temperature = body.get("temperature")
    temperature = 1.0 if temperature is None else float(temperature)
    seed = body.get("seed")
    return temperature, (seed if isinstance(seed, int) and not isinstance(seed, bool) else None)


def read_prompt(prompt: str, body: dict[str, Any], model: str) -> View:
    """The view of one completions prompt: the question is the last "What is A + B?" in the
    text (so a few-shot prompt is read for its final question); ValueError on bad sampling values."""
    temperature, seed = _sampling(body)
    lead = "" if not prompt or prompt[-1].isspace() else " "
    found = steps.find_chain(prompt)
    if found is not None and found[1] >= _last_question_start(prompt):
        chain, _, end = found
        return View(
            model=model, messages=[{"role": "user", "content": prompt}], question=None, json_mode=False,
            tool=None, temperature=temperature, seed=seed, critique=False, avoid=frozenset(),
            prompt_text=prompt.lower(), blocks=None, turns=0, chain=chain, written=prompt[end:], before=prompt,
        )
    return View(
        model=model, messages=[{"role": "user", "content": prompt}], question=parse_question(prompt),
        json_mode=False, tool=None, temperature=temperature, seed=seed, critique=False, avoid=frozenset(),
        prompt_text=prompt.lower(), blocks=None, turns=0, fewshot=bool(FEWSHOT_CUE.search(prompt)),
        lead=lead,
    )


def _last_question_start(text: str) -> int:
    start = -1
    for m in QUESTION_RE.finditer(text):
        start = m.start()
    return start


def _chat_chain(messages: list[dict[str, Any]]) -> steps.Chain | None:
    """The chain problem of the last user message that holds a problem, if it is a chain."""
    for m in reversed(messages):
        if m.get("role") == "user":
            text = content_text(m.get("content"))
            found = steps.find_chain(text)
            if found is not None and found[1] >= _last_question_start(text):
                return found[0]
            if parse_question(text) is not None:
                return None
    return None


def read_request(body: dict[str, Any], model: str) -> View:
    """Build the view of a chat request; ValueError on a malformed one."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise ValueError("'messages' must be a non-empty list of message objects")
    rf = body.get("response_format")
    json_mode = isinstance(rf, dict) and rf.get("type") in ("json_object", "json_schema")
    temperature, seed = _sampling(body)

    blocks = verifier.find_blocks(messages)
    question = find_question(messages, strip=verifier.BLOCK_RE if blocks else None)
    judged = verifier.chain_block(messages) if blocks is not None and question is None else None
    if blocks is not None and question is None:
        blocks = None

    critique, avoid, turns, seen_assistant = False, set(), 0, False
    texts = []
    for m in messages:
        role = m.get("role")
        if role == "assistant":
            seen_assistant = True
            turns += 1
            value = _final_answer(m)
            if value is not None:
                avoid.add(value)
        elif role in ("user", "system", "developer"):
            if role == "user" and seen_assistant:
                critique = True
            texts.append(content_text(m.get("content")))
    if blocks is not None:
        critique = False

    view = View(
        model=model, messages=messages, question=question, json_mode=json_mode,
        tool=_tool_to_call(body, messages), temperature=temperature, seed=seed,
        critique=critique, avoid=frozenset(avoid), prompt_text="\n".join(texts).lower(),
        blocks=blocks, turns=turns, judged=judged,
    )
    continuing = _continue_flag(body, messages)
    chain = _chat_chain(messages) if blocks is None and judged is None else None
    if chain is not None:
        prefix = content_text(messages[-1].get("content")) if continuing else ""
        view.question, view.chain, view.written, view.before, view.critique = None, chain, prefix, prefix, False
    return view


def _continue_flag(body: dict[str, Any], messages: list[dict[str, Any]]) -> bool:
    """vLLM's `continue_final_message`: the reply continues the final assistant message."""
    flag = body.get("continue_final_message", False)
    if not isinstance(flag, bool):
        raise ValueError("continue_final_message must be a boolean")
    if flag and messages[-1].get("role") != "assistant":
        raise ValueError("continue_final_message needs a final assistant message to continue")
    return flag


def _final_answer(message: dict[str, Any]) -> int | float | None:
    for call in message.get("tool_calls") or []:
        try:
            args = json.loads((call.get("function") or {}).get("arguments") or "{}")
            if isinstance(args, dict) and isinstance(args.get("answer"), int | float):
                return args["answer"]
        except (TypeError, ValueError):
            pass
    return last_number(content_text(message.get("content")))


def _tool_to_call(body: dict[str, Any], messages: list[dict[str, Any]]) -> str | None:
    tools = body.get("tools")
    choice = body.get("tool_choice", "auto")
    if not tools or choice == "none" or messages[-1].get("role") == "tool":
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if name:
            return name
    first = tools[0] if isinstance(tools[0], dict) else {}
    return (first.get("function") or {}).get("name") or first.get("name") or "tool"


@lru_cache(maxsize=65536)
def question_profile(seed: int, lo: float, hi: float, easy_share: float, a: int, b: int) -> tuple[float, int]:
    """(p of a correct sample, the common wrong answer) of one question."""
    r = random.Random(f"question|{seed}|{a}|{b}")
    easy_u, easy_p, hard_p = r.random(), r.uniform(0.90, 0.99), r.uniform(lo, hi)
    offset = r.randint(1, 10) * r.choice((-1, 1))
    return (easy_p if easy_u < easy_share else hard_p), a + b + offset


def answer_probability(cfg: SimConfig, view: View) -> tuple[float, int]:
    assert view.question is not None  # asked only about a question the simulator found
    a, b = view.question
    p, common = question_profile(cfg.seed, cfg.accuracy[0], cfg.accuracy[1], cfg.easy_share, a, b)
    for text, delta in cfg.boosts.items():
        if text and text.lower() in view.prompt_text:
            p += delta
    p = min(max(p, 0.0), 0.99)
    if view.critique:
        p = p + (1.0 - p) * cfg.critique_gain
    return p, common


def probability_of(cfg: SimConfig, view: View, x: int | float) -> float:
    """The model's probability of answering `x` to the view's question (for logprobs)."""
    assert view.question is not None, "a question view (chain problems have their own logprobs)"
    a, b = view.question
    p, common = answer_probability(cfg, view)
    if x == a + b:
        return p
    if x == common:
        return (1 - p) * cfg.common_wrong
    return (1 - p) * (1 - cfg.common_wrong) / 8


def choice_rng(cfg: SimConfig, view: View, index: int, stream: random.Random) -> random.Random:
    tag = f"{view.question}|{view.model}|{view.turns}"
    if view.chain is not None:
        tag += f"|{view.chain}|{view.written}"
    if view.blocks is not None:
        tag += "|" + ",".join(f"{b.id}={b.value}" for b in view.blocks)
    if view.temperature == 0:
        return random.Random(f"greedy|{cfg.seed}|{view.seed}|{tag}")
    if view.seed is not None:
        return random.Random(f"seeded|{cfg.seed}|{view.seed}|{index}|{tag}")
    return stream


def sample_answer(rng: random.Random, p: float, truth: int, common: int, common_share: float,
                  avoid: frozenset, greedy: bool) -> int:
    if greedy:
        if p >= 0.5 or common in avoid:
            return truth
        return common
    if rng.random() < p:
        return truth
    if rng.random() < common_share and common not in avoid:
        return common
    return near_wrong(rng, truth, avoid | {common})


def near_wrong(rng: random.Random, truth: int, avoid: frozenset) -> int:
    """A plausible wrong answer: off by a little, or by a carry (10, 100)."""
    for _ in range(32):
        kind = rng.random()
        if kind < 0.6:
            off = rng.randint(1, 9)
        elif kind < 0.85:
            off = 10 * rng.randint(1, 3)
        else:
            off = 100
        x = truth + off * rng.choice((-1, 1))
        if x != truth and x not in avoid:
            return x
    x = truth + 1000
    while x in avoid:
        x += 1
    return x


def reply_text(rng: random.Random, a: int, b: int, x: int, critique: bool) -> str:
    text = rng.choice(TEMPLATES).format(a=a, b=b, x=x, f=rng.choice(FILLERS))
    return (rng.choice(CRITIQUE_OPENERS) + text) if critique else text


def respond(cfg: SimConfig, view: View, n: int, stream: random.Random) -> list[Choice]:
    """Sample `n` independent replies to the request."""
    greedy = view.temperature == 0
    out: list[Choice] = []
    for i in range(n):
        rng = choice_rng(cfg, view, i, stream)
        if view.blocks is not None and view.question is not None:  # blocks are kept only with a question
            content, first_alt = verifier.judge(cfg, view.question, view.blocks, view.json_mode, rng)
            out.append(Choice(_text_message(content), "stop", rng, first_alt=first_alt))
        elif view.judged is not None:
            content, first_alt = verifier.judge_chain(cfg, *view.judged, view.json_mode, rng)
            out.append(Choice(_text_message(content), "stop", rng, first_alt=first_alt))
        elif view.chain is not None:
            out.append(_steps_choice(cfg, view, rng, greedy))
        elif view.question is None:
            content = json.dumps({"answer": None}) if view.json_mode else GENERIC_REPLY
            out.append(Choice(_text_message(content), "stop", rng))
        else:
            out.append(_answer(cfg, view, rng, greedy))
    return out


def _text_message(content: str) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def _answer(cfg: SimConfig, view: View, rng: random.Random, greedy: bool) -> Choice:
    assert view.question is not None
    a, b = view.question
    truth = a + b
    p, common = answer_probability(cfg, view)
    x = sample_answer(rng, p, truth, common, cfg.common_wrong, view.avoid, greedy)
    answer_p = probability_of(cfg, view, x)
    if view.tool is not None:
        args = json.dumps({"a": a, "b": b, "answer": x}, sort_keys=True, separators=(",", ":"))
        call = {"id": f"call_{rng.getrandbits(96):024x}", "type": "function",
                "function": {"name": view.tool, "arguments": args}}
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        return Choice(message, "tool_calls", rng, answer_p=answer_p)
    if view.fewshot:
        content = f"{x}\n"
    elif view.json_mode:
        content = json.dumps({"answer": x})
    else:
        content = reply_text(rng, a, b, x, view.critique)
    return Choice(_text_message(content), "stop", rng, answer_p=answer_p)


def _steps_choice(cfg: SimConfig, view: View, rng: random.Random, greedy: bool) -> Choice:
    assert view.chain is not None
    written = steps.write(view.chain, view.written, view.before, rng, cfg.step_accuracy, cfg.step_signal, greedy)
    return Choice(_text_message(written.text), "stop", rng, spans=written.spans)
