"""A difficult upstream behind the proxy, through the official openai SDK: a malformed reply is a
502 (never a 500) on passthrough and on a vote route, and usage is never told negative."""

from __future__ import annotations

import openai
import pytest

from tests.difficult_upstream import ANSWER, serve
from tests.test_upstream_boundary import MODES, USER

VOTE = ["object_content", "bad_choices", "usage_negative", "usage_str", "n_refused", "ok"]


@pytest.fixture(scope="module")
def difficult():
    handle, state = serve()
    yield handle, state
    handle.stop()


def _proxy(make_proxy, sim, difficult, client: str):
    url = difficult[0].url
    models = [{"model_name": m, "litellm_params": {"model": f"openai/{m}", "api_base": f"{url}/v1",
                                                    "api_key": "sk-difficult"}} for m in MODES]
    routes = [{"name": f"vote-{m}", "match": {"model": f"vote-{m}"}, "generate": {"model": m, "n": 3},
               "select": [{"vote": {"extract": "number"}}]} for m in VOTE]
    return make_proxy({"model_list": models, "routes": routes,
                       "server": {"upstream_client": client, "max_upstream_body_bytes": 1024 * 1024}}, sim)


@pytest.fixture(params=["auto", "litellm"])
def proxy(request, make_proxy, sim, difficult):
    return _proxy(make_proxy, sim, difficult, request.param)


@pytest.fixture
def lean_proxy(make_proxy, sim, difficult):
    """The lean path only: litellm reads a reply of any size, so the body cap is the lean path's."""
    return _proxy(make_proxy, sim, difficult, "auto")


def ask(proxy, model: str):
    return proxy.client.chat.completions.create(model=model, messages=USER)


def sound_usage(r) -> None:
    u = r.usage
    for v in (u.prompt_tokens, u.completion_tokens, u.total_tokens):
        assert isinstance(v, int) and v >= 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens


@pytest.mark.parametrize("model", ["bad_choices", "object_content", "html", "vote-object_content",
                                   "vote-bad_choices"])
def test_malformed_upstream_reply_is_502(proxy, model):
    with pytest.raises(openai.APIStatusError) as info:
        ask(proxy, model)
    assert info.value.status_code == 502


@pytest.mark.parametrize("model", ["usage_negative", "usage_str", "usage_list", "vote-usage_negative",
                                   "vote-usage_str"])
def test_bad_usage_is_estimated_never_negative(proxy, model):
    if proxy.services.config.server.upstream_client == "litellm" and not model.endswith("negative"):
        with pytest.raises(openai.APIStatusError) as info:  # litellm refuses the whole reply: a 502
            ask(proxy, model)
        assert info.value.status_code == 502 and "Traceback" not in info.value.message
        return
    r = ask(proxy, model)
    assert r.choices[0].message.content == ANSWER
    sound_usage(r)
    assert r.usage.prompt_tokens > 0


def test_huge_reply_is_refused_on_the_lean_path(lean_proxy):
    with pytest.raises(openai.APIStatusError) as info:
        ask(lean_proxy, "huge")
    assert info.value.status_code == 502 and "cap" in info.value.message


def test_text_parts_are_joined_and_vote_fans_out_past_a_refused_n(proxy):
    if proxy.services.config.server.upstream_client == "auto":
        assert ask(proxy, "parts_content").choices[0].message.content == ANSWER
    r = ask(proxy, "vote-n_refused")
    assert r.choices[0].message.content == ANSWER and r.model_extra["its"]["candidates"] == 3
