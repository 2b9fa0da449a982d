"""Real routes on a real model: gemma-3-270m under llama.cpp, through the proxy.

These assert behaviour and honest metering (the proxy's `usage` is what llama.cpp
reported, summed over every call, or is flagged `estimated` where it reported nothing),
never exact accuracies. They skip only when the model stack is not installed
(.ci/install_model.sh installs it).
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from itsproxy.proxy.cli import main
from itsproxy.proxy.eval.capitals import check
from itsproxy.proxy.eval.datasets.make_capitals import PARAMS, prompt
from itsproxy.proxy.eval.direct import main as direct_main
from tests.llama_helpers import MODEL_NAME, Relay, llama, llama_models, relay  # noqa: F401  (fixtures)

CHAT = [{"role": "user", "content": "Q: What is the capital of Japan?\nA: Tokyo\nQ: What is the capital of Peru?\nA:"}]
PLACES = ("Kenya", "Peru", "Norway", "Egypt", "Vermont", "Nunavut")
CHECKER = "itsproxy.proxy.eval.capitals:check"


@pytest.fixture(scope="module")
def direct(llama):  # noqa: F811
    with httpx.Client(base_url=llama.base_url, timeout=120) as client:
        yield client


@pytest.fixture
def real_proxy(make_proxy, llama, relay):  # noqa: F811
    """A proxy whose upstream calls pass through `relay`, which keeps what llama.cpp answered."""
    def start(*routes):
        passthrough = {"name": "pass", "match": {"model": "*"}, "generate": {"model": MODEL_NAME},
                       "passthrough": True}
        return make_proxy({"model_list": llama_models(relay.base_url), "routes": [*routes, passthrough]}, llama)

    return start


def reported_total(relay: Relay) -> dict[str, int]:
    """llama.cpp's own usage figures, summed over every call the proxy made."""
    usages = relay.reported_usage()
    assert usages and all(u is not None for u in usages)
    return {k: sum(u[k] for u in usages) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def client_of(proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.handle.base_url, api_key="none", max_retries=0, timeout=300)


def scaling(name: str, n: int, select: list, **extra) -> dict:
    return {"name": name, "match": {"model": name}, "generate": {"model": MODEL_NAME, "n": n, "temperature": 1.0},
            "select": select, "limits": {"max_n": 16, "timeout_s": 240}, **extra}


# ---------------------------------------------------------------- passthrough chat (works today)


def test_passthrough_chat_meters_what_llama_reported(real_proxy, relay):
    proxy = real_proxy()
    r = client_of(proxy).chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=12, temperature=0,
                                                 seed=3)
    its = r.model_extra["its"]
    reported = reported_total(relay)
    assert len(relay.responses) == 1
    assert r.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == reported
    assert its["usage"]["total"] == reported
    assert its["usage"]["estimated"] is False and its["usage"]["calls"] == 1
    assert its["usage"]["cost_usd"] == pytest.approx(reported["prompt_tokens"] * 1e-7
                                                     + reported["completion_tokens"] * 2e-7)


def test_passthrough_chat_stream_flags_its_estimate(real_proxy, relay):
    """llama.cpp streams no usage, even when asked: the proxy counts itself and says so."""
    proxy = real_proxy()
    chunks = list(client_of(proxy).chat.completions.create(
        model=MODEL_NAME, messages=CHAT, max_tokens=12, temperature=0, seed=3, stream=True,
        stream_options={"include_usage": True}))
    assert relay.reported_usage() == [None]  # the fact this test is about
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    upstream_text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                            for line in relay.responses[0].splitlines() if line.startswith(b"data: {"))
    assert text == upstream_text  # relayed as is
    its = next(c.model_extra["its"] for c in chunks if (c.model_extra or {}).get("its"))
    assert its["usage"]["estimated"] is True
    assert its["usage"]["total"]["prompt_tokens"] > 0
    assert its["usage"]["total"]["completion_tokens"] > 0


def test_passthrough_chat_stream_gives_the_usage_asked_for(real_proxy, relay):
    proxy = real_proxy()
    chunks = list(client_of(proxy).chat.completions.create(
        model=MODEL_NAME, messages=CHAT, max_tokens=12, temperature=0, seed=3, stream=True,
        stream_options={"include_usage": True}))
    its = next(c.model_extra["its"] for c in chunks if (c.model_extra or {}).get("its"))
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1  # the client asked for usage: it gets one, the proxy's (estimated) count
    assert usage[0].total_tokens == its["usage"]["total"]["total_tokens"]


def test_eval_sends_completion_prompts_to_a_real_server(llama, tmp_path, capsys):  # noqa: F811
    """`itsproxy eval` on the capitals dataset straight at llama.cpp (no proxy: no `its`), graded by the
    sound checker; the same questions graded by the references agree with it."""
    out = tmp_path / "o"
    args = ["eval", "--no-progress", "--base-url", llama.base_url, "--dataset", "capitals", "--routes", MODEL_NAME,
            "--limit", "6", "--concurrency", "1", "--seed", "1"]
    assert main([*args, "--out", str(out), "--check", CHECKER]) == 0
    assert main([*args, "--out", str(tmp_path / "refs")]) == 0
    capsys.readouterr()
    by_checker = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    by_refs = {r["id"]: r for r in map(json.loads, (tmp_path / "refs" / "results.jsonl").read_text().splitlines())}
    assert len(by_checker) == 6 and all(r["error"] is None and r["completion_tokens"] > 0 for r in by_checker)
    for r in by_checker:
        if r["answer"] == by_refs[r["id"]]["answer"]:  # same seed, but llama.cpp's prefix cache may differ
            assert r["correct"] == by_refs[r["id"]]["correct"]
    assert (out / "accuracy_vs_tokens.png").stat().st_size > 0


def test_direct_baseline_script(llama, tmp_path, capsys):  # noqa: F811
    """The no-proxy baseline the README quotes: greedy, one sample, vote@k, coverage@k per row."""
    out = tmp_path / "direct.jsonl"
    assert direct_main(["--base-url", llama.base_url, "--limit", "3", "--k", "2", "--seed", "0",
                        "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["rows"] == len(rows) == 3
    for key in ("greedy", "sample", "vote", "coverage"):
        assert summary[key] == round(sum(r[key] for r in rows) / 3, 3)
    assert all(len(r["answers"]) == 2 and r["coverage"] >= r["sample"] for r in rows)


# ---------------------------------------------------------------- completions (need the lead's surface)


@pytest.mark.parametrize("stream", [False, True])
def test_passthrough_completions(real_proxy, relay, stream):
    proxy = real_proxy()
    body = {"prompt": prompt("Kenya"), "temperature": 0, "seed": 1, **PARAMS}
    client = client_of(proxy)
    if not stream:
        r = client.completions.create(model=MODEL_NAME, **body)
        assert r.choices[0].text == json.loads(relay.responses[0])["choices"][0]["text"]
        assert r.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) \
            == reported_total(relay)
        assert r.model_extra["its"]["usage"]["estimated"] is False
    else:
        chunks = list(client.completions.create(model=MODEL_NAME, stream=True,
                                                stream_options={"include_usage": True}, **body))
        assert relay.reported_usage() == [None]
        upstream = "".join(json.loads(line[6:])["choices"][0]["text"]
                           for line in relay.responses[0].splitlines() if line.startswith(b"data: {"))
        assert "".join(c.choices[0].text for c in chunks if c.choices) == upstream
        its = next(c.model_extra["its"] for c in chunks if (c.model_extra or {}).get("its"))
        assert its["usage"]["estimated"] is True


def test_vote_over_completions_meters_every_call(real_proxy, relay):
    proxy = real_proxy(scaling("capitals-vote", 6, [{"vote": {"extract": "exact"}}]))
    r = client_of(proxy).completions.create(model="capitals-vote", prompt=prompt("Peru"), seed=7, **PARAMS)
    its = r.model_extra["its"]
    assert its["candidates"] == 6  # llama.cpp ignores n: the proxy drew the rest itself
    assert sum(its["votes"].values()) == sum(1 for e in its["evidence"] if e["answer"] is not None)
    assert its["votes"][" ".join(r.choices[0].text.split()).lower()] == max(its["votes"].values())
    assert its["usage"]["estimated"] is False
    assert its["usage"]["total"] == reported_total(relay)  # every call, as llama.cpp counted it
    assert r.usage.total_tokens == its["usage"]["total"]["total_tokens"]


def test_sound_checker_route_only_returns_verified_capitals(real_proxy, relay):
    route = scaling("capitals-check", 4, [{"check": {"python": CHECKER}}, {"vote": {"extract": "exact"}}],
                    repair={"rounds": 1}, on_unverified="best_effort")
    proxy = real_proxy(route)
    client = client_of(proxy)
    spent = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for i, place in enumerate(PLACES):
        r = client.completions.create(model="capitals-check", prompt=prompt(place), seed=i, **PARAMS)
        its = r.model_extra["its"]
        assert its["verified"] == any(e.get("verified") for e in its["evidence"])
        if its["verified"]:  # a verified answer is one the checker passed: sound, whatever the model said
            assert check({"prompt": prompt(place), "answer": r.choices[0].text})[0]
        spent = {k: spent[k] + its["usage"]["total"][k] for k in spent}
    assert spent == reported_total(relay)  # repairs included


def test_judge_route_with_the_same_small_model(real_proxy, relay):
    route = scaling("capitals-judge", 3, [{"judge": {"model": MODEL_NAME, "mode": "pointwise", "format": "yesno"}}])
    proxy = real_proxy(route)
    r = client_of(proxy).completions.create(model="capitals-judge", prompt=prompt("Norway"), seed=2, **PARAMS)
    its = r.model_extra["its"]
    assert its["candidates"] == 3
    scored = [e for e in its["evidence"] if "judge" in (e.get("scores") or {})]
    noted = [e for e in its["evidence"] if e.get("notes")]
    assert len(scored) + len(noted) >= 3  # every candidate was scored, or says why not
    assert "judge" in its["usage"]["by_phase"]  # the judge's calls are metered, not hidden
    assert its["usage"]["total"] == reported_total(relay)


def test_adaptive_route_stops_early_on_agreement(real_proxy, relay):
    route = scaling("capitals-adaptive", 12, [{"vote": {"extract": "exact"}}])
    route["generate"]["temperature"] = 0.3  # an easy question at a low temperature: the samples agree
    route["generate"]["adaptive"] = {"rule": "beta", "confidence": 0.9, "min": 2, "batch": 2, "mode": "batch"}
    proxy = real_proxy(route)
    r = client_of(proxy).completions.create(model="capitals-adaptive", prompt=prompt("Egypt"), seed=5, **PARAMS)
    its = r.model_extra["its"]
    assert its["stop"]  # why it stopped is reported
    assert its["candidates"] < 12, (its["votes"], its["stop"], [e["answer"] for e in its["evidence"]])
    assert its["usage"]["total"] == reported_total(relay)
