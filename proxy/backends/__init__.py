"""The two ways to call a model: a lean pooled-HTTP path for OpenAI-compatible
upstreams, and litellm for every other provider. Both speak OpenAI's JSON."""
