"""The simulator's step-wise mode: chain problems, per-step errors that propagate, logprob
confidence that carries (or not) signal about each step, and continuation of partial chains."""

from __future__ import annotations

import re

import openai
import pytest

from itsproxy.proxy.simulator.steps import STEP_RE, chains, find_chain
from sim_helpers import client, http, sim, user  # noqa: F401 - fixtures

CHAINS = chains(5, 40)
Q7 = "Start at 7, add 5, multiply by 3, subtract 4. What is the result?"
APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def parse_steps(text: str) -> tuple[list[tuple[int, str, int, int]], int]:
    """The steps as (a, op, b, r) and the final answer."""
    lines = text.strip().split("\n")
    found = [STEP_RE.fullmatch(line) for line in lines[:-1]]
    assert all(found), text
    final = re.fullmatch(r"The answer is (-?\d+)\.", lines[-1])
    assert final, text
    return [(int(m[2]), m[3], int(m[4]), int(m[5])) for m in found], int(final[1])


def test_chain_questions_and_the_wire_format_of_steps(client):
    q, truth = CHAINS[0]
    chain, _, _ = find_chain(q)
    assert chain.truth() == truth and len(chain.ops) == 4
    r = client.chat.completions.create(model="sim@step_accuracy=1", messages=user(q), seed=1)
    steps, answer = parse_steps(r.choices[0].message.content)
    assert answer == truth and len(steps) == 4
    assert [(op, b) for _, op, b, _ in steps] == list(chain.ops)
    assert steps[0][0] == chain.start and all(APPLY[op](a, b) == res for a, op, b, res in steps)


def test_errors_propagate_to_later_steps_and_the_answer(client):
    one_wrong = 0
    for i, (q, truth) in enumerate(CHAINS):
        r = client.chat.completions.create(model="sim@step_accuracy=0.8", messages=user(q), n=4, seed=i)
        for ch in r.choices:
            steps, answer = parse_steps(ch.message.content)
            start = find_chain(q)[0].start
            assert [a for a, _, _, _ in steps] == [start] + [res for _, _, _, res in steps[:-1]]
            assert answer == steps[-1][3]
            wrong = sum(APPLY[op](a, b) != res for a, op, b, res in steps)
            if wrong == 1:
                one_wrong += 1
                assert answer != truth
            if wrong == 0:
                assert answer == truth
    assert one_wrong > 20


def step_scores(client, model: str) -> tuple[list[float], list[float]]:
    """Logprobs of the result tokens of right and of wrong steps."""
    right, wrong = [], []
    for i, (q, _) in enumerate(CHAINS[:25]):
        r = client.chat.completions.create(model=model, messages=user(q), n=4, seed=i, logprobs=True)
        for ch in r.choices:
            content = ch.message.content
            offsets, pos = [], 0
            for t in ch.logprobs.content:
                if any(d.isdigit() for d in t.token):
                    offsets.append((pos, pos + len(t.token), t.logprob))
                pos += len(t.token)
            line_start = 0
            for line in content.split("\n")[:-1]:
                m = STEP_RE.fullmatch(line)
                a, op, b, res = int(m[2]), m[3], int(m[4]), int(m[5])
                lo, hi = line_start + m.start(5), line_start + m.end(5)
                lp = [x for s, e, x in offsets if s < hi and e > lo][0]
                (right if APPLY[op](a, b) == res else wrong).append(lp)
                line_start += len(line) + 1
    return right, wrong


def auc(right: list[float], wrong: list[float]) -> float:
    return sum((r > w) + 0.5 * (r == w) for r in right for w in wrong) / (len(right) * len(wrong))


def test_step_logprobs_carry_the_configured_signal(client):
    strong = auc(*step_scores(client, "sim@step_accuracy=0.7@step_signal=1"))
    none = auc(*step_scores(client, "sim@step_accuracy=0.7@step_signal=0"))
    assert strong == 1.0
    assert abs(none - 0.5) < 0.12
    mid = auc(*step_scores(client, "sim@step_accuracy=0.7@step_signal=0.5"))
    assert 0.75 < mid < 1.0


def test_completions_continue_a_partial_chain(client):
    prompt = Q7 + "\nStep 1: 7 + 5 = 13\nStep 2:"  # a wrong first step, given
    r = client.completions.create(model="sim@step_accuracy=1", prompt=prompt, temperature=0)
    assert r.choices[0].text == " 13 * 3 = 39\nStep 3: 39 - 4 = 35\nThe answer is 35."
    r = client.completions.create(model="sim@step_accuracy=1", prompt=Q7 + "\nStep 1: 7 + 5 = 12", temperature=0)
    assert r.choices[0].text == "\nStep 2: 12 * 3 = 36\nStep 3: 36 - 4 = 32\nThe answer is 32."
    fresh = client.completions.create(model="sim@step_accuracy=1", prompt="Q: " + Q7 + "\nA:", temperature=0)
    assert fresh.choices[0].text == "\nStep 1: 7 + 5 = 12\nStep 2: 12 * 3 = 36\nStep 3: 36 - 4 = 32\nThe answer is 32."


def test_chat_continues_the_final_assistant_message(client, http):
    msgs = user(Q7) + [{"role": "assistant", "content": "Step 1: 7 + 5 = 13\nStep 2: 13 * 3 = 39\n"}]
    r = client.chat.completions.create(model="sim@step_accuracy=1", messages=msgs, temperature=0,
                                       extra_body={"continue_final_message": True, "add_generation_prompt": False})
    assert r.choices[0].message.content == "Step 3: 39 - 4 = 35\nThe answer is 35."
    again = client.chat.completions.create(model="sim@step_accuracy=1", messages=msgs, temperature=0)
    assert again.choices[0].message.content.startswith("Step 1: 7 + 5 = 12\n")  # a new reply
    with pytest.raises(openai.BadRequestError, match="continue_final_message"):
        client.chat.completions.create(model="sim", messages=user(Q7), extra_body={"continue_final_message": True})
    seeded = [client.completions.create(model="sim@step_accuracy=0.5", prompt=Q7 + "\n", seed=3).choices[0].text
              for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_arithmetic_questions_are_unchanged_beside_chains(http):
    msgs = user(Q7) + [{"role": "assistant", "content": "32"}, {"role": "user", "content": "What is 2 + 3?"}]
    r = http.post("/v1/chat/completions", json={"model": "sim@acc=0.99,0.99", "messages": msgs, "temperature": 0})
    assert r.json()["choices"][0]["message"]["content"].endswith("The answer is 5.")
