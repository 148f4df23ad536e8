"""Task validation: every bad field is named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hearth_agent.errors import TaskError
from hearth_agent.task import load_task, parse_task


def _valid(tmp_path: Path) -> dict[str, Any]:
    return {
        "prompt": "fix it",
        "model": "m",
        "gateway_url": "http://10.231.0.1:8088",
        "gateway_token": "t",
        "max_steps": 5,
        "max_tokens": 1000,
        "timeout_s": 30,
        "mcp_command": ["/.hearth/hearth-guest", "mcp"],
        "workspace": str(tmp_path),
        "trajectory_path": str(tmp_path / "t.jsonl"),
        "result_path": str(tmp_path / "r.json"),
    }


def test_valid_task(tmp_path: Path) -> None:
    raw = _valid(tmp_path) | {"system_prompt": "be brief"}
    task = parse_task(raw)
    assert task["timeout_s"] == 30.0
    assert isinstance(task["timeout_s"], float)
    assert task["system_prompt"] == "be brief"
    path = tmp_path / "task.json"
    path.write_text(json.dumps(raw))
    assert load_task(path) == task


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prompt", ""),
        ("model", 3),
        ("gateway_url", "ftp://host"),
        ("gateway_url", "http://"),
        ("gateway_token", "  "),
        ("max_steps", 0),
        ("max_steps", True),
        ("max_tokens", 1.5),
        ("timeout_s", -1),
        ("timeout_s", float("inf")),
        ("timeout_s", "10"),
        ("mcp_command", []),
        ("mcp_command", "hearth-guest mcp"),
        ("mcp_command", ["hearth-guest", ""]),
        ("workspace", "/no/such/dir"),
        ("system_prompt", ""),
    ],
)
def test_bad_field_is_named(tmp_path: Path, field: str, value: object) -> None:
    with pytest.raises(TaskError, match=f"'{field}'") as caught:
        parse_task(_valid(tmp_path) | {field: value})
    assert caught.value.field == field


def test_missing_and_unknown_fields(tmp_path: Path) -> None:
    raw = _valid(tmp_path)
    del raw["max_tokens"]
    with pytest.raises(TaskError, match="'max_tokens': missing"):
        parse_task(raw)
    with pytest.raises(TaskError, match="'max_step': unknown field"):
        parse_task(_valid(tmp_path) | {"max_step": 3})


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="cannot read"):
        load_task(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(TaskError, match="not valid JSON"):
        load_task(bad)
    bad.write_text("[]")
    with pytest.raises(TaskError, match="JSON object"):
        load_task(bad)
