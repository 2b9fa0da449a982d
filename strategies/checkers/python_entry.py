"""`check: {python: "pkg.module:function"}` — an in-process callable decides.

The callable receives the payload dict and returns `bool` or
`(bool, critique)`; it may be sync (run in a worker thread) or async.
Anything else — another return type, an exception, a timeout — fails.
Note: a sync callable that times out keeps its thread until it returns.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import inspect
import re
from collections.abc import Callable
from typing import Any

from itsproxy.strategies.types import SpecError, Verdict

from ._common import (
    DEFAULT_CONCURRENCY,
    DEFAULT_TIMEOUT_S,
    LoopLocal,
    failed,
    positive_int,
    positive_number,
    secs,
    verdict,
)

_ENTRY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object whose __call__ is async, not callable()
    )


def _interpret(result: Any) -> tuple[bool, str] | str:
    """(passed, critique), or a string saying why the result is unusable."""
    if isinstance(result, bool):
        return result, ""
    if isinstance(result, (tuple, list)) and len(result) == 2 and isinstance(result[0], bool):
        critique = result[1]
        if critique is None:
            critique = ""
        if not isinstance(critique, str):
            return f"critique must be a string, got {type(critique).__name__}"
        return result[0], critique
    text = repr(result)
    if len(text) > 80:
        text = text[:80] + "…"
    return f"returned {text} ({type(result).__name__}); expected bool or (bool, critique)"


class PythonChecker:
    secrets: tuple[str, ...] = ()  # configured with nothing secret
    def __init__(
        self,
        entry: str,
        fn: Callable[..., Any],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self.name = f"python:{entry}"
        self.fn = fn
        self.timeout_s = timeout_s
        self._async = _is_async(fn)
        self._limit = LoopLocal(max_concurrency)

    async def check(self, payload: dict[str, Any]) -> Verdict:
        payload = copy.deepcopy(payload)  # a checker must not alter what others see
        async with self._limit.sem():
            try:
                async with asyncio.timeout(self.timeout_s):
                    if self._async:
                        result = await self.fn(payload)
                    else:
                        result = await asyncio.to_thread(self.fn, payload)
                    if inspect.isawaitable(result):
                        result = await result
            except TimeoutError:
                return failed(self.name, f"checker timed out after {secs(self.timeout_s)}")
            except Exception as exc:
                return failed(self.name, f"checker raised {type(exc).__name__}: {exc}")
        outcome = _interpret(result)
        if isinstance(outcome, str):
            return failed(self.name, f"checker {outcome}")
        return verdict(self.name, *outcome)


def load_entry(entry: Any, path: str) -> Callable[..., Any]:
    if not isinstance(entry, str) or not _ENTRY.match(entry):
        raise SpecError(path, f"must be 'package.module:function', got {entry!r}")
    module_name, attr = entry.split(":", 1)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raised on import
        raise SpecError(path, f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SpecError(path, f"{module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise SpecError(path, f"{entry!r} is not callable ({type(obj).__name__})")
    fn: Callable[..., Any] = obj
    return fn


def from_spec(spec: dict[str, Any], path: str) -> PythonChecker:
    entry = spec["python"]
    fn = load_entry(entry, f"{path}.python")
    return PythonChecker(
        entry,
        fn,
        timeout_s=positive_number(spec, "timeout_s", path, DEFAULT_TIMEOUT_S),
        max_concurrency=positive_int(spec, "max_concurrency", path, DEFAULT_CONCURRENCY),
    )
