"""Interop: the Rust MCP server (`hearth-guest mcp`, built on rmcp) against two clients.

(a) the official Python `mcp` SDK's client, (b) the agent's own `StdioMcpClient`, and the whole
agent loop with the scripted model fixture using the Rust server for its tools.

The binary: `HEARTH_GUEST_BIN` if set, else the newest `debug/hearth-guest` under
`$CARGO_TARGET_DIR`, `/var/tmp/hearth-target` (CI's target dir) or the repo's `target/`. The
tests are skipped only when none is built.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError

from hearth_agent.errors import ToolError
from hearth_agent.loop import run_task
from hearth_agent.mcp_client import StdioMcpClient, allowlisted_env
from tests.conftest import BUGGY_CALC, TOOL_NAMES, ScriptedFactory, TaskFactory, read_events
from tests.scripted_model import final_turn, tool_call_turn

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def _guest_binary() -> str:
    explicit = os.environ.get("HEARTH_GUEST_BIN")
    if explicit:
        if not os.access(explicit, os.X_OK):
            pytest.fail(f"HEARTH_GUEST_BIN={explicit} is not an executable file")
        return explicit
    target_dirs = [os.environ.get("CARGO_TARGET_DIR"), "/var/tmp/hearth-target", str(REPO / "target")]
    candidates = [Path(d) / "debug" / "hearth-guest" for d in target_dirs if d]
    built = [c for c in candidates if c.is_file() and os.access(c, os.X_OK)]
    if not built:
        pytest.skip(f"hearth-guest is not built (looked for {', '.join(map(str, candidates))})")
    # The newest, so a stale build in another target dir does not shadow the one just made.
    return str(max(built, key=lambda c: c.stat().st_mtime))


@pytest.fixture(scope="module")
def guest_bin() -> str:
    return _guest_binary()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "calc.py").write_text(BUGGY_CALC)
    return workspace


# --- (a) the official SDK's client -------------------------------------------------------------


def _with_sdk_session(guest_bin: str, root: Path, body: Callable[[ClientSession], Awaitable[T]]) -> T:
    params = StdioServerParameters(
        command=guest_bin,
        args=["mcp", "--root", str(root)],
        env=allowlisted_env(str(root)),
        cwd=str(root),
    )

    async def main() -> T:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            return await body(session)

    return asyncio.run(main())


def _text(result: types.CallToolResult | types.InputRequiredResult | types.Result) -> tuple[str, bool]:
    assert isinstance(result, types.CallToolResult), result
    texts = [c.text for c in result.content if isinstance(c, types.TextContent)]
    assert len(texts) == len(result.content), result.content
    return "\n".join(texts), result.is_error


def test_sdk_client_handshake_and_tool_schemas(guest_bin: str, root: Path) -> None:
    async def body(session: ClientSession) -> tuple[types.InitializeResult, types.ListToolsResult]:
        return await session.initialize(), await session.list_tools()

    init, listed = _with_sdk_session(guest_bin, root, body)

    assert init.server_info.name == "hearth-guest"
    assert init.capabilities.tools is not None
    tools = {t.name: t for t in listed.tools}
    assert set(tools) == TOOL_NAMES
    assert tools["shell"].input_schema["required"] == ["command"]
    assert tools["shell"].input_schema["properties"]["timeout_s"]["type"] == "number"
    assert tools["edit_file"].input_schema["required"] == ["path", "old", "new"]
    assert tools["write_file"].input_schema["required"] == ["path", "content"]
    assert tools["read_file"].annotations is not None
    assert tools["read_file"].annotations.read_only_hint is True


def test_sdk_client_calls_every_tool(guest_bin: str, root: Path) -> None:
    async def body(session: ClientSession) -> list[tuple[str, bool]]:
        await session.initialize()
        calls: list[tuple[str, dict[str, Any]]] = [
            ("write_file", {"path": "pkg/note.txt", "content": "hello\nworld\n"}),
            ("read_file", {"path": "pkg/note.txt"}),
            ("edit_file", {"path": "pkg/note.txt", "old": "world", "new": "rust"}),
            ("edit_file", {"path": "pkg/note.txt", "old": "absent", "new": "x"}),
            ("list_dir", {"path": "."}),
            ("shell", {"command": "cat pkg/note.txt; echo oops >&2; exit 4"}),
            ("shell", {"command": "sleep 30", "timeout_s": 0.3}),
            ("read_file", {"path": "missing.txt"}),
        ]
        return [_text(await session.call_tool(name, args)) for name, args in calls]

    results = _with_sdk_session(guest_bin, root, body)

    wrote, read, edited, missed, listing, shell, timed_out, missing = results
    assert not wrote[1]
    assert wrote[0].startswith("created ")
    assert read == ("hello\nworld\n", False)
    assert not edited[1]
    assert (root / "pkg" / "note.txt").read_text() == "hello\nrust\n"
    assert missed[1]
    assert "found 0" in missed[0]
    assert listing == ("calc.py\npkg/", False)
    assert shell == ("exit code: 4\nstdout:\nhello\nrust\n\nstderr:\noops\n", False)
    assert timed_out[1]
    assert "timed out after 0.3s" in timed_out[0]
    assert missing[1]
    assert "missing.txt" in missing[0]


def test_sdk_client_unknown_tool_is_a_protocol_error(guest_bin: str, root: Path) -> None:
    async def body(session: ClientSession) -> str:
        await session.initialize()
        try:
            await session.call_tool("rm_rf", {})
        except MCPError as exc:
            return str(exc)
        return "no error"

    message = _with_sdk_session(guest_bin, root, body)

    assert "rm_rf" in message
    assert "read_file" in message


# --- (b) the agent's own client ----------------------------------------------------------------


@pytest.fixture
def client(guest_bin: str, root: Path) -> Iterator[StdioMcpClient]:
    # No --root: the server must find the workspace in HEARTH_WORKSPACE, as the agent sets it.
    with StdioMcpClient.start([guest_bin, "mcp"], env=allowlisted_env(str(root)), cwd=str(root)) as started:
        yield started


def test_agent_client_handshake_and_tools(client: StdioMcpClient) -> None:
    assert client.protocol_version == "2025-06-18"
    assert client.server_info["name"] == "hearth-guest"
    tools = {t["name"]: t for t in client.list_tools()}
    assert set(tools) == TOOL_NAMES
    assert "command" in tools["shell"]["inputSchema"]["properties"]


def test_agent_client_calls_every_tool(client: StdioMcpClient, root: Path) -> None:
    client.list_tools()
    assert client.call_tool("read_file", {"path": "calc.py"}).text == BUGGY_CALC
    edited = client.call_tool("edit_file", {"path": "calc.py", "old": "a - b", "new": "a + b"})
    assert not edited.is_error
    assert "a + b" in (root / "calc.py").read_text()
    twice = client.call_tool("edit_file", {"path": "calc.py", "old": "b", "new": "c"})
    assert twice.is_error
    assert "found 2" in twice.text
    script = "from calc import add\nprint(add(2, 3))\n"
    wrote = client.call_tool("write_file", {"path": "test_calc.py", "content": script})
    assert not wrote.is_error
    assert client.call_tool("list_dir", {"path": "."}).text == "calc.py\ntest_calc.py"
    ran = client.call_tool("shell", {"command": f"{sys.executable} test_calc.py"})
    assert (ran.text, ran.is_error) == ("exit code: 0\nstdout:\n5\n\nstderr:\n", False)
    env = client.call_tool("shell", {"command": "env"}).text
    assert f"HEARTH_WORKSPACE={root}" in env


def test_agent_client_tool_errors(client: StdioMcpClient) -> None:
    # Before tools/list the client cannot refuse an unknown name itself: the server's -32602 arrives.
    with pytest.raises(ToolError, match="rm_rf"):
        client.call_tool("rm_rf", {})
    bad_args = client.call_tool("read_file", {"file": "calc.py"})
    assert bad_args.is_error
    assert "unknown field `file`" in bad_args.text


def test_agent_loop_fixes_a_bug_through_the_rust_server(
    guest_bin: str, scripted_model: ScriptedFactory, make_task: TaskFactory, workspace: Path
) -> None:
    model = scripted_model(
        [
            tool_call_turn(("list_dir", {"path": "."})),
            tool_call_turn(("read_file", {"path": "calc.py"})),
            tool_call_turn(("edit_file", {"path": "calc.py", "old": "a - b", "new": "a + b"})),
            tool_call_turn(("shell", {"command": f"{sys.executable} test_calc.py", "timeout_s": 30})),
            final_turn("Fixed add()."),
        ]
    )
    task = make_task(model, mcp_command=[guest_bin, "mcp"])

    result = run_task(task, stdout=io.StringIO())

    assert (result.status, result.answer, result.steps) == ("succeeded", "Fixed add().", 5)
    assert (workspace / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
    results = [e for e in read_events(task["trajectory_path"]) if e["type"] == "tool_result"]
    assert [e["is_error"] for e in results] == [False, False, False, False]
    assert results[0]["content"] == "calc.py\ntest_calc.py"
    assert "calc test passed" in results[3]["content"]
