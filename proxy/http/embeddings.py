"""POST /v1/embeddings: passed through to the model's embeddings endpoint, metered.

There is nothing to scale in an embedding (no candidates to compare), so a scaling
route refuses it with a 400 naming the alternative; a model_list name or a
passthrough route serves it.
"""

from __future__ import annotations

from typing import Any

from itsproxy.proxy.errors import ApiError, bad_request
from itsproxy.proxy.outcome import Outcome
from itsproxy.proxy.params import split_params
from itsproxy.proxy.surface import Call, Relay, ScalingStream
from itsproxy.proxy.upstream.replies import EMBEDDINGS

OWN = frozenset({"model", "input"})


def _token(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _input(value: Any) -> Any:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value and (
            all(isinstance(x, str) for x in value) or all(_token(x) for x in value)
            or all(isinstance(x, list) and all(_token(t) for t in x) for x in value)):
        return value
    raise bad_request("'input' must be a non-empty string, an array of strings, or token ids", param="input")


class EmbeddingsSurface:
    wire = EMBEDDINGS

    def __init__(self, drop_params: bool = False) -> None:
        self.drop_params = drop_params

    def parse(self, body: Any) -> Call:
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise bad_request("'model' is required", param="model")
        native = {"input": _input(body.get("input")), **split_params(body, OWN, self.drop_params)}
        return Call(model=model, messages=[], native=native)

    def check_scaling(self, call: Call) -> None:
        raise ApiError(400, f"model {call.model!r} is a scaling route; embeddings have no candidates to compare: "
                       "ask for a model_list name or a passthrough route", param="model", code="not_scalable")

    def upstream_body(self, call: Call) -> dict[str, Any]:
        return dict(call.native)

    def render(self, outcome: Outcome, call: Call) -> dict[str, Any]:
        raise AssertionError("check_scaling refuses every scaling route")

    def render_passthrough(self, resp: dict[str, Any], its: dict[str, Any], usage: dict[str, int]) -> dict[str, Any]:
        told = {"prompt_tokens": usage["prompt_tokens"], "total_tokens": usage["total_tokens"]}
        return {**resp, "usage": told, "its": its}

    def scaling_stream(self, call: Call) -> ScalingStream:
        raise AssertionError("embeddings do not stream")

    def relay(self, call: Call) -> Relay:
        raise AssertionError("embeddings do not stream")
