"""The simulator's legacy Completions and Embeddings surfaces, through the openai SDK."""

from __future__ import annotations

import math

import httpx
import openai
import pytest
import tiktoken

from itsproxy.proxy.metering import tokens
from itsproxy.proxy.simulator.questions import last_number
from sim_helpers import QS, client, fresh, http, sim  # noqa: F401 - fixtures

FEWSHOT = "Q: What is 2 + 3?\nA: 5\n\nQ: What is 17 + 25?\nA:"
SURE = "sim@acc=0.99,0.99"


# ---------------------------------------------------------------- completions


def test_fewshot_prompt_answers_the_last_question_briefly(client):
    r = client.completions.create(model=SURE, prompt=FEWSHOT, temperature=0)
    assert r.object == "text_completion"
    assert (r.choices[0].text, r.choices[0].finish_reason) == (" 42\n", "stop")
    spaced = client.completions.create(model=SURE, prompt=FEWSHOT + " ", temperature=0, stop=["\n"])
    assert spaced.choices[0].text == "42"
    chatty = client.completions.create(model=SURE, prompt="What is 17 + 25?", temperature=0)
    text = chatty.choices[0].text
    assert text.startswith(" ") and text.endswith("The answer is 42.")


def test_prompt_list_n_indices_and_usage(fresh):
    c = openai.OpenAI(base_url=fresh.base_url, api_key="x", max_retries=0)
    prompts = [f"Q: {QS[0][0]}\nA:", f"Q: {QS[1][0]}\nA:"]
    r = c.completions.create(model=SURE, prompt=prompts, n=3, seed=4)
    assert [ch.index for ch in r.choices] == list(range(6))
    for ch in r.choices:
        assert last_number(ch.text) == QS[ch.index // 3][1]
    prompt_tokens = sum(tokens.count_text(p) for p in prompts)
    completion_tokens = sum(tokens.count_text(ch.text) for ch in r.choices)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (prompt_tokens, completion_tokens)
    s = httpx.get(f"{fresh.url}/stats").json()
    assert (s["requests"], s["choices"], s["prompt_tokens"], s["completion_tokens"]) == (
        1, 6, prompt_tokens, completion_tokens)


def test_same_seed_same_completions_and_token_id_prompts(client):
    a = client.completions.create(model="sim", prompt=QS[2][0], n=3, seed=5)
    b = client.completions.create(model="sim", prompt=QS[2][0], n=3, seed=5)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    tokens.warm()
    ids = tiktoken.get_encoding(tokens.ENCODING).encode(f"Q: {QS[2][0]}\nA:")
    by_ids = client.completions.create(model=SURE, prompt=ids, temperature=0)
    assert by_ids.choices[0].text == f" {QS[2][1]}\n" and by_ids.usage.prompt_tokens == len(ids)
    two = client.completions.create(model=SURE, prompt=[ids, ids[:3]], temperature=0)
    assert len(two.choices) == 2 and two.usage.prompt_tokens == len(ids) + 3


def test_stop_and_max_tokens(client):
    r = client.completions.create(model=SURE, prompt=FEWSHOT, temperature=0, stop="\n")
    assert (r.choices[0].text, r.choices[0].finish_reason) == (" 42", "stop")
    r = client.completions.create(model="sim", prompt=QS[3][0], max_tokens=2, seed=1)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 2
    assert tokens.count_text(r.choices[0].text) == 2


def test_best_of_returns_the_most_confident_and_bills_every_draw(client):
    def right(**kw) -> int:
        hits = 0
        for i, (q, truth) in enumerate(QS[:60]):
            r = client.completions.create(model="sim@acc=0.5,0.5", prompt=f"Q: {q}\nA:", seed=i, **kw)
            hits += last_number(r.choices[0].text) == truth
        return hits

    plain, best = right(), right(best_of=6)
    assert best >= plain + 15  # the answer's logprob is the model's probability of it
    r = client.completions.create(model="sim", prompt=QS[4][0], n=2, best_of=5, seed=1)
    assert len(r.choices) == 2
    assert r.usage.completion_tokens > sum(tokens.count_text(c.text) for c in r.choices)
    with pytest.raises(openai.BadRequestError, match="best_of"):
        client.completions.create(model="sim", prompt="x", n=3, best_of=2)
    with pytest.raises(openai.BadRequestError, match="stream"):
        client.completions.create(model="sim", prompt="x", best_of=3, stream=True)


def test_echo_with_logprobs_scores_a_candidate_answer(client):
    q, truth = QS[5]

    def score(answer: int) -> tuple[float, object]:
        prompt = f"Q: {q}\nA: {answer}"
        r = client.completions.create(model="sim", prompt=prompt, echo=True, max_tokens=0, logprobs=1)
        ch = r.choices[0]
        assert ch.text == prompt and ch.finish_reason == "length" and r.usage.completion_tokens == 0
        lp = ch.logprobs
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        assert "".join(lp.tokens) == prompt
        assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
        start = prompt.rindex("A: ") + 3
        return sum(x for x, o in zip(lp.token_logprobs, lp.text_offset) if o >= start), lp

    right, lp = score(truth)
    assert right > score(truth + 7)[0]
    assert all(len(top) == 1 for top in lp.top_logprobs[1:])


def test_logprobs_format(client):
    r = client.completions.create(model="sim", prompt=QS[6][0], logprobs=3, seed=2)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text
    assert all(x <= 0 for x in lp.token_logprobs)
    assert all(len(top) == 3 and top[t] == x for top, t, x in zip(lp.top_logprobs, lp.tokens, lp.token_logprobs))


def test_stream_matches_the_plain_answer(client):
    kw = {"model": "sim", "prompt": [QS[7][0], f"Q: {QS[8][0]}\nA:"], "n": 2, "seed": 3, "logprobs": 2}
    plain = client.completions.create(**kw)
    texts, finish, usage, offsets = {}, {}, None, {}
    for chunk in client.completions.create(**kw, stream=True, echo=True,
                                           stream_options={"include_usage": True}):
        assert chunk.object == "text_completion"
        if chunk.usage is not None:
            assert chunk.choices == []
            usage = chunk.usage
        for ch in chunk.choices:
            texts[ch.index] = texts.get(ch.index, "") + ch.text
            if ch.logprobs is not None:
                assert "".join(ch.logprobs.tokens) == ch.text
                offsets.setdefault(ch.index, []).extend(ch.logprobs.text_offset)
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
    prompts = [kw["prompt"][i // 2] for i in range(4)]
    assert [texts[i] for i in range(4)] == [p + c.text for p, c in zip(prompts, plain.choices)]
    assert finish == {i: "stop" for i in range(4)}
    assert offsets[0] == sorted(offsets[0]) and offsets[0][0] == 0
    assert (usage.prompt_tokens, usage.completion_tokens) == (plain.usage.prompt_tokens,
                                                               plain.usage.completion_tokens)


def test_completions_model_options_and_errors(client, http):
    with pytest.raises(openai.BadRequestError, match="n > 1"):
        client.completions.create(model="sim@no_n", prompt="x", n=2)
    assert len(client.completions.create(model="sim@max_n=2", prompt="x", n=5).choices) == 2
    with pytest.raises(openai.InternalServerError):
        client.completions.create(model="sim@fail_rate=1", prompt="x")
    r = http.post("/completions", json={"model": "sim@no_usage", "prompt": "x"})
    assert r.status_code == 200 and "usage" not in r.json()
    for bad in ({"prompt": None}, {"prompt": []}, {"prompt": [1, "a"]}, {"prompt": "x", "logprobs": 6},
                {"prompt": "x", "stop": 3}, {"prompt": "x", "echo": "yes"}, {"prompt": "x", "suffix": 1},
                {"prompt": "x", "max_tokens": -1}, {"prompt": [10**9]}):
        r = http.post("/v1/completions", json={"model": "sim", **bad})
        assert r.status_code == 400, bad
        assert r.json()["error"]["type"] == "invalid_request_error"
    assert http.post("/v1/completions", json={"model": "sim", "prompt": "x", "suffix": "!"}).status_code == 200


# ---------------------------------------------------------------- embeddings


def test_embeddings_are_deterministic_unit_vectors(client, http):
    r = client.embeddings.create(model="sim", input=["hello", "world", "hello"])  # the SDK asks base64
    vs = [d.embedding for d in r.data]
    assert [d.index for d in r.data] == [0, 1, 2] and len(vs[0]) == 1536
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-5 for v in vs)
    assert vs[0] == vs[2] and vs[0] != vs[1]
    assert r.usage.prompt_tokens == r.usage.total_tokens == 3
    plain = http.post("/v1/embeddings", json={"model": "sim", "input": "hello", "encoding_format": "float"}).json()
    assert all(abs(a - b) < 1e-6 for a, b in zip(plain["data"][0]["embedding"], vs[0]))
    short = client.embeddings.create(model="sim", input="hello", dimensions=8).data[0].embedding
    norm = math.sqrt(sum(x * x for x in vs[0][:8]))
    assert all(abs(a - b / norm) < 1e-5 for a, b in zip(short, vs[0][:8]))
    ids = client.embeddings.create(model="sim", input=[[1, 2, 3], [4, 5]], dimensions=4)
    assert len(ids.data) == 2 and ids.usage.prompt_tokens == 5


def test_embeddings_billing_options_and_errors(fresh):
    with httpx.Client(base_url=fresh.url) as http:
        ok = http.post("/embeddings", json={"model": "sim", "input": ["a b c", "d"], "dimensions": 2})
        assert ok.status_code == 200
        s = http.get("/stats").json()
        assert (s["requests"], s["prompt_tokens"], s["completion_tokens"]) == (1, ok.json()["usage"]["prompt_tokens"], 0)
        assert http.post("/v1/embeddings", json={"model": "sim@fail_rate=1", "input": "a"}).status_code == 500
        assert "usage" not in http.post("/v1/embeddings", json={"model": "sim@no_usage", "input": "a"}).json()
        for bad in ({"input": ""}, {"input": []}, {"input": [1, "a"]}, {"input": "a", "dimensions": 0},
                    {"input": "a", "encoding_format": "int8"}, {"input": {"a": 1}}):
            r = http.post("/v1/embeddings", json={"model": "sim", **bad})
            assert r.status_code == 400, bad
        assert http.post("/v1/responses", json={"model": "sim", "input": "hi"}).status_code == 404
