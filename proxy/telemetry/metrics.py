"""Prometheus metrics: one `observe()` per finished request, read back by /metrics and the stats JSON.

Everything is fed from a `RequestReport` (built from the request's ledger), so `/metrics`,
`/v1/its/stats` and the response's `usage` are the same numbers.

Multi-process: with `--workers N` the CLI sets `PROMETHEUS_MULTIPROC_DIR` *before*
prometheus_client is imported; every worker then writes its values to mmap files in that
directory, and any worker answering /metrics merges all of them (`read_registry()`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values
from prometheus_client.exposition import choose_encoder

from itsproxy.proxy.metering.ledger import RequestReport

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNROUTED = "(unrouted)"  # the route label of requests refused before routing

# `_created` series double the output and do not exist in multi-process mode; dropping them
# keeps single- and multi-worker /metrics identical in shape.
prometheus_client.disable_created_metrics()

# A dedicated registry, not the global default: nothing else in the process (libraries,
# other tests) leaks into our /metrics, and the module-level metrics register exactly once.
REGISTRY = CollectorRegistry(auto_describe=True)

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
CANDIDATE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 40, 64)
AGREEMENT_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))

REQUESTS = Counter(
    "its_requests_total", "Requests finished, by HTTP status code.",
    ["route", "status"], registry=REGISTRY)
DURATION = Histogram(
    "its_request_duration_seconds", "Wall time of a request, from arrival to last byte.",
    ["route"], buckets=DURATION_BUCKETS, registry=REGISTRY)
UPSTREAM_CALLS = Counter(
    "its_upstream_calls_total", "Upstream model calls, by phase and outcome.",
    ["route", "model", "phase", "outcome"], registry=REGISTRY)
TOKENS = Counter(
    "its_tokens_total", "Tokens spent upstream (what the client pays), kind=prompt|completion.",
    ["route", "model", "phase", "kind"], registry=REGISTRY)
EXTRA_TOKENS = Counter(
    "its_extra_tokens_total", "Tokens spent beyond the selected candidate's own.",
    ["route"], registry=REGISTRY)
SELECTED_TOKENS = Counter(
    "its_selected_tokens_total", "Tokens of the selected candidate (prompt + completion).",
    ["route"], registry=REGISTRY)
COST = Counter(
    "its_cost_usd_total", "Upstream cost in USD; only calls with a known price are added.",
    ["route", "model", "phase"], registry=REGISTRY)
COST_UNKNOWN = Counter(
    "its_cost_unknown_calls_total", "Calls that spent tokens but whose price is unknown.",
    ["route", "model"], registry=REGISTRY)
CANDIDATES = Histogram(
    "its_candidates", "Candidates drawn per request.",
    ["route"], buckets=CANDIDATE_BUCKETS, registry=REGISTRY)
AGREEMENT = Histogram(
    "its_selection_agreement", "Winner's vote share (0..1) when a vote selected it.",
    ["route"], buckets=AGREEMENT_BUCKETS, registry=REGISTRY)
VERIFIED = Counter(
    "its_verified_total", "Requests whose winner went through a hard check, result=pass|fail.",
    ["route", "result"], registry=REGISTRY)
DISAGREEMENTS = Counter(
    "its_judge_checker_disagreements_total", "Candidates where the LLM judge and a checker disagreed.",
    ["route"], registry=REGISTRY)
DEGRADED = Counter(
    "its_degraded_total", "Answers selected among fewer candidates than requested (its.degraded).",
    ["route"], registry=REGISTRY)
INFLIGHT = Gauge(
    "its_inflight_requests", "Requests being handled right now (all workers).",
    multiprocess_mode="livesum", registry=REGISTRY)
CANDIDATES_SAVED = Counter(
    "its_candidates_saved_total", "Candidates not drawn thanks to adaptive stopping.",
    ["route"], registry=REGISTRY)
STATE_ERRORS = Counter(
    "its_state_errors_total", "Shared-state operations that failed or were skipped while a store was down "
    "(the on_state_error policy answered instead).", ["store"], registry=REGISTRY)
TTFT = Histogram(
    "its_time_to_first_token_seconds", "Streams: arrival to the answer's first byte leaving the proxy.",
    ["route"], buckets=DURATION_BUCKETS, registry=REGISTRY)
EXTRA_COST = Counter(
    "its_extra_cost_usd_total", "USD spent beyond one plain call for the selected answer (priced calls only).",
    ["route"], registry=REGISTRY)
COST_SAVED = Counter(
    "its_cost_saved_estimate_usd_total", "Estimated USD not spent thanks to adaptive stopping.",
    ["route"], registry=REGISTRY)
TOKENS_SAVED = Counter(
    "its_tokens_saved_estimate_total", "Estimated tokens not spent thanks to adaptive stopping.",
    ["route"], registry=REGISTRY)


def multiproc_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


# prometheus_client picks its value storage when it is first imported; if the env var only
# appeared later, this process's values live in memory and a multi-process /metrics misses them.
if multiproc_dir() and values.ValueClass is values.MutexValue:
    log.warning("%s was set after prometheus_client was imported; this process's metrics "
                "will not reach the multi-process /metrics", MULTIPROC_ENV)


def observe(report: RequestReport) -> None:
    """Record everything about one finished request. Never raises: metrics must not fail a request."""
    try:
        _observe(report)
    except Exception:  # noqa: BLE001 - a metrics bug must not turn a served answer into a 500
        log.exception("metrics.observe failed for route %r", getattr(report, "route", None))


def refused(status: int) -> None:
    """Count a response refused before it reached the request path (401, 404, 405): those that
    do reach it are counted once, by `observe`, when their exchange settles."""
    try:
        _child(REQUESTS, UNROUTED, str(status)).inc()
    except Exception:  # noqa: BLE001 - a metrics bug must not change the answer
        log.exception("metrics.refused failed")


# labels() validates and locks on every call; the children it returns never change, so each
# label combination is looked up once (bounded by the same cardinality as the metrics themselves).
_CHILDREN: dict[tuple, object] = {}


def _child(metric, *values):
    key = (id(metric), values)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*values)
    return child


def _observe(r: RequestReport) -> None:
    route = r.route
    _child(REQUESTS, route, str(r.status)).inc()
    _child(DURATION, route).observe(max(0.0, r.duration_s))
    for call in r.calls:
        _observe_call(route, call)
    _add(SELECTED_TOKENS, r.selected.total_tokens, route)
    _add(EXTRA_TOKENS, r.extra_tokens, route)
    if r.candidates > 0:
        _child(CANDIDATES, route).observe(r.candidates)
    if r.agreement is not None:
        _child(AGREEMENT, route).observe(min(1.0, max(0.0, r.agreement)))
    if r.verified is not None:
        _child(VERIFIED, route, "pass" if r.verified else "fail").inc()
    _add(DISAGREEMENTS, r.judge_checker_disagreements, route)
    _add(CANDIDATES_SAVED, r.candidates_saved, route)
    _add(TOKENS_SAVED, r.tokens_saved_estimate, route)
    _add(DEGRADED, 1 if r.degraded else 0, route)
    _add(EXTRA_COST, r.extra_cost_usd, route)
    _add(COST_SAVED, r.saved_cost_usd_estimate, route)
    if r.ttft_s is not None:
        _child(TTFT, route).observe(max(0.0, r.ttft_s))


def _add(counter, amount, *labels) -> None:
    """Add a non-negative amount. The series exists from the first request on (a 0, not a gap,
    for rate() and the stats); after that a zero costs no lock."""
    child = _child(counter, *labels)
    amount = _nonneg(amount)
    if amount:
        child.inc(amount)


def _observe_call(route: str, call) -> None:
    _child(UPSTREAM_CALLS, route, call.model, call.phase, call.outcome).inc()
    _add(TOKENS, call.prompt_tokens, route, call.model, call.phase, "prompt")
    _add(TOKENS, call.completion_tokens, route, call.model, call.phase, "completion")
    if call.cost_usd is not None:
        _add(COST, call.cost_usd, route, call.model, call.phase)
    elif call.total_tokens:
        _child(COST_UNKNOWN, route, call.model).inc()


def _nonneg(x):
    # Counter.inc() raises on negative amounts; a negative figure is a ledger bug, not a refund.
    return x if x and x > 0 else 0


@contextlib.contextmanager
def inflight() -> Iterator[None]:
    """Count a request as in flight for the duration of the `with` block."""
    INFLIGHT.inc()
    try:
        yield
    finally:
        INFLIGHT.dec()


def read_registry() -> CollectorRegistry:
    """The registry to read from: merged mmap files in multi-process mode, else our own."""
    path = multiproc_dir()
    if path:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)
        return registry
    return REGISTRY


def render(accept_header: str | None) -> tuple[bytes, str]:
    """Body and content type for GET /metrics (OpenMetrics when the scraper asks for it)."""
    encoder, content_type = choose_encoder(accept_header or "")
    return encoder(read_registry()), content_type


def mark_process_dead(pid: int) -> None:
    """Drop a dead worker's live gauge files, so its in-flight count stops being summed."""
    if multiproc_dir():
        multiprocess.mark_process_dead(pid, multiproc_dir())
