"""The one redactor: every configured secret out of anything a client, a log or a trace can see.

Secrets are gathered once, at config load (`config_secrets`): model credentials (every
`litellm_params` key naming a key, token, secret or password), server API keys, and every
header value of an `http` checker and every `env` value of a `command` checker (whether or not
it came from `os.environ/` — we err on the side of redacting). A value is replaced, with its
base64 form (when 8+ characters, with or without padding) and so also its `Bearer <key>` form,
by `[redacted]`.

Short values (< 6 characters, e.g. a dummy `api_key: none` for a local model) are redacted only
where a whole string equals them: matching them inside text would mangle ordinary words, and a
real credential is never that short. We do not refuse them at load, because local setups rely
on such placeholders; a short value simply gets no protection inside longer text.

Flows (one chokepoint each):
- checker critiques: `CheckStage.redact`, applied to every Verdict as it leaves a checker
  (strategies cannot import the proxy, so the proxy installs this redactor there at load);
  the `its` evidence, repair prompts, the 422 `critiques` and traces all read those Verdicts.
- upstream errors: the client error built from them (`message`, `param`, `code`, `extra`) —
  `ApiError.redacted` (proxy/errors.py), called where the error is mapped (proxy/http/chat.py).
- traces: `Redactor.value` on every record, in the writer thread (proxy/telemetry/traces.py).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from itsproxy.strategies.stages.check import CheckStage

if TYPE_CHECKING:
    from itsproxy.proxy.config import Config

REDACTED = "[redacted]"
MIN_CONTAINED_SECRET = 6  # shorter values are redacted only on equality
MIN_ENCODED_SECRET = 8  # shorter values' base64 forms would match ordinary text
_SECRET_PARAM_WORDS = ("key", "token", "secret", "password")
_CRED_WORDS = {"token", "password", "passwd", "authorization", "apikey", "credential", "credentials", "cookie"}


_AUTH_SCHEME = re.compile(r"^(?:bearer|basic|token|bot|apikey)\s+(\S+)$", re.IGNORECASE)


def encodings(secret: str) -> set[str]:
    """The forms of `secret` that are redacted inside longer text (a header value `Bearer X`
    also gives X's forms: a verifier may echo the token alone)."""
    if len(secret) < MIN_CONTAINED_SECRET:
        return set()
    scheme = _AUTH_SCHEME.match(secret)
    forms = {secret} | (encodings(scheme.group(1)) if scheme else set())
    if len(secret) >= MIN_ENCODED_SECRET:
        raw = secret.encode()
        for enc in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()):
            forms.add(enc)
            forms.add(enc.rstrip("="))
    return forms


def is_credential_key(key: str) -> bool:
    """A mapping key whose value is a credential (dropped from traces whatever its value)."""
    # Word-based on purpose: `prompt_tokens`/`max_tokens` are metering, `access_token` is not.
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower())
    if any("secret" in w for w in words) or _CRED_WORDS.intersection(words):
        return True
    return any(a == "api" and b == "key" for a, b in zip(words, words[1:]))


def is_secret_param(name: str) -> bool:
    """A `litellm_params` entry that holds a credential (api_key, aws_secret_access_key, ...)."""
    return any(word in name.lower() for word in _SECRET_PARAM_WORDS)


class Redactor:
    """Replaces every known secret (and its encodings) by `[redacted]`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets: tuple[str, ...] = tuple(sorted({s for s in secrets if isinstance(s, str) and s}))
        forms = set().union(*(encodings(s) for s in self.secrets)) if self.secrets else set()
        # longest first, so a secret's base64 is not half-replaced by a shorter secret inside it
        ordered = sorted(forms, key=lambda f: (-len(f), f))
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        self._exact = frozenset(self.secrets)

    def __call__(self, text: str) -> str:
        """`text` with every secret replaced."""
        if text in self._exact:
            return REDACTED
        return self._pattern.sub(REDACTED, text) if self._pattern is not None else text

    def optional(self, text: str | None) -> str | None:
        return None if text is None else self(text)

    def value(self, value: Any) -> Any:
        """A copy of a JSON-like value with secrets replaced and credential-looking keys dropped."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items() if not (isinstance(k, str) and is_credential_key(k))}
        if isinstance(value, (list, tuple)):
            return [self.value(v) for v in value]
        return value


def model_secrets(params: dict[str, Any]) -> list[str]:
    """Credential values among a model's resolved `litellm_params`."""
    return [str(v) for k, v in params.items() if is_secret_param(k) and isinstance(v, (str, int))]


def config_secrets(config: Config) -> list[str]:
    """Every secret a loaded config holds: model credentials, server keys, checker headers and env."""
    out: list[str] = []
    for model in config.models.values():
        out += model.secrets  # every deployment's
    out += config.server.api_keys
    if config.server.state.url:  # a Redis password
        out.append(urlsplit(config.server.state.url).password or "")
    for stage in check_stages(config):
        out += stage.secrets
    return [s for s in out if s]


def check_stages(config: Config) -> list[CheckStage]:
    return [stage for route in config.routes if route.pipeline is not None
            for stage in route.pipeline.stages if isinstance(stage, CheckStage)]


def install(config: Config) -> Redactor:
    """The config's redactor, also handed to every check stage (their critiques pass through it)."""
    redactor = Redactor(config_secrets(config))
    for stage in check_stages(config):
        stage.redact = redactor
    return redactor
