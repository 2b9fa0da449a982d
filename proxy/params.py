"""The parameter policy: which client parameters are forwarded upstream, which the proxy
reads itself, and which are refused because they would steer where or how the proxy
calls upstream (and so where its keys go). Shared by every surface and by config."""

from __future__ import annotations

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
