"""The simulator's settings: the `SimConfig` dataclass, per-model `@options`, and the CLI.

The same names are used everywhere: a `SimConfig` field `fail_rate` is the model
option `sim@fail_rate=0.3`, the `POST /control` key `fail_rate` and the CLI flag
`--fail-rate`.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any

BAD_USAGE = ("negative", "string", "list", "missing")


@dataclass
class SimConfig:
    seed: int = 0
    accuracy: tuple[float, float] = (0.35, 0.95)  # p of a correct sample, uniform per "hard" question
    easy_share: float = 0.0  # share of questions (by hash) with p uniform in [0.90, 0.99]
    common_wrong: float = 0.5  # share of wrong samples that are the question's common wrong answer
    boosts: dict[str, float] = field(default_factory=lambda: {"step by step": 0.15})
    critique_gain: float = 0.8  # p -> p + (1 - p) * gain after a back-prompt
    no_n: bool = False  # reject n > 1 with HTTP 400
    max_n: int | None = None  # silently return at most this many choices
    stream_delay_ms: float = 0.0  # sleep before each streamed content chunk
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    fail_rate: float = 0.0
    fail_status: int = 500
    hang: bool = False  # never answer
    no_usage: bool = False  # omit usage (responses and usage chunks)
    judge_tpr: float = 0.8  # P(judge believes correct | correct)
    judge_fpr: float = 0.2  # P(judge believes correct | wrong)
    judge_garbage: float = 0.0  # share of verifier replies that are unparseable
    reward_noise: float = 0.3  # std of the Gaussian noise on /reward scores
    step_accuracy: float = 0.85  # step-wise mode: P(a step's result is right)
    step_signal: float = 0.5  # step-wise mode: how much a step's logprob says about it (0 none, 1 strong)
    # Wire faults (see `faults`): all off by default.
    retry_after_s: int | None = None  # Retry-After header on simulated failures
    refuse: bool = False
    reset_mid_body: bool = False
    truncate_stream: bool = False
    no_done: bool = False
    malformed_chunk: bool = False
    sse_multiline: bool = False
    sse_comments: bool = False
    crlf: bool = False
    json_to_stream: bool = False
    html_reply: bool = False
    bad_usage: str | None = None  # negative | string | list | missing
    bad_choices: bool = False
    object_content: bool = False
    trickle_ms: float = 0.0
    huge_body_mb: float = 0.0
    echo_key: bool = False  # 401 whose error message, param and code echo the bearer key it was sent

    def __post_init__(self) -> None:
        self.accuracy = parse_accuracy(self.accuracy)
        self.seed = int(self.seed)
        self.fail_status = int(self.fail_status)
        self.boosts = {str(k): float(v) for k, v in dict(self.boosts or {}).items()}
        if self.max_n is not None:
            self.max_n = int(self.max_n)
            if self.max_n < 1:
                raise ValueError("max_n must be >= 1")
        for name in ("easy_share", "common_wrong", "critique_gain", "fail_rate",
                     "judge_tpr", "judge_fpr", "judge_garbage", "step_accuracy", "step_signal"):
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
            setattr(self, name, value)
        if self.retry_after_s is not None:
            self.retry_after_s = int(self.retry_after_s)
            if self.retry_after_s < 0:
                raise ValueError("retry_after_s must be >= 0")
        if self.bad_usage is not None and self.bad_usage not in BAD_USAGE:
            raise ValueError(f"bad_usage must be one of {', '.join(BAD_USAGE)}, got {self.bad_usage!r}")
        for name in ("stream_delay_ms", "latency_ms", "latency_jitter_ms", "reward_noise", "trickle_ms",
                     "huge_body_mb"):
            value = float(getattr(self, name))
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
            setattr(self, name, value)
        if not 400 <= self.fail_status <= 599:
            raise ValueError(f"fail_status must be an HTTP error status, got {self.fail_status}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["accuracy"] = list(self.accuracy)
        return d

    def updated(self, changes: dict[str, Any]) -> SimConfig:
        """A copy with `changes` applied (unknown keys raise ValueError)."""
        changes = {ALIASES.get(k, k): v for k, v in changes.items()}
        unknown = sorted(set(changes) - FIELDS.keys())
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(SimConfig)}
BOOL_FIELDS = {"no_n", "hang", "no_usage", "refuse", "reset_mid_body", "truncate_stream", "no_done",
               "malformed_chunk", "sse_multiline", "sse_comments", "crlf", "json_to_stream", "html_reply",
               "bad_choices", "object_content", "echo_key"}
INT_FIELDS = {"seed", "max_n", "fail_status", "retry_after_s"}
STR_FIELDS = {"bad_usage"}
ALIASES = {"acc": "accuracy", "fewer_choices": "max_n"}


def parse_accuracy(value: Any) -> tuple[float, float]:
    parts: list[Any]
    if isinstance(value, str):
        parts = [p for p in value.replace(":", ",").split(",") if p.strip()]
    elif isinstance(value, int | float):
        parts = [value, value]
    else:
        parts = list(value)
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise ValueError(f"accuracy must be 'lo,hi', got {value!r}")
    lo, hi = float(parts[0]), float(parts[1])
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"accuracy must satisfy 0 <= lo <= hi <= 1, got {lo},{hi}")
    return (lo, hi)


def _convert(name: str, raw: str | None) -> Any:
    if name in BOOL_FIELDS:
        if raw is None:
            return True
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"option {name!r} expects a boolean, got {raw!r}")
    if raw is None:
        raise ValueError(f"option {name!r} needs a value ({name}=...)")
    if name == "accuracy":
        return parse_accuracy(raw)
    if name in INT_FIELDS:
        return int(raw)
    if name in STR_FIELDS:
        return raw
    return float(raw)


def split_model(model: str) -> tuple[str, list[str]]:
    """'openai/sim@no_n@max_n=2' -> ('sim', ['no_n', 'max_n=2'])."""
    base, *opts = model.split("@")
    if "/" in base:
        base = base.rsplit("/", 1)[1]
    return base or "sim", [o for o in opts if o]


def parse_model_options(model: str) -> tuple[str, dict[str, Any]]:
    """The base model name and the `SimConfig` overrides its `@options` carry.

    Raises ValueError naming the offending option.
    """
    base, opts = split_model(model)
    overrides: dict[str, Any] = {}
    for opt in opts:
        key, sep, raw = opt.partition("=")
        name = key.strip().replace("-", "_")
        name = ALIASES.get(name, name)
        if name not in FIELDS or name == "boosts":
            raise ValueError(f"unknown model option {key.strip()!r} in model {model!r}")
        try:
            overrides[name] = _convert(name, raw if sep else None)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad model option {opt!r}: {exc}") from None
    return base, overrides


def config_for_model(config: SimConfig, model: str) -> tuple[str, SimConfig]:
    base, overrides = parse_model_options(model)
    return base, (dataclasses.replace(config, **overrides) if overrides else config)


# ---------------------------------------------------------------- CLI

_HELP = {
    "seed": "server seed (question difficulty, common wrong answers, unseeded sampling)",
    "accuracy": "range 'lo,hi' of P(correct) for hard questions",
    "easy_share": "share of questions that are easy (P(correct) in [0.90, 0.99])",
    "common_wrong": "share of wrong samples that are the question's common wrong answer",
    "critique_gain": "after a back-prompt, p -> p + (1 - p) * gain",
    "no_n": "reject n > 1 with HTTP 400",
    "max_n": "return at most this many choices",
    "stream_delay_ms": "delay before each streamed content chunk",
    "latency_ms": "added latency per request",
    "latency_jitter_ms": "uniform random extra latency",
    "fail_rate": "share of requests answered with an error",
    "fail_status": "HTTP status of simulated failures",
    "hang": "never answer",
    "no_usage": "omit usage from responses",
    "judge_tpr": "P(judge says correct | correct)",
    "judge_fpr": "P(judge says correct | wrong)",
    "judge_garbage": "share of unparseable verifier replies",
    "reward_noise": "std of the noise on reward scores",
    "step_accuracy": "step-wise mode: P(a step is right)",
    "step_signal": "step-wise mode: how much step logprobs say about correctness (0-1)",
    "retry_after_s": "Retry-After header (seconds) on simulated failures",
    "refuse": "reset the connection without answering",
    "reset_mid_body": "send half the body, then reset the connection",
    "echo_key": "answer 401 echoing the bearer key in error.message, param and code",
    "truncate_stream": "end streams halfway: no finish_reason, no [DONE]",
    "no_done": "end streams without data: [DONE]",
    "malformed_chunk": "a non-JSON data line in the middle of streams",
    "sse_multiline": "split each SSE event's JSON over several data: lines",
    "sse_comments": "': ping' comment lines between SSE events",
    "crlf": "CRLF line endings in streams",
    "json_to_stream": "answer stream requests with plain JSON",
    "html_reply": "answer 200 text/html",
    "bad_usage": "usage that is negative|string|list|missing",
    "bad_choices": "choices: [1, \"two\", null]",
    "object_content": "message content is an object",
    "trickle_ms": "pause between 64-byte pieces of the body",
    "huge_body_mb": "pad choice 0's text with this many MB",
}


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per `SimConfig` field (`--fail-rate`, `--no-n`, `--boost TEXT=DELTA`...).

    `--host`/`--port` are added too unless the parser already has them.
    """
    existing = getattr(parser, "_option_string_actions", {})
    if "--host" not in existing:
        parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    if "--port" not in existing:
        parser.add_argument("--port", type=int, default=8001, help="port to bind (0 = any free port)")
    for name, f in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        if name == "boosts":
            parser.add_argument("--boost", dest="sim_boosts", action="append", metavar="TEXT=DELTA",
                                help="augmenting substring and its accuracy delta (repeatable; "
                                     "replaces the default 'step by step=0.15')")
            parser.add_argument("--no-boosts", dest="sim_no_boosts", action="store_true", default=None,
                                help="no augmenting substrings")
            continue
        dest = "sim_" + name
        default: Any = f.default
        if name in BOOL_FIELDS:
            parser.add_argument(flag, dest=dest, action="store_true", default=None, help=_HELP.get(name))
            continue
        shown = ",".join(map(str, default)) if name == "accuracy" else default
        kind = str if name == "accuracy" or name in STR_FIELDS else (int if name in INT_FIELDS else float)
        parser.add_argument(flag, dest=dest, type=kind, default=None, metavar=name.upper(),
                            help=f"{_HELP.get(name, name)} (default {shown})")


def config_from_args(namespace: argparse.Namespace) -> SimConfig:
    values: dict[str, Any] = {}
    for name in FIELDS:
        value = getattr(namespace, "sim_" + name, None)
        if value is not None:
            values[name] = value
    boosts = getattr(namespace, "sim_boosts", None)
    if boosts:
        parsed: dict[str, float] = {}
        for item in boosts:
            text, sep, delta = item.rpartition("=")
            if not sep or not text:
                raise ValueError(f"--boost expects TEXT=DELTA, got {item!r}")
            parsed[text] = float(delta)
        values["boosts"] = parsed
    if getattr(namespace, "sim_no_boosts", None):
        values["boosts"] = {}
    return SimConfig(**values)
