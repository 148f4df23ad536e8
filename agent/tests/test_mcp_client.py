"""StdioMcpClient against the official-SDK server, a hand-written server, and servers that fail."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from hearth_agent.errors import ProtocolError, TimeLimitReached, ToolError
from hearth_agent.mcp_client import StdioMcpClient, allowlisted_env
from tests.conftest import SDK_SERVER_COMMAND, TOOL_NAMES

HANDWRITTEN = [sys.executable, str(Path(__file__).with_name("handwritten_mcp_server.py"))]


def _start(argv: list[str], cwd: Path, **kwargs: float) -> StdioMcpClient:
    return StdioMcpClient.start(argv, env=allowlisted_env(str(cwd)), cwd=str(cwd), **kwargs)


def test_sdk_server_handshake_and_tools(shared_mcp: StdioMcpClient) -> None:
    assert shared_mcp.protocol_version == "2025-06-18"
    assert shared_mcp.server_info["name"] == "hearth-test-tools"
    tools = {t["name"]: t for t in shared_mcp.list_tools()}
    assert set(tools) == TOOL_NAMES
    assert tools["edit_file"]["inputSchema"]["required"] == ["path", "old", "new"]
    assert "command" in tools["shell"]["inputSchema"]["properties"]


def test_sdk_server_tool_results(shared_mcp: StdioMcpClient, tmp_path: Path) -> None:
    target = tmp_path / "note.txt"
    wrote = shared_mcp.call_tool("write_file", {"path": str(target), "content": "hello"})
    assert not wrote.is_error
    assert target.read_text() == "hello"
    read = shared_mcp.call_tool("read_file", {"path": str(target)})
    assert (read.text, read.is_error) == ("hello", False)
    missing = shared_mcp.call_tool("read_file", {"path": str(tmp_path / "absent")})
    assert missing.is_error
    assert "absent" in missing.text


@pytest.mark.parametrize("version", ["2025-03-26", "2024-11-05"])
def test_older_protocol_versions_pagination_and_server_ping(tmp_path: Path, version: str) -> None:
    with _start([*HANDWRITTEN, version], tmp_path) as client:
        assert client.protocol_version == version
        assert [t["name"] for t in client.list_tools()] == ["echo", "sleep"]
        output = client.call_tool("echo", {"x": 1})  # the server logs and pings us before answering
        assert (output.text, output.is_error) == ('{"x": 1}', False)


def test_unsupported_protocol_version_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError, match="2099-01-01"):
        _start([*HANDWRITTEN, "2099-01-01"], tmp_path)


def test_slow_tool_times_out_and_the_late_answer_is_skipped(tmp_path: Path) -> None:
    with _start([*HANDWRITTEN, "2025-06-18"], tmp_path, tool_timeout_s=0.3) as client:
        client.list_tools()
        with pytest.raises(ToolError, match="did not answer"):
            client.call_tool("sleep", {"seconds": 1})
        # The server's late answer to the abandoned call arrives first; the client must skip it.
        client.tool_timeout_s = 30.0
        assert client.call_tool("echo", {"after": True}).text == '{"after": true}'


def test_run_deadline_turns_a_slow_tool_into_time_limit(tmp_path: Path) -> None:
    with _start([*HANDWRITTEN, "2025-06-18"], tmp_path, deadline=time.monotonic() + 3.0) as client:
        client.list_tools()
        with pytest.raises(TimeLimitReached):
            client.call_tool("sleep", {"seconds": 10})


def test_server_that_exits_at_once_is_reported_with_its_code_and_stderr(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; sys.stderr.write('no tools for you\\n'); sys.exit(3)"]
    with pytest.raises(ProtocolError, match=r"exited with code 3.*no tools for you"):
        _start(argv, tmp_path)


def test_server_that_dies_mid_session(tmp_path: Path) -> None:
    client = _start(SDK_SERVER_COMMAND, tmp_path)
    client.list_tools()
    with pytest.raises(ProtocolError, match="exited with code -9"):
        client.call_tool("shell", {"command": "kill -9 $PPID"})
    with pytest.raises(ProtocolError, match="exited"):
        client.call_tool("list_dir", {"path": "."})
    client.close()
    client.close()  # idempotent


def test_missing_server_binary(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError, match="cannot start the MCP server"):
        _start([str(tmp_path / "no-such-hearth-guest"), "mcp"], tmp_path)


def test_close_stops_a_server_that_ignores_stdin_eof(tmp_path: Path) -> None:
    script = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); sys.stdin.read(); time.sleep(60)"
    client = StdioMcpClient([sys.executable, "-c", script], env=allowlisted_env(str(tmp_path)), cwd=str(tmp_path))
    client.close()  # stdin EOF, then SIGTERM (ignored), then SIGKILL
    assert client._proc.returncode == -9
