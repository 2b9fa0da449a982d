"""Answer extraction and the vote, as pure logic."""

from __future__ import annotations

import json

import pytest

from itsproxy.strategies.extract import build_extractor
from itsproxy.strategies.stages.vote import tally
from itsproxy.strategies.types import Candidate, Sample, SpecError


def msg(content=None, tool_calls=None):
    m = {"role": "assistant", "content": content}
    if tool_calls:
        m["tool_calls"] = tool_calls
    return m


def call(name, args):
    return {"id": "c", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


@pytest.mark.parametrize("kind,content,want", [
    ("number", "so 12 + 30 = 42. The answer is 42.", "42"),
    ("number", "The total is 1,234.50 dollars", "1234.5"),
    ("number", "minus: -7", "-7"),
    ("number", "3.0", "3"),
    ("number", "no digits here", None),
    ("boxed", r"thus \boxed{\frac{1}{2}} done", r"\frac{1}{2}"),
    ("boxed", r"\boxed{42} and later \boxed{ 43 }", "43"),
    ("boxed", "nothing boxed", None),
    ("exact", "  The   Answer\nIS 4 ", "the answer is 4"),
    ("exact", "   ", None),
    ("json", '{"b": 1, "a": [1, 2]}', '{"a":[1,2],"b":1}'),
    ("json", '```json\n{"a": 1}\n```', '{"a":1}'),
    ("json", "not json", None),
])
def test_extractors(kind, content, want):
    assert build_extractor(kind, "x")(msg(content)) == want


def test_regex_extractor_takes_the_first_group():
    ex = build_extractor({"extract": "regex", "pattern": r"ANSWER:\s*(\w+)"}, "x")
    assert ex(msg("blah ANSWER:  Paris.")) == "paris"
    assert ex(msg("no marker")) is None


def test_tool_call_extractor_is_canonical():
    ex = build_extractor("tool_call", "x")
    a = ex(msg(tool_calls=[call("add", {"a": 1, "b": 2})]))
    b = ex(msg(tool_calls=[call("add", {"b": 2, "a": 1})]))
    assert a == b and json.loads(a) == [{"name": "add", "arguments": {"a": 1, "b": 2}}]
    assert ex(msg("text only")) is None


@pytest.mark.parametrize("spec,path", [({"extract": "nope"}, "r.extract"), ({"extract": "regex"}, "r.pattern"),
                                       ({"extract": "regex", "pattern": "("}, "r.pattern"),
                                       ({"extract": "number", "pattern": "x"}, "r.pattern")])
def test_bad_extractor_specs(spec, path):
    with pytest.raises(SpecError) as exc:
        build_extractor(spec, "r")
    assert exc.value.path == path


def cands(*answers, scores=None):
    out = []
    for i, a in enumerate(answers):
        c = Candidate(i, Sample(msg(f"answer {a}"), "stop", "m", 0))
        c.answer = a
        if scores:
            c.scores["score"] = scores[i]
        out.append(c)
    return out


def test_majority_wins_and_unextractable_do_not_vote():
    t = tally(cands("1", None, "2", "2", None))
    assert t.winner.index == 2 and t.votes == {"1": 1, "2": 2} and not t.tie
    assert t.agreement == pytest.approx(2 / 3)


def test_ties_break_by_earliest_and_are_reported():
    t = tally(cands("b", "a", "a", "b"))
    assert t.tie and t.winner.index == 0 and t.winner.answer == "b"


def test_weighted_vote():
    t = tally(cands("x", "y", "y", scores=[0.9, 0.3, 0.2]), weight="score")
    assert t.winner.answer == "x"


def test_nobody_votes():
    t = tally(cands(None, None))
    assert t.winner is None and t.votes == {} and t.agreement is None
