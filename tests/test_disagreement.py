"""Where an LLM judge and a sound checker both ran, their disagreements are on record."""

from __future__ import annotations

import uuid

from itsproxy.proxy.simulator import questions
from tests import observability_helpers as obs


def test_judge_checker_disagreements_recorded_and_counted(make_proxy, fresh_sim):
    name = f"both-{uuid.uuid4().hex[:6]}"
    route = {"name": name, "match": {"model": "both"}, "generate": {"model": "judge-noisy", "n": 4, "temperature": 0.8},
             "select": [{"check": {"python": "itsproxy.proxy.demo_checks:check_sum"}},
                        {"judge": {"model": "judge-noisy", "mode": "pointwise"}},
                        {"vote": {"extract": "number"}}],
             "on_unverified": "best_effort"}
    from conftest import sim_models
    models = sim_models(fresh_sim.url, **{"judge-noisy": "sim@judge_tpr=0.6@judge_fpr=0.4"})
    p = make_proxy({"model_list": models, "routes": [route]}, fresh_sim)
    seen = 0
    for i, (q, _) in enumerate(questions(seed=8, count=12)):
        r = p.client.chat.completions.create(model="both", messages=[{"role": "user", "content": q}], seed=i)
        its = r.model_extra["its"]
        noted = sum(1 for e in its["evidence"] if "judge and checker disagree" in e.get("notes", []))
        assert its["disagreements"] == noted
        for e in its["evidence"]:  # every candidate was both checked and judged
            assert e["verdicts"] and "judge" in e["scores"]
            disagree = (e["scores"]["judge"] >= 0.5) != e["verified"]
            assert disagree == ("judge and checker disagree" in e.get("notes", []))
        seen += noted
    assert seen > 0, "a judge with TPR 0.6 / FPR 0.4 should disagree with the checker sometimes"
    samples = obs.parse_metrics(p.http.get("/metrics").text)
    assert obs.metric_sum(samples, "its_judge_checker_disagreements_total", route=name) == seen
