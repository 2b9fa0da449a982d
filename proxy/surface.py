"""What a surface hands the one request path (proxy/scaling.py): the `Call` its wire format
translates into, and the protocols it renders outcomes, errors and relayed streams through.

Surfaces (proxy/http/) import this, not the request path itself: they translate, they never run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from itsproxy.proxy.errors import ApiError
from itsproxy.proxy.outcome import Outcome
from itsproxy.proxy.upstream.replies import Wire


@dataclass
class Call:
    """One client request, as every surface hands it over."""

    model: str
    messages: list[dict[str, Any]]  # the conversation the strategies see
    params: dict[str, Any] = field(default_factory=dict)  # client parameters forwarded upstream
    stream: bool = False
    include_usage: bool = False
    n: int | None = None  # the client's own n (best_of on completions): candidates it wants compared
    its: dict[str, Any] = field(default_factory=dict)  # per-request route adjustments (extra_body its)
    returned: int = 1  # choices the client gets back (its n)
    prompt: str | None = None  # completions: the raw prompt
    echo: bool = False  # completions: the prompt before each choice's text
    text_logprobs: int | None = None  # completions: logprobs rendered in that API's shape
    native: dict[str, Any] = field(default_factory=dict)  # the body a passthrough forwards as it came


class ScalingStream(Protocol):
    """How a surface streams a scaling route's outcome."""

    def opening(self) -> list[bytes]: ...
    def answer(self, outcome: Outcome) -> list[bytes]: ...
    def error(self, err: ApiError) -> list[bytes]: ...


class Relay(Protocol):
    """How a surface relays a passthrough route's upstream stream."""

    def feed(self, chunk: dict[str, Any]) -> list[bytes]: ...
    def end(self, its: dict[str, Any], usage: dict[str, int]) -> list[bytes]: ...
    def error(self, err: ApiError) -> list[bytes]: ...


class Surface(Protocol):
    wire: Wire  # the upstream endpoint a passthrough route forwards to

    def parse(self, body: Any) -> Call: ...
    def check_scaling(self, call: Call) -> None: ...  # what a scaling route cannot do with this call: 400
    def upstream_body(self, call: Call) -> dict[str, Any]: ...
    def render(self, outcome: Outcome, call: Call) -> dict[str, Any]: ...
    def render_passthrough(self, resp: dict[str, Any], its: dict[str, Any],
                           usage: dict[str, int]) -> dict[str, Any]: ...
    def scaling_stream(self, call: Call) -> ScalingStream: ...
    def relay(self, call: Call) -> Relay: ...
