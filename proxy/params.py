"""The parameter policy, shared by every surface and by config.

- Refused (400, case-insensitively): keys that would steer where or how the proxy
  calls upstream, and so where its keys go (`api_base`, `api_key`, `extra_headers` …).
- Read by the proxy itself: each surface's own keys (model, messages, stream, n, its …).
- Known OpenAI parameters (FORWARD): type-checked by the surface, forwarded.
- Anything else (`top_k`, `min_p`, `repetition_penalty`, `prompt_cache_key` …) is the
  upstream's business: forwarded as is to OpenAI-compatible upstreams, carried as
  `extra_body` to litellm providers, and an upstream that refuses it answers its own
  400, passed on. `drop_params: true` (server, or LiteLLM's litellm_settings) drops
  such parameters instead.
"""

from __future__ import annotations

from typing import Any

from itsproxy.proxy.errors import bad_request

# Forwarded upstream as given (after type checks below).
FORWARD = frozenset({
    "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "max_tokens", "max_completion_tokens",
    "presence_penalty", "response_format", "seed", "stop", "temperature", "top_p", "tools", "tool_choice",
    "parallel_tool_calls", "user", "reasoning_effort", "functions", "function_call", "modalities",
    "prediction", "audio", "service_tier", "verbosity", "web_search_options", "metadata", "store",
})
# Read by the proxy itself.
OWN = frozenset({"model", "messages", "stream", "stream_options", "n", "its"})
# Keys that would change where or how the proxy calls upstream: named in the error on purpose.
FORBIDDEN = frozenset({
    "api_base", "base_url", "api_key", "api_version", "extra_headers", "headers", "custom_llm_provider",
    "mock_response", "organization", "deployment_id", "timeout", "num_retries", "max_retries",
    "litellm_params", "model_list", "aws_access_key_id", "aws_secret_access_key", "vertex_credentials",
    "azure_ad_token", "input_cost_per_token", "output_cost_per_token", "proxy", "extra_body", "extra_query",
})

_FORBIDDEN_FOLDED = frozenset(k.lower() for k in FORBIDDEN)


def split_params(body: dict[str, Any], own: frozenset[str], drop_params: bool) -> dict[str, Any]:
    """The parameters to forward upstream: everything but the surface's own keys (and, with
    `drop_params`, but what is not a known OpenAI parameter). A steering key is a 400."""
    for key in body:
        if key.lower() in _FORBIDDEN_FOLDED:
            raise bad_request(f"parameter '{key}' is not allowed: the proxy decides where and how it calls "
                              "upstream", param=key, code="forbidden_parameter")
    return {k: v for k, v in body.items()
            if k not in own and v is not None and (k in FORWARD or not drop_params)}
