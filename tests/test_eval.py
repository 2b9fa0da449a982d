"""`itsproxy eval` end to end against the simulator: chat routes through a real proxy."""

from __future__ import annotations

import json
import random
import socket
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from itsproxy.proxy.cli import main
from tests.conftest import PASS_ROUTE, sim_models

FILES = ("results.jsonl", "results.md", "results.json", "accuracy_vs_tokens.png", "accuracy_vs_n.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

VOTE = {"name": "vote", "match": {"model": "math-vote"}, "generate": {"model": "sim", "n": 3, "temperature": 0.8},
        "select": [{"vote": {"extract": "number"}}], "limits": {"max_n": 8, "timeout_s": 20}}
CHECK = {"name": "check", "match": {"model": "math-check"}, "generate": {"model": "sim", "n": 2, "temperature": 0.8},
         "select": [{"check": {"python": "itsproxy.proxy.demo_checks:check_sum"}}, {"vote": {"extract": "number"}}],
         "repair": {"rounds": 1}, "on_unverified": "best_effort", "limits": {"max_n": 8, "timeout_s": 20}}
JUDGE = {"name": "judge", "match": {"model": "math-judge"}, "generate": {"model": "sim", "n": 3, "temperature": 0.8},
         "select": [{"judge": {"model": "sim", "mode": "pointwise", "format": "score"}},
                    {"vote": {"extract": "number", "weight": "score"}}], "limits": {"max_n": 8, "timeout_s": 20}}


def arithmetic(path: Path, rows: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w") as fh:
        for i in range(rows):
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            fh.write(json.dumps({"id": f"q{i}", "messages": [{"role": "user", "content": f"What is {a} + {b}?"}],
                                 "answer": str(a + b)}) + "\n")
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_eval(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["eval", "--no-progress", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def eval_proxy(make_proxy, sim):
    return make_proxy({"routes": [VOTE, CHECK, JUDGE, PASS_ROUTE]}, sim)


def test_eval_end_to_end(eval_proxy, tmp_path, capsys):
    data = arithmetic(tmp_path / "arith.jsonl", 8)
    out = tmp_path / "out"
    code, table, err = run_eval(capsys, "--base-url", eval_proxy.handle.base_url, "--dataset", str(data),
                                "--routes", "math-vote,math-check,math-judge,sim", "--n", "1,4",
                                "--extract", "number", "--out", str(out), "--seed", "5", "--concurrency", "3")
    assert code == 0, err
    for name in FILES:
        assert (out / name).stat().st_size > 0, name
    assert (out / "accuracy_vs_tokens.png").read_bytes()[:8] == PNG_MAGIC
    assert "| math-vote | 4 |" in table and "| sim | 1 |" in table

    recs = lines(out / "results.jsonl")
    assert len(recs) == 4 * 2 * 8 and all(r["error"] is None for r in recs)
    by_group: dict[tuple, list[dict]] = defaultdict(list)
    for r in recs:
        by_group[(r["route"], r["n"])].append(r)
    summaries = {(s["route"], s["n"]): s for s in json.loads((out / "results.json").read_text())}
    assert set(summaries) == set(by_group)
    for k, recs_k in by_group.items():
        s = summaries[k]
        assert s["correct"] == sum(r["correct"] for r in recs_k)
        assert s["accuracy"] == pytest.approx(s["correct"] / len(recs_k))
        assert s["ci_low"] <= s["accuracy"] <= s["ci_high"]
        assert s["tokens"] == pytest.approx(sum(r["prompt_tokens"] + r["completion_tokens"] for r in recs_k) / 8)
    # The route's extraction is what was graded, against the reference.
    refs = {r["id"]: r["answer"] for r in lines(data)}
    for r in by_group[("math-vote", 4)]:
        assert r["candidates"] == 4 and len(r["candidate_correct"]) == 4
        assert r["correct"] == (r["answer"] == refs[r["id"]])
        assert r["coverage"] == (refs[r["id"]] in r["candidate_answers"])
    vote4 = summaries[("math-vote", 4)]
    assert vote4["coverage"] >= vote4["accuracy"]
    assert summaries[("math-check", 4)]["verified_rate"] is not None
    judge = summaries[("math-judge", 4)]
    assert judge["judge_fpr"] is not None or judge["judge_fnr"] is not None
    # A passthrough route makes one call whatever n is asked: the table says so instead of pretending.
    assert summaries[("sim", 4)]["candidates"] == 1


def test_eval_resumes_and_is_deterministic(eval_proxy, tmp_path, capsys):
    data = arithmetic(tmp_path / "arith.jsonl", 6, seed=1)
    args = ["--base-url", eval_proxy.handle.base_url, "--dataset", str(data), "--routes", "math-vote",
            "--n", "3", "--extract", "number", "--seed", "9"]
    first, second = tmp_path / "a", tmp_path / "b"
    assert run_eval(capsys, *args, "--out", str(first), "--limit", "4")[0] == 0
    assert len(lines(first / "results.jsonl")) == 4
    code, _, err = run_eval(capsys, *args, "--out", str(first))
    assert code == 0 and "2 requests sent (4 resumed" in err
    assert len(lines(first / "results.jsonl")) == 6
    assert run_eval(capsys, *args, "--out", str(second), "--concurrency", "1")[0] == 0
    pick = ("id", "seed", "answer", "correct", "candidate_answers")
    a = sorted(tuple(json.dumps(r[k]) for k in pick) for r in lines(first / "results.jsonl"))
    b = sorted(tuple(json.dumps(r[k]) for k in pick) for r in lines(second / "results.jsonl"))
    assert a == b


def test_eval_with_a_checker_and_its_own_proxy(sim, tmp_path, capsys):
    """--config starts the proxy in-process; --check grades with a sound checker instead of the references."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = {"simulator": {"port": port, "seed": 4},
              "model_list": sim_models(f"http://127.0.0.1:{port}"), "routes": [VOTE]}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config))
    data = tmp_path / "d.jsonl"
    # Wrong references on purpose: the checker, not the reference, decides.
    rows = [{"id": i, "messages": [{"role": "user", "content": f"What is {a} + {b}?"}], "answer": "nonsense"}
            for i, (a, b) in enumerate([(12, 30), (45, 27), (60, 11)])]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, table, err = run_eval(capsys, "--config", str(cfg), "--dataset", str(data), "--routes", "math-vote",
                                "--n", "5", "--check", "itsproxy.proxy.demo_checks:check_sum", "--out",
                                str(tmp_path / "o"))
    assert code == 0, err
    recs = lines(tmp_path / "o" / "results.jsonl")
    for r in recs:
        a, b = rows[int(r["id"])]["messages"][0]["content"][8:-1].split(" + ")
        assert r["correct"] == (r["answer"] == str(int(a) + int(b)))
    assert any(r["correct"] for r in recs)


@pytest.mark.parametrize("row, message", [
    ({"id": "x", "answer": "1"}, "exactly one of 'prompt' and 'messages'"),
    ({"id": "x", "prompt": "p", "answer": []}, "'answer' must be"),
    ({"id": "x", "prompt": "p", "answer": "1", "params": {"n": 3}}, "'params' may only hold"),
    ({"prompt": "p", "answer": "1"}, "'id' must be"),
])
def test_eval_rejects_a_bad_dataset_before_sending_anything(tmp_path, capsys, row, message):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(row) + "\n")
    code, _, err = run_eval(capsys, "--base-url", "http://127.0.0.1:9/v1", "--dataset", str(data),
                            "--routes", "r", "--out", str(tmp_path / "o"))
    assert code == 2 and message in err
    assert not (tmp_path / "o" / "results.jsonl").exists()


def test_eval_rejects_a_bad_checker(tmp_path, capsys):
    code, _, err = run_eval(capsys, "--base-url", "http://127.0.0.1:9/v1", "--dataset", "capitals",
                            "--routes", "r", "--check", "itsproxy.nope:check", "--out", str(tmp_path / "o"))
    assert code == 2 and "cannot import" in err


def test_eval_says_when_its_proxy_cannot_start(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump({"simulator": {"port": port}, "model_list": sim_models(f"http://127.0.0.1:{port}"),
                                       "routes": [VOTE]}))
        code, _, err = run_eval(capsys, "--config", str(cfg), "--dataset", "sums", "--routes", "math-vote",
                                "--out", str(tmp_path / "o"))
    assert code == 2 and "cannot start the proxy" in err
