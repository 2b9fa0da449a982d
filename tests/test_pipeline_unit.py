"""The pipeline's logic through its ports only: a scripted sampler, no HTTP, no proxy.

Each test builds a route's pipeline from config, as the proxy does, runs it
against `tests/fakes.py`, and checks the typed `Selection` it returns.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from fakes import Call, FakeSampler, context
from itsproxy.strategies.pipeline import NotEnoughCandidates, Pipeline, Unverified, build_pipeline
from itsproxy.strategies.ports import EndpointError
from itsproxy.strategies.types import AdaptiveStop, RepairRound, RepairStop, SampleError, Selection

MODELS = {"m", "a", "b", "judge"}


def pipeline(**route: Any) -> Pipeline:
    route.setdefault("generate", {"model": "m", "n": 5})
    return build_pipeline(route, "routes[0]", MODELS)


def answers(*texts: str):
    """A script: the i-th choice of every generate call answers texts[i] (numbers become sentences)."""
    def script(call: Call, i: int) -> str:
        return f"The answer is {texts[i % len(texts)]}."
    return script


def run(p: Pipeline, sampler: FakeSampler, n: int | None = None, **kw: Any) -> Selection:
    return asyncio.run(p.run(context(sampler, n or p.generate.n, **kw)))


# ---------------------------------------------------------------- vote


def test_vote_picks_the_majority():
    sampler = FakeSampler(answers("41", "42", "42", "7", "42"))
    sel = run(pipeline(select=[{"vote": {"extract": "number"}}]), sampler)
    assert sel.winner is not None and sel.winner.answer == "42" and sel.winner.index == 1
    assert sel.votes == {"41": 1, "42": 3, "7": 1} and not sel.tie
    assert sel.agreement == pytest.approx(0.6)
    assert sel.verified is None and sel.disagreements is None and sel.stop is None and sel.rounds == []
    assert [(c.phase, c.n) for c in sampler.calls] == [("generate", 5)]  # one native-n call


def test_vote_tie_goes_to_the_earliest_and_says_so():
    sel = run(pipeline(generate={"model": "m", "n": 4}, select=[{"vote": {"extract": "number"}}]),
              FakeSampler(answers("2", "1", "1", "2")))
    assert sel.tie and sel.winner is not None and sel.winner.index == 0 and sel.winner.answer == "2"
    assert sel.reasons == ["tie broken by earliest candidate"]


def test_vote_without_any_answer_falls_back_to_the_first():
    sampler = FakeSampler(lambda call, i: "no digits here")
    sel = run(pipeline(select=[{"vote": {"extract": "number"}}]), sampler)
    assert sel.winner is not None and sel.winner.index == 0 and sel.votes == {}
    assert sel.reasons == ["no candidate had an extractable answer; returned the first"]


# ---------------------------------------------------------------- check, repair


CHECKED = [{"check": {"regex": "^42$"}}, {"vote": {"extract": "number"}}]


def test_check_filters_before_the_vote():
    # 41 is the majority, but only 42 passes the check: the vote is among verified candidates.
    sel = run(pipeline(generate={"model": "m", "n": 3}, select=CHECKED), FakeSampler(answers("41", "41", "42")))
    assert sel.verified is True and sel.winner is not None and sel.winner.answer == "42"
    assert sel.votes == {"42": 1}
    assert [c.verified for c in sel.candidates] == [False, False, True]
    assert sel.disagreements == 0  # no judge ran: nothing to disagree with
    assert sel.extras()["disagreements"] == 0


def test_nothing_verified_is_an_error_or_flagged_best_effort():
    with pytest.raises(Unverified) as err:
        run(pipeline(generate={"model": "m", "n": 2}, select=CHECKED), FakeSampler(answers("41")))
    assert len(err.value.critiques) == 2 and err.value.selection.verified is False
    sel = run(pipeline(generate={"model": "m", "n": 2}, select=CHECKED, on_unverified="best_effort"),
              FakeSampler(answers("41")))
    assert sel.verified is False and sel.winner is not None and sel.winner.answer == "41"


def repair_script(call: Call, i: int) -> str:
    return "The answer is 42." if call.phase == "repair" else "The answer is 41."


def test_repair_round_back_prompts_with_the_critiques():
    sampler = FakeSampler(repair_script)
    sel = run(pipeline(generate={"model": "m", "n": 3}, select=CHECKED, repair={"rounds": 2, "n": 2}), sampler)
    assert sel.verified is True and sel.winner is not None and sel.winner.round == 1 and sel.winner.index == 3
    assert [(c.phase, c.n) for c in sampler.calls] == [("generate", 3), ("repair", 2)]  # stopped once one passed
    (rnd,) = sel.rounds
    assert isinstance(rnd, RepairRound) and rnd.round == 1 and rnd.after == [0, 1, 2] and rnd.shown == 0
    assert rnd.critiques == ["The answer does not match the required format (regex '^42$')."]
    sent = sampler.calls[1].messages
    assert sent[0] == {"role": "user", "content": "What is 6 * 7?"}
    assert sent[1] == {"role": "assistant", "content": "The answer is 41."}
    assert sent[2]["role"] == "user" and all(c in sent[2]["content"] for c in rnd.critiques)
    assert sel.extras()["rounds"] == [{"round": 1, "after": [0, 1, 2], "shown": 0, "critiques": rnd.critiques}]


def test_repair_stops_at_a_spend_cap_and_says_why():
    sampler = FakeSampler(answers("41"))
    with pytest.raises(Unverified) as err:
        run(pipeline(generate={"model": "m", "n": 2}, select=CHECKED, repair={"rounds": 3}), sampler,
            max_extra_tokens=1)
    assert [c.phase for c in sampler.calls] == ["generate"]  # no repair round was paid for
    assert err.value.selection.rounds == []
    sel = run(pipeline(generate={"model": "m", "n": 2}, select=CHECKED, repair={"rounds": 3},
                       on_unverified="best_effort"), FakeSampler(answers("41")), max_extra_tokens=1)
    assert sel.stop == RepairStop(reason="max_extra_tokens", drawn=2, rounds=0)
    assert sel.extras()["stop"] == {"rule": "repair", "reason": "max_extra_tokens", "drawn": 2, "rounds": 0}


# ---------------------------------------------------------------- min_candidates


def pool_failing_b(call: Call, i: int) -> str | SampleError:
    return SampleError("b is down") if call.model == "b" else "The answer is 42."


POOL = {"models": [{"model": "a", "n": 2}, {"model": "b", "n": 2}]}


def test_min_candidates_refuses_a_thin_batch():
    with pytest.raises(NotEnoughCandidates) as err:
        run(pipeline(generate=POOL, select=[{"vote": {"extract": "number"}}], min_candidates=3),
            FakeSampler(pool_failing_b))
    assert (err.value.got, err.value.need) == (2, 3) and [str(e) for e in err.value.errors] == ["b is down"]


def test_min_candidates_met_by_the_members_that_answered():
    sel = run(pipeline(generate=POOL, select=[{"vote": {"extract": "number"}}], min_candidates=2),
              FakeSampler(pool_failing_b))
    assert len(sel.candidates) == 2 and {c.model for c in sel.candidates} == {"a"}


def test_no_candidate_at_all_is_an_error_even_without_min_candidates():
    with pytest.raises(NotEnoughCandidates):
        run(pipeline(select=[{"vote": {"extract": "number"}}]), FakeSampler(lambda call, i: SampleError("down")))


# ---------------------------------------------------------------- adaptive stopping


ADAPTIVE = {"model": "m", "n": 8, "adaptive": {"rule": "beta", "confidence": 0.9, "batch": 2, "min": 2}}


def test_adaptive_stops_once_the_answer_is_settled():
    sampler = FakeSampler(answers("42"))
    sel = run(pipeline(generate=ADAPTIVE, select=[{"vote": {"extract": "number"}}]), sampler)
    assert isinstance(sel.stop, AdaptiveStop) and sel.stop.reason == "confident"
    assert sel.stop.drawn == len(sel.candidates) < 8 and sel.stop.saved == 8 - sel.stop.drawn
    assert sel.stop.tokens_saved_estimate == sel.stop.saved * sampler.completion_tokens
    assert sum(c.n for c in sampler.calls) == sel.stop.drawn
    assert sel.extras()["stop"]["rule"] == "beta"


def test_adaptive_draws_everything_when_answers_disagree():
    sampler = FakeSampler(lambda call, i: f"The answer is {len(sampler.calls) * 10 + i}.")
    sel = run(pipeline(generate=ADAPTIVE, select=[{"vote": {"extract": "number"}}]), sampler)
    assert isinstance(sel.stop, AdaptiveStop) and sel.stop.reason == "max_n" and sel.stop.saved == 0
    assert len(sel.candidates) == 8


def test_adaptive_stops_at_the_cost_cap():
    sampler = FakeSampler(lambda call, i: f"The answer is {len(sampler.calls) * 10 + i}.", usd_per_token=0.001)
    sel = run(pipeline(generate=ADAPTIVE, select=[{"vote": {"extract": "number"}}]), sampler, max_cost_usd=0.02)
    assert isinstance(sel.stop, AdaptiveStop) and sel.stop.reason == "max_cost_usd"
    assert len(sel.candidates) < 8


# ---------------------------------------------------------------- scorers through the same ports


def judge_script(call: Call, i: int) -> str:
    if call.phase == "judge":
        answer = re.search(r"<answer>\s*(.*?)\s*</answer>", call.messages[-1]["content"], re.S)
        score = 9 if answer and "42" in answer.group(1) else 2
        return f'{{"reason": "", "score": {score}}}'
    return ["The answer is 41.", "The answer is 42.", "The answer is 41."][i]


def test_judge_scores_and_the_highest_wins():
    sampler = FakeSampler(judge_script)
    sel = run(pipeline(generate={"model": "m", "n": 3}, select=[{"judge": {"model": "judge"}}]), sampler)
    assert sel.winner is not None and sel.winner.index == 1 and sel.reasons == ["highest score"]
    assert [c.scores["judge"] for c in sel.candidates] == [0.2, 0.9, 0.2]
    # identical candidate texts share one judge call
    assert sorted(c.phase for c in sampler.calls) == ["generate", "judge", "judge"]


class FakeHttp:
    """A MeteredHttp port answering from a dict, recording what was posted."""

    def __init__(self, reply: dict[str, Any] | EndpointError) -> None:
        self.reply, self.posts = reply, []

    async def post_json(self, url: str, body: dict[str, Any], *, phase: str, model: str,
                        headers: dict[str, str] | None = None, timeout: float) -> dict[str, Any]:
        self.posts.append((url, body, phase, model))
        if isinstance(self.reply, EndpointError):
            raise self.reply
        return self.reply


def test_reward_posts_through_the_metered_port():
    http = FakeHttp({"scores": [0.1, 0.8, 0.3]})
    sel = run(pipeline(generate={"model": "m", "n": 3}, select=[{"reward": {"url": "http://rm:9/score"}}]),
              FakeSampler(answers("1", "2", "3")), http=http)
    assert sel.winner is not None and sel.winner.index == 1
    ((url, body, phase, model),) = http.posts
    assert (url, phase, model) == ("http://rm:9/score", "reward", "rm:9")
    assert body == {"prompt": "What is 6 * 7?", "candidates": [f"The answer is {k}." for k in "123"]}


def test_reward_endpoint_failure_is_a_note_not_a_crash():
    sel = run(pipeline(generate={"model": "m", "n": 2}, select=[{"reward": {"url": "http://rm:9/score"}}]),
              FakeSampler(answers("1")), http=FakeHttp(EndpointError("endpoint answered HTTP 500")))
    assert all(c.notes == ["reward: endpoint answered HTTP 500"] for c in sel.candidates)
    assert sel.reasons == ["no candidate could be scored; returned the first"]
