"""Format checkers: `json_schema` and `regex`, run in process.

Both look at the extracted answer if there is one, else the candidate's
content, else its first tool call's arguments.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError, best_match

from itsproxy.strategies.types import SpecError, Verdict

from ._common import failed, payload_text, verdict

_MSG_CAP = 300


def _short(text: str) -> str:
    return text if len(text) <= _MSG_CAP else text[:_MSG_CAP] + "…"


def _key_path(parts: Iterable[Any]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


class JsonSchemaChecker:
    secrets: tuple[str, ...] = ()  # configured with nothing secret
    name = "json_schema"

    def __init__(self, validator: Any) -> None:
        self.validator = validator

    async def check(self, payload: dict[str, Any]) -> Verdict:
        text = payload_text(payload)
        if not text or not text.strip():
            return failed(self.name, "The answer is empty; a JSON document is required.")
        try:
            doc = json.loads(text)
        except ValueError as exc:
            return failed(self.name, f"The answer is not valid JSON: {exc}")
        error = best_match(self.validator.iter_errors(doc))
        if error is None:
            return verdict(self.name, True, "The JSON matches the schema.")
        return failed(
            self.name,
            f"The JSON does not match the schema at {error.json_path}: {_short(error.message)}",
        )


class RegexChecker:
    secrets: tuple[str, ...] = ()  # configured with nothing secret
    name = "regex"

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.compiled = re.compile(pattern)

    async def check(self, payload: dict[str, Any]) -> Verdict:
        text = payload_text(payload) or ""
        if self.compiled.search(text):
            return verdict(self.name, True, "The answer matches the required format.")
        return failed(
            self.name,
            f"The answer does not match the required format (regex {_short(self.pattern)!r}).",
        )


def json_schema_from_spec(spec: dict[str, Any], path: str) -> JsonSchemaChecker:
    spath = f"{path}.json_schema"
    schema = spec["json_schema"]
    if not isinstance(schema, dict):
        raise SpecError(spath, f"must be a JSON schema mapping, got {type(schema).__name__}")
    cls: Any = jsonschema.Draft202012Validator
    if "$schema" in schema:
        uri = schema["$schema"]
        # validator_for returns `default` for a $schema it does not know: None is how we tell.
        known = jsonschema.validators.validator_for(schema, default=None)  # type: ignore[arg-type]
        cls = known if isinstance(uri, str) else None
        if cls is None:
            raise SpecError(f"{spath}.$schema", f"unknown $schema {uri!r}")
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise SpecError(spath + _key_path(exc.path), f"invalid JSON schema: {_short(exc.message)}") from None
    return JsonSchemaChecker(cls(schema, format_checker=cls.FORMAT_CHECKER))


def regex_from_spec(spec: dict[str, Any], path: str) -> RegexChecker:
    pattern = spec["regex"]
    if not isinstance(pattern, str):
        raise SpecError(f"{path}.regex", f"must be a regular expression string, got {pattern!r}")
    try:
        return RegexChecker(pattern)
    except re.error as exc:
        raise SpecError(f"{path}.regex", f"invalid regular expression: {exc}") from None
