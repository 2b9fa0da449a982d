"""The access log: one JSON line per settled request, on the `itsproxy.access` logger.

Operators grep and ship it (Loki, CloudWatch, jq), so it is one flat object per line.
It carries what a request cost and how it ended, never what was said: no prompt or
answer text, no key (only the key's SHA-256 prefix, the id budgets use). It is fed
from the one settlement (`Services.observe`), so every request appears exactly once,
with the same numbers as /metrics.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import msgspec

from itsproxy.proxy.metering.ledger import RequestReport

log = logging.getLogger("itsproxy.access")
LEVEL_ENV = "ITSPROXY_LOG_LEVEL"  # set by `itsproxy serve` for its worker processes


def record(report: RequestReport) -> dict[str, Any]:
    prompt = completion = errors = 0
    cost, priced, estimated = 0.0, True, False
    for c in report.calls:  # one pass: this runs for every request
        prompt += c.prompt_tokens
        completion += c.completion_tokens
        errors += c.outcome == "error"
        estimated = estimated or c.estimated
        if c.cost_usd is not None:
            cost += c.cost_usd
        elif c.prompt_tokens or c.completion_tokens:
            priced = False
    return {"id": report.id, "route": report.route, "status": report.status,
            "latency_ms": round(report.duration_s * 1000, 1),
            "prompt_tokens": prompt, "completion_tokens": completion,
            "cost_usd": round(cost, 10) if priced else None, "estimated": estimated,
            "upstream_calls": len(report.calls), "upstream_errors": errors,
            "candidates": report.candidates, "degraded": report.degraded, "verified": report.verified,
            "key_id": report.key_id}


_encode = msgspec.json.Encoder().encode  # ~10x json.dumps; the same compact JSON


_direct = False  # set by configure(): `itsproxy serve` writes the lines itself


def access_line(report: RequestReport, outcome: object = None) -> None:
    """A `Services` hook: log one settled request. Never raises: a log must not fail a request.

    Served by `itsproxy serve`, the line goes straight to stderr: the logging module's record,
    caller lookup and handler lock cost several times the line itself, on every request.
    Embedded (create_app in someone else's process) it goes to the `itsproxy.access` logger."""
    try:
        if _direct:
            sys.stderr.write(_encode(record(report)).decode() + "\n")
        elif log.isEnabledFor(logging.INFO):
            log.info(_encode(record(report)).decode())
    except (OSError, ValueError):  # stderr closed or full: the request is still settled
        pass


def configure(level: str) -> None:
    """`itsproxy serve`: the proxy's own log lines (upstream failures, internal errors) to stderr at
    `level`; the access log to stderr as bare JSON lines whatever `level` is (it is switched by
    server.access_log). Records skip what no line here prints (caller, thread and process names):
    the logging HOWTO's "Optimization" switches."""
    global _direct
    logging._srcfile = None  # no caller lookup (a stack walk per record)
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    own = logging.getLogger("itsproxy")
    if not own.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        own.addHandler(handler)
    own.setLevel(level.upper())
    log.setLevel(logging.INFO)
    log.propagate = False
    _direct = True  # stderr is line-buffered: one write per line, as a StreamHandler would
