"""Shared fixtures: the scripted model server, workspaces, tasks and the official-SDK MCP server."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from hearth_agent.mcp_client import StdioMcpClient, allowlisted_env
from hearth_agent.task import TaskSpec, parse_task
from tests.scripted_model import ScriptedModel, ScriptedTurn, scripted

TOKEN = "hearth-task-token-7f3a9c1e5b"
SDK_SERVER = Path(__file__).with_name("sdk_mcp_server.py")
SDK_SERVER_COMMAND = [sys.executable, str(SDK_SERVER)]
TOOL_NAMES = {"shell", "read_file", "write_file", "edit_file", "list_dir"}

BUGGY_CALC = "def add(a, b):\n    return a - b\n"
CALC_TEST = "from calc import add\n\nassert add(2, 3) == 5, add(2, 3)\nprint('calc test passed')\n"

ScriptedFactory = Callable[[Sequence[ScriptedTurn]], ScriptedModel]
TaskFactory = Callable[..., TaskSpec]


@pytest.fixture
def scripted_model() -> Iterator[ScriptedFactory]:
    """Start scripted model servers (fixtures of canned turns); all are stopped after the test."""
    servers: list[ScriptedModel] = []

    def start(turns: Sequence[ScriptedTurn]) -> ScriptedModel:
        servers.append(scripted(turns))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "workspace"
    root.mkdir()
    (root / "calc.py").write_text(BUGGY_CALC)
    (root / "test_calc.py").write_text(CALC_TEST)
    return root


@pytest.fixture
def make_task(tmp_path: Path, workspace: Path) -> TaskFactory:
    def make(model: ScriptedModel, **overrides: Any) -> TaskSpec:
        raw: dict[str, Any] = {
            "prompt": "Make test_calc.py pass.",
            "model": "scripted",
            "gateway_url": model.url,
            "gateway_token": TOKEN,
            "max_steps": 10,
            "max_tokens": 10_000,
            "timeout_s": 60,
            "mcp_command": SDK_SERVER_COMMAND,
            "workspace": str(workspace),
            "trajectory_path": str(tmp_path / "out" / "trajectory.jsonl"),
            "result_path": str(tmp_path / "out" / "result.json"),
            **overrides,
        }
        return parse_task(raw)

    return make


@pytest.fixture(scope="session")
def shared_mcp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StdioMcpClient]:
    """One official-SDK MCP server for the tests that don't depend on its workspace or lifetime.

    Starting the SDK server takes seconds; tests of the loop's limits share this one and pass
    absolute paths in their tool calls.
    """
    root = tmp_path_factory.mktemp("shared-workspace")
    (root / "calc.py").write_text(BUGGY_CALC)
    client = StdioMcpClient.start(SDK_SERVER_COMMAND, env=allowlisted_env(str(root)), cwd=str(root))
    yield client
    client.close()


def read_events(path: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def read_result(task: TaskSpec) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(Path(task["result_path"]).read_text())
    return result


def assert_token_absent(task: TaskSpec, *texts: str) -> None:
    for text in (Path(task["trajectory_path"]).read_text(), Path(task["result_path"]).read_text(), *texts):
        assert TOKEN not in text


def new_stdout() -> io.StringIO:
    return io.StringIO()
