"""execute_tool: one model tool call in, one tool message out, errors included."""

from __future__ import annotations

from pathlib import Path

import pytest

from hearth_agent.errors import ProtocolError
from hearth_agent.mcp_client import StdioMcpClient, allowlisted_env
from hearth_agent.messages import ToolCall
from hearth_agent.tools import execute_tool
from tests.conftest import SDK_SERVER_COMMAND


def _call(name: str, arguments: str, call_id: str = "call_1") -> ToolCall:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_success_returns_the_tool_message(shared_mcp: StdioMcpClient, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("alpha")
    message = execute_tool(_call("read_file", f'{{"path": "{tmp_path / "a.txt"}"}}', "call_7"), shared_mcp)
    assert message == {"role": "tool", "tool_call_id": "call_7", "content": "alpha", "is_error": False}


@pytest.mark.parametrize(
    ("name", "arguments", "expected"),
    [
        ("read_file", '{"path": "/no/such/file"}', "cannot read /no/such/file"),  # the tool reports isError
        ("read_file", "{}", "path"),  # the SDK rejects missing arguments
        ("read_file", "{oops", "not valid JSON"),
        ("read_file", '"a string"', "must be a JSON object"),
        ("delete_everything", "{}", "unknown tool 'delete_everything'"),
    ],
)
def test_errors_become_error_results(shared_mcp: StdioMcpClient, name: str, arguments: str, expected: str) -> None:
    message = execute_tool(_call(name, arguments), shared_mcp)
    assert message["is_error"] is True
    assert message["tool_call_id"] == "call_1"
    assert message["content"].startswith("Error")
    assert expected in message["content"]


def test_empty_arguments_mean_no_arguments(shared_mcp: StdioMcpClient) -> None:
    message = execute_tool(_call("list_dir", ""), shared_mcp)
    assert message["is_error"] is True  # list_dir needs a path: the server, not a JSON error, says so
    assert "not valid JSON" not in message["content"]


def test_a_dead_server_is_not_a_tool_error(tmp_path: Path) -> None:
    client = StdioMcpClient.start(SDK_SERVER_COMMAND, env=allowlisted_env(str(tmp_path)), cwd=str(tmp_path))
    try:
        with pytest.raises(ProtocolError):
            execute_tool(_call("shell", '{"command": "kill -9 $PPID"}'), client)
    finally:
        client.close()
