"""The eval's grading pieces: the normaliser, the capitals checker's soundness, the interval, the frontier."""

from __future__ import annotations

import json
from importlib.resources import files

import pytest

from itsproxy.proxy.eval.capitals import check, rows, table
from itsproxy.proxy.eval.dataset import load
from itsproxy.proxy.eval.datasets.make_capitals import EXEMPLARS, prompt
from itsproxy.proxy.eval.normalise import canonical, first_line, matches
from itsproxy.proxy.eval.plots import pareto
from itsproxy.proxy.eval.report import wilson


@pytest.mark.parametrize("answer, refs, ok", [
    ("  Brasilia.", ["Brasília"], True),
    ("Brasilia", ["Brasília"], True),
    ("St. John's", ["Saint John's"], True),
    ("N'Djamena", ["N'Djamena"], True),
    ("ndjamena", ["N'Djamena"], True),
    ("Washington, D.C.", ["Washington, D.C."], True),
    ("1,000", ["1000"], True),
    ("1000.0", ["1000"], True),
    ("100", ["1000"], False),
    ("Paris", ["Parisa"], False),
    ("", ["x"], False),
    (None, ["x"], False),
])
def test_matches(answer, refs, ok):
    assert matches(answer, refs) is ok


def test_first_line():
    assert first_line("  Nairobi.\nQ: next") == "Nairobi"
    assert first_line("\n\n Lima") == "Lima"
    assert first_line("") == ""


def test_the_shipped_dataset_is_the_table():
    data = load("capitals")
    assert len(data) == len(rows()) == len(table()) >= 250  # one row per place, no place twice
    assert all(r.prompt == prompt(r.prompt.rsplit("capital of ", 1)[1][:-4]) for r in data)
    shipped = files("itsproxy.proxy.eval").joinpath("datasets/capitals.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in shipped] == [r.id for r in data]
    asked = {canonical(r.prompt.rsplit("capital of ", 1)[1][:-4]) for r in data}
    assert not asked & {canonical(p) for p, _ in EXEMPLARS}  # no exemplar is asked


def test_capitals_checker_passes_every_reference_and_is_sound():
    data = load("capitals")
    for r in data:
        for accepted in r.answers:
            assert check({"prompt": r.prompt, "answer": accepted})[0], (r.id, accepted)
    # Sound: another place's capital never passes (unless the two places share it).
    for r, other in zip(data, data[1:] + data[:1]):
        wrong = other.answers[0]
        if not matches(wrong, list(r.answers)):
            passed, critique = check({"prompt": r.prompt, "answer": wrong})
            assert not passed
            if r.answers[0] not in r.prompt:  # (Djibouti's capital is Djibouti)
                assert r.answers[0] not in critique  # the critique does not give the answer away


def test_capitals_checker_reads_chat_and_candidate_text():
    msgs = [{"role": "user", "content": "What is the capital of the Bahamas?"}]
    assert check({"messages": msgs, "candidate": {"content": " Nassau\n"}})[0]
    assert not check({"messages": msgs, "candidate": {"content": "Freeport"}})[0]
    assert not check({"messages": [{"role": "user", "content": "What is the capital of Atlantis?"}],
                      "answer": "Poseidonia"})[0]
    assert not check({"messages": [{"role": "user", "content": "hello"}], "answer": "Paris"})[0]


def test_wilson_interval():
    low, high = wilson(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson(0, 10)[0] == pytest.approx(0.0) and wilson(10, 10)[1] == pytest.approx(1.0)
    assert wilson(3, 10)[1] < wilson(3, 5)[1]  # more questions, a narrower interval
    assert wilson(0, 0) == (0.0, 0.0)


def test_pareto_frontier():
    points = [(10, 0.5), (20, 0.4), (20, 0.7), (40, 0.7), (80, 0.9), (5, 0.1)]
    assert pareto(points) == [(5, 0.1), (10, 0.5), (20, 0.7), (80, 0.9)]
