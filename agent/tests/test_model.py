"""Parsing chat-completion responses, and the stdlib-only rule for the agent package."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

from hearth_agent.errors import ProtocolError
from hearth_agent.model import OpenAIChatClient, parse_completion

PACKAGE = Path(__file__).resolve().parent.parent / "hearth_agent"


def _response(message: object, usage: object = None) -> bytes:
    body: dict[str, object] = {"choices": [{"message": message, "finish_reason": "stop"}]}
    if usage is not None:
        body["usage"] = usage
    return json.dumps(body).encode()


def test_tool_calls_are_normalized() -> None:
    call = {"id": "c1", "function": {"name": "list_dir", "arguments": {"path": "."}}}
    usage = {"prompt_tokens": 3, "completion_tokens": 4}
    completion = parse_completion(_response({"content": None, "tool_calls": [call]}, usage))
    assert completion.message == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "list_dir", "arguments": '{"path": "."}'}}
        ],
    }
    assert completion.usage == {"prompt": 3, "completion": 4, "total": 7}
    assert completion.finish_reason == "stop"


def test_missing_usage_counts_zero() -> None:
    assert parse_completion(_response({"content": "hi"})).usage == {"prompt": 0, "completion": 0, "total": 0}


@pytest.mark.parametrize(
    "message",
    [
        {"content": None, "tool_calls": [{"function": {"name": "x"}}]},  # no id to answer to
        {"content": None, "tool_calls": [{"id": "c1"}]},
        {"content": None, "tool_calls": {"id": "c1"}},
        "text",
    ],
)
def test_malformed_messages(message: object) -> None:
    with pytest.raises(ProtocolError):
        parse_completion(_response(message))


def test_client_repr_hides_the_token() -> None:
    client = OpenAIChatClient("http://127.0.0.1:1", "secret-token", "m")
    assert "secret-token" not in repr(client)
    with pytest.raises(ValueError, match="http"):
        OpenAIChatClient("file:///etc/passwd", "t", "m")


def test_agent_package_imports_only_the_standard_library() -> None:
    for source in [*PACKAGE.glob("*.py"), PACKAGE.parent / "loop.py"]:
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top == "hearth_agent", f"{source.name} imports {name}"
