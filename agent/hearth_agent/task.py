"""The task file hearth-guest hands the agent, and its validation.

Schema (a JSON object; unknown fields are rejected so a typo can't silently drop a limit):

    prompt          str, non-empty      what the user asked for
    model           str, non-empty      model name sent to the gateway
    gateway_url     str                 http(s) base URL; the agent POSTs {gateway_url}/v1/chat/completions
    gateway_token   str, non-empty      per-task token for the gateway (not the upstream API key);
                                        sent only in the Authorization header, never logged
    max_steps       int >= 1            model calls allowed
    max_tokens      int >= 1            token budget for the whole run (sum of usage.total_tokens)
    timeout_s       number > 0          wall-clock limit for the whole run, MCP server start included
    mcp_command     [str, ...]          argv of the MCP tool server, e.g. ["/.hearth/hearth-guest", "mcp"]
    workspace       str                 existing directory; the MCP server's working directory
    trajectory_path str                 JSON Lines trajectory, appended as the run goes
    result_path     str                 final result JSON, always written
    system_prompt   str (optional)      replaces the default system prompt
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, NotRequired, TypedDict
from urllib.parse import urlsplit

from .errors import TaskError


class TaskSpec(TypedDict):
    prompt: str
    model: str
    gateway_url: str
    gateway_token: str
    max_steps: int
    max_tokens: int
    timeout_s: float
    mcp_command: list[str]
    workspace: str
    trajectory_path: str
    result_path: str
    system_prompt: NotRequired[str]


_STRING_FIELDS = ("prompt", "model", "gateway_url", "gateway_token", "workspace", "trajectory_path", "result_path")
_INT_FIELDS = ("max_steps", "max_tokens")
_REQUIRED = (*_STRING_FIELDS, *_INT_FIELDS, "timeout_s", "mcp_command")
_OPTIONAL = ("system_prompt",)


def load_task(path: str | os.PathLike[str]) -> TaskSpec:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise TaskError("<file>", f"cannot read {os.fspath(path)}: {exc.strerror or exc}") from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TaskError("<file>", f"{os.fspath(path)} is not valid JSON: {exc}") from exc
    return parse_task(raw)


def parse_task(raw: object) -> TaskSpec:
    if not isinstance(raw, dict):
        raise TaskError("<root>", "must be a JSON object")
    unknown = sorted(set(raw) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise TaskError(unknown[0], "unknown field")
    for field in _REQUIRED:
        if field not in raw:
            raise TaskError(field, "missing")
    _check_fields(raw)
    timeout, command = raw["timeout_s"], raw["mcp_command"]

    task: TaskSpec = {
        "prompt": raw["prompt"],
        "model": raw["model"],
        "gateway_url": raw["gateway_url"],
        "gateway_token": raw["gateway_token"],
        "max_steps": raw["max_steps"],
        "max_tokens": raw["max_tokens"],
        "timeout_s": float(timeout),
        "mcp_command": list(command),
        "workspace": raw["workspace"],
        "trajectory_path": raw["trajectory_path"],
        "result_path": raw["result_path"],
    }
    if "system_prompt" in raw:
        task["system_prompt"] = raw["system_prompt"]
    return task


def _check_fields(raw: dict[str, Any]) -> None:
    for field in _STRING_FIELDS:
        _require_text(raw, field)
    for field in _INT_FIELDS:
        value = raw[field]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TaskError(field, f"must be an integer >= 1, got {value!r}")
    timeout = raw["timeout_s"]
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not math.isfinite(timeout) or timeout <= 0:
        raise TaskError("timeout_s", f"must be a positive number, got {timeout!r}")
    command = raw["mcp_command"]
    if not isinstance(command, list) or not command or not all(isinstance(a, str) and a for a in command):
        raise TaskError("mcp_command", "must be a non-empty list of non-empty strings")
    url = urlsplit(raw["gateway_url"])
    if url.scheme not in ("http", "https") or not url.hostname:
        raise TaskError("gateway_url", "must be an http:// or https:// URL with a host")
    if not Path(raw["workspace"]).is_dir():
        raise TaskError("workspace", f"{raw['workspace']!r} is not an existing directory")
    if "system_prompt" in raw:
        _require_text(raw, "system_prompt")


def _require_text(raw: dict[str, Any], field: str) -> None:
    value = raw[field]
    if not isinstance(value, str) or not value.strip():
        raise TaskError(field, "must be a non-empty string")
