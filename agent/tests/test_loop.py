"""The agent loop driven by the scripted model against a real MCP server built with the official SDK."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hearth_agent.loop import run_task
from hearth_agent.mcp_client import StdioMcpClient
from tests.conftest import (
    TOKEN,
    TOOL_NAMES,
    ScriptedFactory,
    TaskFactory,
    assert_token_absent,
    read_events,
    read_result,
)
from tests.scripted_model import ScriptedTurn, error_turn, final_turn, tool_call_turn

AGENT_ENTRY = Path(__file__).resolve().parent.parent / "loop.py"


def _agent_python() -> str:
    """The interpreter the sandbox uses (Debian's, no site packages) when it is here and new enough."""
    debian = "/usr/bin/python3"
    if os.path.exists(debian):
        check = subprocess.run(
            [debian, "-c", "import sys; print(sys.version_info >= (3, 11))"],
            capture_output=True,
            text=True,
            check=False,
        )
        if check.stdout.strip() == "True":
            return debian
    return sys.executable


def test_fixes_a_file_through_tool_calls_via_the_entry_script(
    scripted_model: ScriptedFactory, make_task: TaskFactory, tmp_path: Path, workspace: Path
) -> None:
    model = scripted_model(
        [
            tool_call_turn(("list_dir", {"path": "."})),
            tool_call_turn(("read_file", {"path": "calc.py"})),
            tool_call_turn(("edit_file", {"path": "calc.py", "old": "a - b", "new": "a + b"})),
            tool_call_turn(("shell", {"command": f"{sys.executable} test_calc.py", "timeout_s": 30})),
            final_turn("Fixed add() in calc.py: it subtracted instead of adding. test_calc.py passes."),
        ]
    )
    task = make_task(model)
    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps(task))

    done = subprocess.run(
        [_agent_python(), str(AGENT_ENTRY), "--task", str(task_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )

    assert done.returncode == 0, done.stderr
    assert (workspace / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
    result = read_result(task)
    assert result == {
        "status": "succeeded",
        "answer": "Fixed add() in calc.py: it subtracted instead of adding. test_calc.py passes.",
        "reason": None,
        "steps": 5,
        "tokens": {"prompt": 25, "completion": 25, "total": 50},
    }
    stdout_events = [json.loads(line) for line in done.stdout.splitlines()]
    assert stdout_events == read_events(task["trajectory_path"])
    types = [e["type"] for e in stdout_events]
    assert types == ["model_call", "tool_call", "tool_result"] * 4 + ["model_call", "final"]
    assert [e["step"] for e in stdout_events if e["type"] == "tool_call"] == [1, 2, 3, 4]
    shell_result = [e for e in stdout_events if e["type"] == "tool_result"][-1]
    assert shell_result["is_error"] is False
    assert "exit code: 0" in shell_result["content"]
    assert "calc test passed" in shell_result["content"]

    first, last = model.requests[0], model.requests[-1]
    assert first.headers["Authorization"] == f"Bearer {TOKEN}"
    assert {t["function"]["name"] for t in first.body["tools"]} == TOOL_NAMES
    assert [m["role"] for m in first.messages] == ["system", "user"]
    assert "a - b" in last.messages[5]["content"]  # read_file's output came back to the model
    assert_token_absent(task, done.stdout, done.stderr)


def test_tool_error_goes_back_to_the_model_and_the_loop_continues(
    scripted_model: ScriptedFactory, make_task: TaskFactory, shared_mcp: StdioMcpClient, workspace: Path
) -> None:
    model = scripted_model(
        [
            tool_call_turn(("edit_file", {"path": str(workspace / "calc.py"), "old": "no such text", "new": "x"})),
            tool_call_turn(("edit_file", {"path": str(workspace / "calc.py"), "old": "a - b", "new": "a + b"})),
            final_turn("done"),
        ]
    )
    task = make_task(model)
    stdout = io.StringIO()

    result = run_task(task, mcp=shared_mcp, stdout=stdout)

    assert (result.status, result.answer, result.steps) == ("succeeded", "done", 3)
    failed = model.requests[1].messages[-1]
    assert failed["role"] == "tool"
    assert failed["tool_call_id"] == "call_0_edit_file"
    assert failed["content"].startswith("Error")
    assert "exactly once" in failed["content"]
    assert set(failed) == {"role", "tool_call_id", "content"}  # no trajectory-only keys reach the model
    assert "a + b" in (workspace / "calc.py").read_text()
    tool_results = [e for e in read_events(task["trajectory_path"]) if e["type"] == "tool_result"]
    assert [e["is_error"] for e in tool_results] == [True, False]
    assert_token_absent(task, stdout.getvalue())


def test_malformed_arguments_and_unknown_tools_are_fed_back(
    scripted_model: ScriptedFactory, make_task: TaskFactory, shared_mcp: StdioMcpClient
) -> None:
    model = scripted_model(
        [
            tool_call_turn(("read_file", '{"path": "calc.py"'), ("rm_rf", {}), ("list_dir", "[1, 2]")),
            final_turn("gave up politely"),
        ]
    )
    task = make_task(model)

    result = run_task(task, mcp=shared_mcp, stdout=io.StringIO())

    assert result.status == "succeeded"
    replies = model.requests[1].messages[-3:]
    assert [m["tool_call_id"] for m in replies] == ["call_0_read_file", "call_1_rm_rf", "call_2_list_dir"]
    assert "not valid JSON" in replies[0]["content"]
    assert "unknown tool 'rm_rf'" in replies[1]["content"]
    assert "edit_file" in replies[1]["content"]  # the model is told which tools exist
    assert "must be a JSON object" in replies[2]["content"]
    assert all(m["content"].startswith("Error") for m in replies)


def test_a_reply_with_neither_answer_nor_tool_call_gets_feedback(
    scripted_model: ScriptedFactory, make_task: TaskFactory, shared_mcp: StdioMcpClient
) -> None:
    model = scripted_model([final_turn(""), final_turn("ok")])
    task = make_task(model)

    result = run_task(task, mcp=shared_mcp, stdout=io.StringIO())

    assert (result.status, result.answer, result.steps) == ("succeeded", "ok", 2)
    assert model.requests[1].messages[-1]["role"] == "user"
    assert "neither a tool call nor an answer" in model.requests[1].messages[-1]["content"]


def test_step_limit(scripted_model: ScriptedFactory, make_task: TaskFactory, shared_mcp: StdioMcpClient) -> None:
    model = scripted_model([tool_call_turn(("list_dir", {"path": "/"}))] * 5)
    task = make_task(model, max_steps=2)

    result = run_task(task, mcp=shared_mcp, stdout=io.StringIO())

    assert (result.status, result.steps, result.exit_code) == ("step_limit", 2, 3)
    assert len(model.requests) == 2
    assert "step limit" in (result.reason or "")
    events = read_events(task["trajectory_path"])
    assert events[-1]["type"] == "final"
    assert events[-1]["status"] == "step_limit"
    assert read_result(task)["status"] == "step_limit"


def test_token_budget_counts_usage_across_the_run(
    scripted_model: ScriptedFactory, make_task: TaskFactory, shared_mcp: StdioMcpClient
) -> None:
    model = scripted_model([tool_call_turn(("list_dir", {"path": "/"}), tokens=10)] * 5)
    task = make_task(model, max_tokens=25)

    result = run_task(task, mcp=shared_mcp, stdout=io.StringIO())

    assert (result.status, result.exit_code) == ("budget_exhausted", 4)
    assert len(model.requests) == 3  # 10 + 10 + 10 >= 25: no fourth call
    assert result.tokens == {"prompt": 15, "completion": 15, "total": 30}
    assert read_result(task)["tokens"]["total"] == 30


@pytest.mark.parametrize(("status", "code"), [(402, "budget_exhausted"), (429, "budget_exhausted")])
def test_gateway_budget_refusal_ends_the_run(
    scripted_model: ScriptedFactory, make_task: TaskFactory, shared_mcp: StdioMcpClient, status: int, code: str
) -> None:
    model = scripted_model([tool_call_turn(("list_dir", {"path": "/"})), error_turn(status, "task budget spent", code)])
    task = make_task(model)

    result = run_task(task, mcp=shared_mcp, stdout=io.StringIO())

    assert result.status == "budget_exhausted"
    assert "task budget spent" in (result.reason or "")
    assert len(model.requests) == 2  # a budget refusal is not retried


def test_time_limit_while_the_model_is_thinking(
    scripted_model: ScriptedFactory, make_task: TaskFactory, shared_mcp: StdioMcpClient
) -> None:
    model = scripted_model([ScriptedTurn(body={}, delay_s=60)])
    task = make_task(model, timeout_s=1.0)

    result = run_task(task, mcp=shared_mcp, stdout=io.StringIO())

    assert (result.status, result.exit_code) == ("timed_out", 5)
    assert len(model.requests) == 1
    assert read_result(task)["status"] == "timed_out"


def test_model_server_error_is_retried_then_ends_the_run(
    scripted_model: ScriptedFactory, make_task: TaskFactory, shared_mcp: StdioMcpClient
) -> None:
    model = scripted_model([error_turn(500, "upstream exploded")] * 3)
    task = make_task(model)

    result = run_task(task, mcp=shared_mcp, stdout=io.StringIO())

    assert (result.status, result.exit_code) == ("failed", 1)
    assert "HTTP 500" in (result.reason or "")
    assert "upstream exploded" in (result.reason or "")
    assert len(model.requests) == 3  # one call and two retries
    error = [e for e in read_events(task["trajectory_path"]) if e["type"] == "error"]
    assert error[0]["error"] == "ModelError"


def test_one_model_server_error_is_retried(
    scripted_model: ScriptedFactory, make_task: TaskFactory, shared_mcp: StdioMcpClient
) -> None:
    model = scripted_model([error_turn(503, "warming up"), final_turn("fine")])
    task = make_task(model)

    assert run_task(task, mcp=shared_mcp, stdout=io.StringIO()).status == "succeeded"


@pytest.mark.parametrize("body", [{"choices": []}, {"choices": [{"message": {"content": 7}}]}, "not an object"])
def test_malformed_model_response_ends_the_run(
    scripted_model: ScriptedFactory, make_task: TaskFactory, shared_mcp: StdioMcpClient, body: object
) -> None:
    model = scripted_model([ScriptedTurn(body=body)])
    task = make_task(model)

    result = run_task(task, mcp=shared_mcp, stdout=io.StringIO())

    assert result.status == "failed"
    assert "malformed model response" in (result.reason or "")


def test_token_never_appears_even_when_the_gateway_echoes_it(
    scripted_model: ScriptedFactory, make_task: TaskFactory, shared_mcp: StdioMcpClient
) -> None:
    model = scripted_model([error_turn(401, f"token {TOKEN} is not valid for this task")])
    task = make_task(model)
    stdout = io.StringIO()

    result = run_task(task, mcp=shared_mcp, stdout=stdout)

    assert result.status == "failed"
    assert "HTTP 401" in (result.reason or "")
    assert "[REDACTED]" in read_result(task)["reason"]
    assert model.requests[0].headers["Authorization"] == f"Bearer {TOKEN}"  # it was sent, where it belongs
    assert_token_absent(task, stdout.getvalue())


def test_mcp_server_gets_only_the_allowlisted_environment(
    scripted_model: ScriptedFactory, make_task: TaskFactory, monkeypatch: pytest.MonkeyPatch, workspace: Path
) -> None:
    monkeypatch.setenv("HEARTH_TEST_HOST_SECRET", "must-not-leak")
    model = scripted_model([tool_call_turn(("shell", {"command": "env"})), final_turn("done")])
    task = make_task(model)

    result = run_task(task, stdout=io.StringIO())

    assert result.status == "succeeded"
    env_output = model.requests[1].messages[-1]["content"]
    assert f"HEARTH_WORKSPACE={workspace}" in env_output
    assert "HEARTH_TEST_HOST_SECRET" not in env_output
    assert TOKEN not in env_output


def test_mcp_server_that_dies_ends_the_run_with_a_reason(
    scripted_model: ScriptedFactory, make_task: TaskFactory
) -> None:
    model = scripted_model([tool_call_turn(("shell", {"command": "kill -9 $PPID"})), final_turn("unreachable")])
    task = make_task(model)

    result = run_task(task, stdout=io.StringIO())

    assert result.status == "failed"
    assert "MCP server exited with code -9" in (result.reason or "")
    assert len(model.requests) == 1


def test_invalid_task_exits_2_naming_the_field(tmp_path: Path, workspace: Path) -> None:
    task_file = tmp_path / "task.json"
    result_path = tmp_path / "result.json"
    task_file.write_text(json.dumps({"prompt": "x", "max_steps": "ten", "result_path": str(result_path)}))

    done = subprocess.run(
        [_agent_python(), str(AGENT_ENTRY), "--task", str(task_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 2
    assert "'model'" in done.stderr  # the first missing field is named
    assert json.loads(done.stdout)["type"] == "error"
    assert json.loads(result_path.read_text())["status"] == "failed"


def test_sigterm_ends_the_run_with_a_result_and_stops_the_mcp_server(
    scripted_model: ScriptedFactory, make_task: TaskFactory, tmp_path: Path, workspace: Path
) -> None:
    model = scripted_model(
        [
            tool_call_turn(("shell", {"command": "echo $PPID > server.pid"})),
            ScriptedTurn(body={}, delay_s=60),
        ]
    )
    task = make_task(model)
    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps(task))
    agent = subprocess.Popen(
        [_agent_python(), str(AGENT_ENTRY), "--task", str(task_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert agent.stdout is not None
        for line in agent.stdout:  # wait, by its own progress events, until it is in the second model call
            if json.loads(line)["type"] == "tool_result":
                break
        give_up = time.monotonic() + 60  # a guard against hanging, not a timing assertion
        while len(model.requests) < 2 and time.monotonic() < give_up:
            time.sleep(0.05)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 1
    finally:
        agent.kill()
        agent.communicate()
    result = read_result(task)
    assert result["status"] == "failed"
    assert result["reason"] == "interrupted by SIGTERM"
    server_pid = int((workspace / "server.pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(server_pid, 0)


def test_unreachable_gateway_is_retried_then_fails(
    scripted_model: ScriptedFactory, make_task: TaskFactory, shared_mcp: StdioMcpClient
) -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    task = make_task(scripted_model([]), gateway_url=f"http://127.0.0.1:{port}")

    result = run_task(task, mcp=shared_mcp, stdout=io.StringIO())

    assert result.status == "failed"
    assert "after 3 attempts" in (result.reason or "")
    assert "cannot reach the gateway" in (result.reason or "")
