"""The parameter policy: unknown parameters are the upstream's business (forwarded, or
dropped with drop_params); steering keys are refused whatever their case."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest

from tests.conftest import send_json

REPLY = {"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
         "choices": [{"index": 0, "message": {"role": "assistant", "content": "The answer is 4."},
                      "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}}


@pytest.fixture
def recorder():
    """An OpenAI-compatible upstream that records every body it is sent."""
    bodies: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            bodies.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            send_json(self, 200, json.dumps(REPLY).encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", bodies
    server.shutdown()


def _proxy(make_proxy, sim, url: str, **server):
    models = [{"model_name": "up", "litellm_params": {"model": "openai/m", "api_base": url, "api_key": "k"}}]
    routes = [{"name": "vote", "match": {"model": "vote"}, "generate": {"model": "up", "n": 3},
               "select": [{"vote": {"extract": "number"}}]}]
    return make_proxy({"model_list": models, "routes": routes, "server": server}, sim)


VENDOR = {"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "prompt_cache_key": "conv-7",
          "safety_identifier": "user-1"}


def test_vendor_parameters_reach_the_upstream_unchanged(make_proxy, sim, recorder):
    url, bodies = recorder
    p = _proxy(make_proxy, sim, url)
    r = p.client.chat.completions.create(model="up", messages=[{"role": "user", "content": "2+2?"}], extra_body=VENDOR)
    assert r.choices[0].message.content == "The answer is 4."
    assert {k: bodies[-1][k] for k in VENDOR} == VENDOR
    bodies.clear()
    p.client.chat.completions.create(model="vote", messages=[{"role": "user", "content": "2+2?"}], extra_body=VENDOR)
    assert bodies and all({k: b[k] for k in VENDOR} == VENDOR for b in bodies), "every candidate call carries them"


def test_drop_params_drops_what_openai_does_not_define(make_proxy, sim, recorder):
    url, bodies = recorder
    p = _proxy(make_proxy, sim, url, drop_params=True)
    p.client.chat.completions.create(model="up", messages=[{"role": "user", "content": "2+2?"}], temperature=0.3,
                                     extra_body=VENDOR)
    assert not set(VENDOR) & set(bodies[-1]) and bodies[-1]["temperature"] == 0.3


def test_steering_keys_refused_in_any_case(make_proxy, sim, recorder):
    url, bodies = recorder
    p = _proxy(make_proxy, sim, url)
    for key in ("api_base", "API_BASE", "Base_Url", "extra_headers"):
        with pytest.raises(openai.BadRequestError) as exc:
            p.client.chat.completions.create(model="up", messages=[{"role": "user", "content": "hi"}],
                                             extra_body={key: "http://elsewhere"})
        assert exc.value.body["code"] == "forbidden_parameter" and exc.value.body["param"] == key
    assert not bodies
