"""The `reward` stage (learned verifier) through the proxy: the simulator's /reward, /classify and
/pooling endpoints, a generative verifier, and endpoints that fail in every way we could think of."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from statistics import mean

import pytest

from conftest import send_json, sim_models
from itsproxy.proxy.config import parse_config
from itsproxy.strategies.stages.reward import RewardStage, logistic, normalise
from itsproxy.strategies.types import SpecError

PATH = "routes[0].select[1].reward"
Q = "What is 305 + 218?"
HARD, TRUTH = "What is 977 + 868?", "1845"  # a question the simulator often gets wrong


def route(select, n=4, name="r"):
    return {"name": name, "match": {"model": name}, "generate": {"model": "sim", "n": n, "temperature": 0.8},
            "select": select}


def ask(client, model="r", q=Q, seed=None):
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": q}], seed=seed)
    return r, r.model_extra["its"]


def with_vote(reward, weight="score"):
    return [{"reward": reward}, {"vote": {"extract": "number", "weight": weight}}]


# ---------------------------------------------------------------- config and pure parts


@pytest.mark.parametrize("spec, key", [
    ({}, "url"),
    ({"url": "ftp://x/reward"}, "url"),
    ({"url": "http://x/reward", "api": "openai"}, "api"),
    ({"url": "http://x/reward", "timeout_s": 0}, "timeout_s"),
    ({"url": "http://x/reward", "label": "correct"}, "label"),
    ({"url": "http://x/classify", "api": "vllm_classify", "label": -1}, "label"),
    ({"url": "http://x/reward", "normalize": "softmax"}, "normalize"),
    ({"url": "http://x/reward", "model": 3}, "model"),
    ({"url": "http://x/reward", "extra": 1}, "extra"),
    ({"generative": {"model": "sim"}, "url": "http://x/reward"}, "url"),
    ({"generative": {}}, "generative.model"),
    ({"generative": {"model": "sim", "temperature": -1}}, "generative.temperature"),
])
def test_bad_specs_name_the_key(spec, key):
    with pytest.raises(SpecError) as err:
        RewardStage.build(spec, PATH)
    assert err.value.path == f"{PATH}.{key}"


def test_models_only_for_the_generative_form():
    assert RewardStage.build({"url": "http://x/reward"}, PATH).models == []
    stage = RewardStage.build({"generative": {"model": "sim"}}, PATH)
    assert stage.models == ["sim"] and stage.model_path == f"{PATH}.generative.model"


def test_normalisation_keeps_probabilities_and_squashes_raw_scores():
    assert normalise([0.2, 0.9], "auto") == [0.2, 0.9]
    assert normalise([-2.0, 0.5], "auto") == [logistic(-2.0), logistic(0.5)]
    assert normalise([0.2], "logistic") == [logistic(0.2)] and normalise([1.7], "none") == [1.0]
    assert logistic(-1000) == 0.0 and logistic(1000) == 1.0  # no overflow


# ---------------------------------------------------------------- the simulator's endpoints


def mixed(p):
    """A response whose candidates hold both right and wrong answers, and their reward scores."""
    for seed in range(10):
        r, its = ask(p.client, q=HARD, seed=seed)
        right = [e["scores"]["reward"] for e in its["evidence"] if e["answer"] == TRUTH]
        wrong = [e["scores"]["reward"] for e in its["evidence"] if e["answer"] != TRUTH]
        if right and wrong:
            return r, its, right, wrong
    raise AssertionError("no seed gave both right and wrong candidates")


def test_generic_reward_scores_every_candidate_and_weights_the_vote(make_proxy, fresh_sim):
    p = make_proxy({"routes": [route(with_vote({"url": f"{fresh_sim.url}/reward"}), n=6)]}, fresh_sim)
    r, its = ask(p.client, seed=2)
    stats = p.sim_stats()
    ev = its["evidence"]
    expected: dict[str, float] = {}
    for e in ev:
        assert 0 <= e["scores"]["reward"] <= 1 and e["scores"]["score"] == e["scores"]["reward"]
        expected[e["answer"]] = expected.get(e["answer"], 0.0) + e["scores"]["score"]
    assert its["votes"] == pytest.approx(expected, abs=1e-5)
    assert ev[its["selected"]]["answer"] == max(expected, key=expected.get)
    assert stats["reward_requests"] == 1  # one batched call for all candidates
    assert its["usage"]["by_phase"]["reward"]["total_tokens"] == 0  # the generic contract reports no usage
    assert its["usage"]["calls"] == 2 and its["usage"]["calls_by_outcome"] == {"ok": 2}
    assert r.usage.total_tokens == stats["total_tokens"]


@pytest.mark.parametrize("label", ["correct", 1, None])
def test_vllm_classify(make_proxy, sim, label):
    spec = {"url": f"{sim.url}/classify", "api": "vllm_classify", "model": "rm"}
    if label is not None:
        spec["label"] = label
    p = make_proxy({"routes": [route(with_vote(spec, weight="reward"), n=5)]}, sim)
    r, its, right, wrong = mixed(p)
    assert mean(right) > mean(wrong) + 0.2  # P(correct) from probs[index of "correct"]
    reward = its["usage"]["by_phase"]["reward"]
    assert reward["prompt_tokens"] > 0 and reward["completion_tokens"] == 0  # vLLM's usage, recorded
    assert its["usage"]["cost_usd"] is None  # a priced-unknown call spent tokens: never silently zero
    gen = its["usage"]["by_phase"]["generate"]["total_tokens"]
    assert r.usage.total_tokens == gen + reward["total_tokens"]


def test_vllm_pooling(make_proxy, sim):
    spec = {"url": f"{sim.url}/v1/pooling", "api": "vllm_pooling", "model": "rm"}
    p = make_proxy({"routes": [route(with_vote(spec, weight="reward"), n=5)]}, sim)
    _, its, right, wrong = mixed(p)
    assert mean(right) > mean(wrong) + 0.2
    assert its["usage"]["by_phase"]["reward"]["prompt_tokens"] > 0


def test_generative_reward_uses_yes_probability(make_proxy, sim):
    p = make_proxy({"routes": [route([{"reward": {"generative": {"model": "sim"}}}], n=3)]}, sim)
    r, its = ask(p.client)
    assert all(0 < e["scores"]["reward"] < 1 for e in its["evidence"])
    assert its["reasons"] == ["highest score"]
    assert its["usage"]["by_phase"]["reward"]["completion_tokens"] > 0  # chat calls, metered as phase reward
    assert "judge" not in its["usage"]["by_phase"]


def test_endpoint_client_is_closed_with_the_upstream(make_proxy, sim):
    from itsproxy.proxy.upstream.pool import Upstream

    cfg = parse_config({"model_list": sim_models(sim.url), "routes": [route([{"reward": {"url": f"{sim.url}/reward"}}])]})
    up = Upstream(cfg)

    async def use():
        up.endpoints.client()
        await up.aclose()
        await up.endpoints.aclose()  # twice is fine

    asyncio.run(use())
    assert up.endpoints._client is None


# ---------------------------------------------------------------- failures: notes, never crashes


class _BadEndpoint(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path == "/slow":
            time.sleep(1.0)
        body = {"/short": b'{"scores": [0.5]}', "/garbage": b"<html>nope</html>", "/nan": b'{"scores": [NaN]}',
                "/list": b"[1, 2]", "/slow": b'{"scores": []}', "/500": b'{"error": "boom"}',
                "/weird": b'{"object": "list", "data": [{"index": "x", "probs": "no"}]}'}[self.path]
        send_json(self, 500 if self.path == "/500" else 200, body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def bad_endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BadEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("where, api, note, errors", [
    ("closed", "generic", "reward: endpoint failed (ConnectError)", 1),
    ("/slow", "generic", "reward: endpoint timed out after 0.3s", 1),
    ("/500", "generic", "reward: endpoint answered HTTP 500", 1),
    ("/garbage", "generic", "reward: endpoint failed (JSONDecodeError)", 1),
    ("/list", "generic", "reward: reply is not a JSON object", 1),
    # the call itself worked (outcome ok), its content is unusable
    ("/short", "generic", "reward: 1 scores for 3 candidates", 0),
    ("/nan", "generic", "reward: non-numeric score nan", 0),
    ("/short", "vllm_classify", "reward: reply has no `data` list", 0),
    ("/weird", "vllm_classify", "reward: reply has no `probs`", 0),
    ("/weird", "vllm_pooling", "reward: non-numeric score None", 0),
])
def test_endpoint_failures_are_notes_on_every_candidate(make_proxy, sim, bad_endpoint, where, api, note, errors):
    url = f"http://127.0.0.1:{closed_port()}/reward" if where == "closed" else bad_endpoint + where
    p = make_proxy({"routes": [route(with_vote({"url": url, "api": api, "timeout_s": 0.3}), n=3)]}, sim)
    r, its = ask(p.client)
    assert r.choices[0].message.content
    for e in its["evidence"]:
        assert "reward" not in e.get("scores", {}) and "score" not in e.get("scores", {})
        assert e["notes"] == [note]
    assert its["usage"]["calls_by_outcome"].get("error", 0) == errors
    assert sum(its["votes"].values()) == 0  # nobody carries weight without a score


def test_reward_failure_does_not_inherit_an_earlier_score(make_proxy, sim):
    select = [{"judge": {"model": "sim"}}, {"reward": {"url": f"http://127.0.0.1:{closed_port()}/reward"}}]
    p = make_proxy({"routes": [route(select, n=3)]}, sim)
    _, its = ask(p.client)
    for e in its["evidence"]:
        assert "judge" in e["scores"] and "score" not in e["scores"]  # the judge's verdict stays on record
    assert json.dumps(its)  # evidence is plain JSON
