"""`itsproxy traces export`: decision traces -> fine-tuning data.

openai-chat: one `{"messages": [...request..., selected answer]}` per request;
with --verified-only, only answers a sound checker accepted (training-time scaling
on inference-time-verified data). verifier: one `{"prompt", "completion", "label"}`
per hard-checked candidate, to train a learned verifier.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from itsproxy.proxy.config import ConfigError, read_document, resolve_document
from itsproxy.proxy.config.traces import parse_traces

FORMATS = ("openai-chat", "verifier")


def register(subparsers) -> None:
    traces = subparsers.add_parser("traces", help="decision traces (see `traces:` in config.yaml)")
    sub = traces.add_subparsers(dest="traces_command", required=True)
    exp = sub.add_parser("export", help="export traces as fine-tuning data")
    exp.add_argument("--input", default=None, help="trace file (its .N rotations are read too); "
                     "default: traces.path from --config")
    exp.add_argument("--config", default=None, help="config.yaml: default --input and retention_days")
    exp.add_argument("--format", choices=FORMATS, default="openai-chat")
    exp.add_argument("--verified-only", action="store_true", help="only records whose answer passed hard checks")
    exp.add_argument("--since-days", type=float, default=None, help="only records newer than this")
    exp.add_argument("--output", default="-", help="output file, or - for stdout")
    exp.set_defaults(func=cmd_export)


# ---------------------------------------------------------------- reading


def snapshot(path: str) -> list[tuple[str, int]]:
    """(file, size) oldest first, taken under the writers' lock so rotation cannot
    make us read a file twice or miss one; we then read only up to those sizes."""
    from itsproxy.proxy.telemetry.traces import rotated

    lock = None
    try:
        lock = os.open(path + ".lock", os.O_RDONLY)
        fcntl.flock(lock, fcntl.LOCK_SH)
    except OSError:
        lock = None  # a copied trace directory without a lock file: read as is
    try:
        names = [name for _, name in reversed(rotated(path))] + [path]
        return [(n, os.path.getsize(n)) for n in names if os.path.exists(n)]
    finally:
        if lock is not None:
            os.close(lock)


def read_records(path: str, stats: dict[str, int]) -> Iterator[dict[str, Any]]:
    for name, size in snapshot(path):
        with open(name, "rb") as fh:
            data = fh.read(size)
        for raw in data.splitlines():
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                rec = None
            if not isinstance(rec, dict):
                stats["malformed"] += 1
                continue
            stats["records"] += 1
            yield rec


def newer_than(rec: dict[str, Any], cutoff: float | None) -> bool:
    if cutoff is None:
        return True
    try:
        return datetime.fromisoformat(rec["ts"]).timestamp() >= cutoff
    except (KeyError, TypeError, ValueError):
        return False  # no usable timestamp: cannot prove it is recent enough


# ---------------------------------------------------------------- formats


def assistant_message(message: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
    if message.get("tool_calls"):
        out["tool_calls"] = message["tool_calls"]
    return out


def selected_candidate(rec: dict[str, Any]) -> dict[str, Any] | None:
    for c in rec.get("candidates") or []:
        if isinstance(c, dict) and c.get("index") == rec.get("selected") and isinstance(c.get("message"), dict):
            return c
    return None


def request_messages(rec: dict[str, Any]) -> list[dict[str, Any]] | None:
    msgs = (rec.get("request") or {}).get("messages") if isinstance(rec.get("request"), dict) else None
    return msgs if isinstance(msgs, list) and msgs else None


def openai_chat(rec: dict[str, Any], verified_only: bool) -> list[dict[str, Any]]:
    if rec.get("status") != 200 or (verified_only and rec.get("verified") is not True):
        return []
    msgs, winner = request_messages(rec), selected_candidate(rec)
    if msgs is None or winner is None:
        return []
    return [{"messages": [*msgs, assistant_message(winner["message"])]}]


def verifier_rows(rec: dict[str, Any], verified_only: bool) -> list[dict[str, Any]]:
    msgs = request_messages(rec)
    if msgs is None:
        return []
    rows = []
    for c in rec.get("candidates") or []:
        hard = [v for v in (c.get("verdicts") or []) if isinstance(v, dict) and v.get("hard", True)]
        if not hard or not isinstance(c.get("message"), dict):
            continue  # no sound verdict: no trustworthy label
        label = int(all(v.get("passed") is True for v in hard))
        rows.append({"prompt": msgs, "completion": c["message"].get("content"), "label": label})
    return rows


# ---------------------------------------------------------------- command


def _settings(args):
    """--config's traces section (input default and retention), without loading the whole config."""
    if not args.config:
        return None
    try:
        data = read_document(args.config)
        section = data.get("traces") if isinstance(data, dict) else None
        return parse_traces(resolve_document(section, "traces"))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_export(args) -> int:
    settings = _settings(args)
    path = args.input or (settings.path if settings else None)
    if not path:
        print("traces export: give --input, or --config with traces.path", file=sys.stderr)
        return 2
    days = args.since_days if args.since_days is not None else (settings.retention_days if settings else None)
    cutoff = None if days is None else time.time() - days * 86400
    from itsproxy.proxy.telemetry.traces import rotated

    if not os.path.exists(path) and not rotated(path):
        print(f"traces export: no trace files at {path}", file=sys.stderr)
        return 1
    convert = openai_chat if args.format == "openai-chat" else verifier_rows
    stats = {"records": 0, "malformed": 0, "examples": 0}
    out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")
    try:
        for rec in read_records(path, stats):
            if not newer_than(rec, cutoff):
                continue
            for row in convert(rec, args.verified_only):
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                stats["examples"] += 1
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"traces export: {stats['examples']} {args.format} lines from {stats['records']} records "
          f"({stats['malformed']} malformed lines skipped)", file=sys.stderr)
    return 0
