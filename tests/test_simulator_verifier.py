"""The simulator as a judge, a reward model, and a model that listens to prompts and critiques."""

from __future__ import annotations

import json

from sim_helpers import QS, accuracy, answers, chat, http, sim, user  # noqa: F401 - fixtures

# ---------------------------------------------------------------- verifier behaviour


def judge_prompt(q: str, candidate: str) -> list[dict]:
    return user(f"Question: {q}\nCandidate:\n<answer>{candidate}</answer>\nIs it correct? Reply Yes or No.")


def test_pointwise_judge_rates(http):
    said_yes = {True: 0, False: 0}
    for i, (q, truth) in enumerate(QS[:150]):
        for correct in (True, False):
            value = truth if correct else truth + 3
            resp = chat(http, messages=judge_prompt(q, f"The answer is {value}."), seed=i)
            word = resp["choices"][0]["message"]["content"]
            assert word in ("Yes", "No")
            said_yes[correct] += word == "Yes"
    assert abs(said_yes[True] / 150 - 0.8) < 0.1
    assert abs(said_yes[False] / 150 - 0.2) < 0.1


def test_pointwise_judge_formats(http):
    q, truth = QS[8]
    resp = chat(http, messages=judge_prompt(q, str(truth)), logprobs=True, top_logprobs=5,
                model="sim@judge_tpr=1")
    c = resp["choices"][0]
    assert c["message"]["content"] == "Yes"
    top = {t["token"]: t["logprob"] for t in c["logprobs"]["content"][0]["top_logprobs"]}
    assert {"Yes", "No"} <= set(top) and top["Yes"] > top["No"]
    resp = chat(http, messages=judge_prompt(q, str(truth + 1)), n=8, seed=2,
                response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": {}}})
    for c in resp["choices"]:
        verdict = json.loads(c["message"]["content"])
        assert 0 <= verdict["score"] <= 10 and isinstance(verdict["reason"], str)
    garbage = chat(http, model="sim@judge_garbage=1", messages=judge_prompt(q, str(truth)))
    assert garbage["choices"][0]["message"]["content"] == "I am not sure."


def test_pairwise_and_universal(http):
    q, truth = QS[9]
    pair = user(f"{q}\n<answer id=\"A\">{truth + 2}</answer>\n<answer id=\"B\">{truth}</answer>\nWhich is right?")
    wins = [chat(http, messages=pair, seed=i)["choices"][0]["message"]["content"] for i in range(40)]
    assert set(wins) <= {"A", "B"} and wins.count("B") > 25
    resp = chat(http, messages=pair, response_format={"type": "json_object"})
    assert json.loads(resp["choices"][0]["message"]["content"])["winner"] in ("A", "B")
    blocks = "".join(f'<answer id="{i}">{v}</answer>\n' for i, v in
                     enumerate([truth + 1, truth, truth + 1, truth + 1, truth + 5]))
    usc = user(f"{q}\nPick the most consistent response.\n{blocks}")
    picks = [chat(http, messages=usc, seed=i)["choices"][0]["message"]["content"] for i in range(40)]
    assert set(picks) <= {"0", "1", "2", "3", "4"}
    assert sum(p in ("0", "2", "3") for p in picks) > 28
    resp = chat(http, messages=usc, response_format={"type": "json_object"})
    assert json.loads(resp["choices"][0]["message"]["content"])["best"] in "01234"


def test_reward_endpoints(http):
    q, truth = QS[10]
    right, wrong = f"The answer is {truth}.", f"The answer is {truth - 7}."
    cands = [f"Try {i}: {text}" for i in range(20) for text in (right, wrong)]
    scores = http.post("/reward", json={"prompt": q, "candidates": cands}).json()["scores"]
    assert sum(scores[0::2]) / 20 > 0.8 and sum(scores[1::2]) / 20 < 0.2
    scores = http.post("/reward", json={"prompt": q, "candidates": [right, right]}).json()["scores"]
    assert scores[0] == scores[1]  # a deterministic scorer: same candidate, same score
    msgs = http.post("/reward", json={"prompt": user(q), "candidates": [right]}).json()["scores"]
    assert msgs == scores[:1]
    inputs = [f"{q} {right}", f"{q} {wrong}"]
    data = http.post("/classify", json={"model": "rm", "input": inputs}).json()
    assert data["object"] == "list" and data["usage"]["prompt_tokens"] > 0
    assert [d["num_classes"] for d in data["data"]] == [2, 2]
    assert data["data"][0]["probs"][1] > data["data"][1]["probs"][1]
    pooled = http.post("/pooling", json={"model": "rm", "input": inputs}).json()["data"]
    assert [p["object"] for p in pooled] == ["pooling", "pooling"]
    assert pooled[0]["data"][0] == data["data"][0]["probs"][1]
    assert http.get("/stats").json()["reward_requests"] >= 4


# ---------------------------------------------------------------- prompt effects


def test_boosts_raise_accuracy(http):
    qs = QS[:150]
    base = accuracy(http, qs=qs)
    boosted = accuracy(http, system="Let's think step by step.", qs=qs)
    assert boosted >= base + 0.07


def test_critique_raises_accuracy_and_avoids_earlier_answer(http):
    better = total = 0
    for i, (q, truth) in enumerate(QS[:60]):
        wrong = truth + 4
        msgs = user(q) + [{"role": "assistant", "content": f"The answer is {wrong}."},
                          {"role": "user", "content": "That looks wrong. Check your addition and answer again."}]
        resp = chat(http, messages=msgs, n=4, seed=i, model="sim@acc=0.3,0.3")
        got = answers(resp)
        assert wrong not in got
        better += sum(a == truth for a in got)
        total += len(got)
    assert better / total > 0.75  # 0.3 + 0.7 * 0.8 = 0.86
