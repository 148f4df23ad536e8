"""The agent loop: ask the model, run its tool calls over MCP, repeat until an answer or a limit.

Result statuses and process exit codes:

    succeeded         0   the model gave a final answer
    failed            1   model or protocol failure, SIGTERM/SIGINT, or an internal error
    (invalid task)    2   the task file is missing or invalid (also bad command-line usage)
    step_limit        3   max_steps model calls without a final answer
    budget_exhausted  4   max_tokens spent, or the gateway refused for budget (HTTP 402/429)
    timed_out         5   timeout_s of wall-clock time passed
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, Any

from .errors import (
    EXIT_CODES,
    EXIT_INVALID_TASK,
    BudgetExhausted,
    FormatError,
    Interrupted,
    StepLimitReached,
    TaskError,
    TerminatingError,
    TimeLimitReached,
)
from .mcp_client import McpClient, StdioMcpClient, allowlisted_env
from .messages import Message, TokenCounts, ToolCall, ToolMessage, to_openai_tool
from .model import ModelClient, OpenAIChatClient
from .task import TaskSpec, load_task
from .tools import execute_tool
from .trajectory import Trajectory, write_json_atomically

DEFAULT_SYSTEM_PROMPT = """\
You are a software engineering agent working in an isolated sandbox. Your workspace is {workspace}.
Use the tools to inspect and change files and to run commands:
- shell(command, timeout_s?): run a shell command in the workspace; output is capped
- read_file(path), write_file(path, content), list_dir(path)
- edit_file(path, old, new): replace the exact text `old` (which must occur exactly once) with `new`
Work in small steps and check your work, for example by running the tests.
When the task is done, reply with a short summary of what you did and no tool call: that ends the run."""

NO_ACTION_FEEDBACK = "Your reply had neither a tool call nor an answer. Call a tool, or reply with your final answer."


@dataclass
class RunState:
    steps: int = 0
    tokens: TokenCounts = field(default_factory=lambda: TokenCounts(prompt=0, completion=0, total=0))
    messages: list[Message] = field(default_factory=list)


@dataclass(frozen=True)
class RunResult:
    status: str
    answer: str | None
    reason: str | None
    steps: int
    tokens: TokenCounts

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "answer": self.answer,
            "reason": self.reason,
            "steps": self.steps,
            "tokens": dict(self.tokens),
        }


def run_loop(
    task: TaskSpec, *, model: ModelClient, mcp: McpClient, log: Trajectory, state: RunState, deadline: float
) -> str:
    """Run until the model answers (returned) or a TerminatingError ends the run."""
    tools = [to_openai_tool(t) for t in mcp.list_tools()]
    system = task.get("system_prompt") or DEFAULT_SYSTEM_PROMPT.format(workspace=task["workspace"])
    state.messages = [{"role": "system", "content": system}, {"role": "user", "content": task["prompt"]}]
    while True:
        _check_limits(task, state, deadline)
        state.steps += 1
        started = time.monotonic()
        completion = model.complete(state.messages, tools, deadline - started)
        usage = completion.usage
        state.tokens = {
            "prompt": state.tokens["prompt"] + usage["prompt"],
            "completion": state.tokens["completion"] + usage["completion"],
            "total": state.tokens["total"] + usage["total"],
        }
        message = completion.message
        calls = message.get("tool_calls", [])
        log.emit(
            state.steps,
            "model_call",
            latency_s=round(time.monotonic() - started, 3),
            usage=dict(usage),
            tokens_total=state.tokens["total"],
            finish_reason=completion.finish_reason,
            content=message["content"],
            tool_calls=[{"id": c["id"], "name": c["function"]["name"]} for c in calls],
        )
        if not calls:
            if message["content"] and message["content"].strip():
                state.messages.append(message)
                return message["content"]
            state.messages.append({"role": "assistant", "content": message["content"] or ""})
            state.messages.append({"role": "user", "content": NO_ACTION_FEEDBACK})
            log.emit(state.steps, "error", error=FormatError.__name__, reason=NO_ACTION_FEEDBACK, terminating=False)
            continue
        state.messages.append(message)
        _run_tool_calls(calls, mcp, log, state)


def _run_tool_calls(calls: list[ToolCall], mcp: McpClient, log: Trajectory, state: RunState) -> None:
    for call in calls:
        name = call["function"]["name"]
        log.emit(state.steps, "tool_call", id=call["id"], name=name, arguments=call["function"]["arguments"])
        result = execute_tool(call, mcp)
        log.emit(
            state.steps, "tool_result", id=call["id"], name=name, is_error=result["is_error"], content=result["content"]
        )
        reply: ToolMessage = {"role": "tool", "tool_call_id": call["id"], "content": result["content"]}
        state.messages.append(reply)


def _check_limits(task: TaskSpec, state: RunState, deadline: float) -> None:
    if time.monotonic() >= deadline:
        raise TimeLimitReached(f"time limit of {task['timeout_s']:g}s reached after {state.steps} steps")
    if state.tokens["total"] >= task["max_tokens"]:
        raise BudgetExhausted(f"token budget spent: {state.tokens['total']} of {task['max_tokens']} tokens used")
    if state.steps >= task["max_steps"]:
        raise StepLimitReached(f"step limit reached: {task['max_steps']} model calls without a final answer")


def run_task(
    task: TaskSpec,
    *,
    model: ModelClient | None = None,
    mcp: McpClient | None = None,
    stdout: IO[str] | None = None,
) -> RunResult:
    """Run one task end to end; the result file and a `final` event are written whatever happens.

    `model` and `mcp` default to the gateway client and a freshly started MCP server; tests
    may pass their own. An `mcp` passed in is not closed here.
    """
    deadline = time.monotonic() + task["timeout_s"]
    secrets = [task["gateway_token"]]
    state = RunState()
    result = RunResult("failed", None, "the agent stopped before finishing", 0, state.tokens)
    log: Trajectory | None = None
    owned_mcp: StdioMcpClient | None = None
    try:
        log = Trajectory(task["trajectory_path"], secrets=secrets, stdout=stdout)
        if mcp is None:
            mcp = owned_mcp = StdioMcpClient.start(
                task["mcp_command"], env=allowlisted_env(task["workspace"]), cwd=task["workspace"], deadline=deadline
            )
        if model is None:
            model = OpenAIChatClient(task["gateway_url"], task["gateway_token"], task["model"])
        answer = run_loop(task, model=model, mcp=mcp, log=log, state=state, deadline=deadline)
        result = RunResult("succeeded", answer, None, state.steps, state.tokens)
    except TerminatingError as exc:
        result = RunResult(exc.status, None, str(exc), state.steps, state.tokens)
        if log is not None:
            log.emit(state.steps, "error", error=type(exc).__name__, reason=str(exc), terminating=True)
    except Exception as exc:  # the run must still end with a result file saying why
        traceback.print_exc(file=sys.stderr)
        result = RunResult("failed", None, f"internal error: {type(exc).__name__}: {exc}", state.steps, state.tokens)
        if log is not None:
            log.emit(state.steps, "error", error=type(exc).__name__, reason=result.reason, terminating=True)
    finally:
        if owned_mcp is not None:
            owned_mcp.close()
        if log is not None:
            log.emit(state.steps, "final", **result.to_json())
            log.close()
        write_json_atomically(task["result_path"], result.to_json(), secrets)
    return result


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    signal.signal(signum, signal.SIG_IGN)  # one interruption is enough to start the orderly exit
    raise Interrupted(f"interrupted by {signal.Signals(signum).name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loop.py", description="Run one hearth agent task.")
    parser.add_argument("--task", required=True, help="path of the task JSON file")
    args = parser.parse_args(argv)
    try:
        task = load_task(args.task)
    except TaskError as exc:
        _report_invalid_task(args.task, str(exc))
        return EXIT_INVALID_TASK
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _raise_interrupted)
    return run_task(task, stdout=sys.stdout).exit_code


def _report_invalid_task(task_path: str, reason: str) -> None:
    """An error event on stdout, a line on stderr and, if the task still names a result_path, a result."""
    event = {"ts": round(time.time(), 3), "step": 0, "type": "error", "error": "TaskError", "reason": reason}
    print(json.dumps(event | {"terminating": True}), flush=True)
    print(f"hearth-agent: {reason}", file=sys.stderr)
    try:
        with open(task_path, encoding="utf-8") as file:
            raw = json.load(file)
        path = raw.get("result_path") if isinstance(raw, dict) else None
        if isinstance(path, str) and path:
            zero = {"prompt": 0, "completion": 0, "total": 0}
            result = {"status": "failed", "answer": None, "reason": reason, "steps": 0, "tokens": zero}
            token = raw.get("gateway_token")
            write_json_atomically(path, result, [token] if isinstance(token, str) else [])
    except (OSError, ValueError):
        pass
