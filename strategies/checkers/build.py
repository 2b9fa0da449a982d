"""Sound external checkers — the LLM-Modulo "hard verifiers".

A route's `check` stage names one or more checkers; each decides pass/fail for
every candidate and says why (the critique goes back to the model in a repair
loop). Only these can make an answer "verified", so they fail closed: a crash,
a timeout, garbage output or an exception is a failed verdict, never a pass.

    - check:
        command: [python, -m, itsproxy.proxy.demo_checks]  # argv, no shell; JSON payload on stdin
        timeout_s: 5           # default 10 (command, python, http)
        cpu_s: 5               # command: RLIMIT_CPU, default ceil(timeout_s)
        memory_mb: 512         # command: RLIMIT_AS, default 1024
        max_concurrency: 4     # per checker, default 4
        env: {KEY: value}      # command: the only variables passed besides PATH, LANG, HOME, PYTHONPATH
        sandbox: true          # command: bubblewrap sandbox (default; see checkers/sandbox.py's threat model)
        network: false         # command: a network namespace of its own (no network) unless true
        max_processes: 64      # command: RLIMIT_NPROC inside the sandbox
        max_output_bytes: 65536  # command: stdout + stderr; more is a failed verdict
        files: [/abs/path]     # command: extra paths the sandbox shows read-only
        extract: number        # passed through to the pipeline (`check_extractor`)
    - check: {python: "itsproxy.proxy.demo_checks:check_sum"}   # in-process: trusted code only (below)
    - check: {http: {url: "http://127.0.0.1:9000/verify", timeout_s: 5}}
    - check: {json_schema: {type: object, required: [answer]}}
    - check: {regex: "^\\d+$"}

Trust: a `python:` checker runs inside the proxy with all its privileges (its memory holds the
API keys); it is the operator's code and must never execute model output. Anything that runs
what the model wrote belongs in a `command` checker, which is sandboxed (checkers/sandbox.py).
Every critique leaves `check_candidates` through the proxy's redactor (no configured secret —
model keys, server keys, these headers and env values — reaches a client, prompt, log or trace).

The payload every checker sees (`payload_for`):
    {"messages": [...], "candidate": {"role", "content", "tool_calls"?}, "answer": str | None}
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any, Protocol, runtime_checkable

from itsproxy.strategies.checkers import command, http, json_schema, python_entry
from itsproxy.strategies.checkers._common import check_keys
from itsproxy.strategies.types import Candidate, SpecError, Verdict

KINDS: dict[str, Callable[[dict[str, Any], str], Checker]] = {
    "command": command.from_spec,
    "python": python_entry.from_spec,
    "http": http.from_spec,
    "json_schema": json_schema.json_schema_from_spec,
    "regex": json_schema.regex_from_spec,
}
COMMAND_ONLY = ("cpu_s", "memory_mb", "env", *command.COMMAND_KEYS)
STAGE_KEYS = (*KINDS, "timeout_s", "max_concurrency", *COMMAND_ONLY, "extract")


Redact = Callable[[str], str]  # the proxy's redactor, as a port (strategies never import the proxy)


def no_redaction(text: str) -> str:
    return text


@runtime_checkable
class Checker(Protocol):
    name: str
    secrets: tuple[str, ...]  # configured values (headers, env) the proxy must redact everywhere

    async def check(self, payload: dict[str, Any]) -> Verdict: ...


def build_checkers(spec: dict[str, Any], path: str) -> list[Checker]:
    """Validate a `check` stage and build its checkers, in the order written."""
    if not isinstance(spec, dict):
        raise SpecError(path, f"must be a mapping naming at least one of {', '.join(KINDS)}")
    check_keys(spec, STAGE_KEYS, path)
    kinds = [key for key in spec if key in KINDS]
    if not kinds:
        raise SpecError(path, f"names no checker; expected at least one of {', '.join(KINDS)}")
    if "command" not in spec:
        for key in COMMAND_ONLY:
            if key in spec:
                raise SpecError(f"{path}.{key}", "applies only to a 'command' checker")
    check_extractor(spec, path)
    return [KINDS[kind](spec, path) for kind in kinds]


def check_extractor(spec: dict[str, Any], path: str = "check") -> str | None:
    """The stage's `extract` key (an extractor name the pipeline applies), if any."""
    extract = spec.get("extract") if isinstance(spec, dict) else None
    if extract is not None and (not isinstance(extract, str) or not extract):
        raise SpecError(f"{path}.extract", f"must be an extractor name, got {extract!r}")
    return extract


def payload_for(candidate: Candidate, messages: list[dict[str, Any]], answer: Any = ...) -> dict[str, Any]:
    """The JSON a checker receives; `answer` overrides the candidate's own extracted answer."""
    message = candidate.message
    cand: dict[str, Any] = {
        "role": message.get("role", "assistant"),
        "content": message.get("content"),
    }
    if message.get("tool_calls"):
        cand["tool_calls"] = message["tool_calls"]
    return {"messages": messages, "candidate": cand, "answer": candidate.answer if answer is ... else answer}


async def _safe_check(checker: Checker, payload: dict[str, Any], redact: Redact) -> Verdict:
    name = getattr(checker, "name", type(checker).__name__)
    try:
        result = await checker.check(payload)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # fail closed
        result = Verdict(name, False, f"checker error: {type(exc).__name__}: {exc}"[:2000])
    if not isinstance(result, Verdict):
        result = Verdict(name, False, f"checker returned {type(result).__name__}, not a Verdict")
    # The one place a critique enters the pipeline: the its evidence, repair prompts, the 422
    # critiques and traces all read it from here, so it is redacted here.
    return replace(result, critique=redact(result.critique))


async def check_candidates(
    checkers: list[Checker], candidates: list[Candidate], messages: list[dict[str, Any]],
    answer_of: Callable[[Candidate], Any] | None = None, redact: Redact = no_redaction,
) -> None:
    """Run every checker on every candidate concurrently (each checker's own cap
    applies) and append the verdicts, critiques redacted, to `candidate.verdicts` in checker order."""
    if not checkers or not candidates:
        return
    jobs: list[Coroutine[Any, Any, Verdict]] = []
    for cand in candidates:
        payload = payload_for(cand, messages, ... if answer_of is None else answer_of(cand))
        jobs.extend(_safe_check(checker, payload, redact) for checker in checkers)
    verdicts = await asyncio.gather(*jobs)
    k = len(checkers)
    for i, cand in enumerate(candidates):
        cand.verdicts.extend(verdicts[i * k : (i + 1) * k])


async def aclose_checkers(checkers: list[Checker]) -> None:
    for checker in checkers:
        aclose = getattr(checker, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception:
                pass
