"""The agent's two exception families.

Non-terminating errors describe a mistake the model can fix: the loop turns them into a
message (usually a tool result) and keeps going. Terminating errors end the run; each one
carries the result status and process exit code it maps to.
"""

from __future__ import annotations

from typing import ClassVar


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class TaskError(AgentError):
    """The task file is missing or invalid; the run never starts (exit code 2)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"task field {field!r}: {problem}")
        self.field = field


# --- non-terminating: fed back to the model -------------------------------------------


class NonTerminatingError(AgentError):
    """A problem the model can react to; its text goes back to the model."""


class FormatError(NonTerminatingError):
    """The model's output can't be acted on (bad tool arguments, empty reply, ...)."""


class ToolError(NonTerminatingError):
    """A tool call failed: unknown tool, tool-reported error, JSON-RPC error, tool timeout."""


# --- terminating: end the run with a status and a reason ------------------------------


class TerminatingError(AgentError):
    """Ends the run; `status` goes into the result file, `exit_code` is the process's."""

    status: ClassVar[str] = "failed"
    exit_code: ClassVar[int] = 1


class StepLimitReached(TerminatingError):
    status = "step_limit"
    exit_code = 3


class BudgetExhausted(TerminatingError):
    status = "budget_exhausted"
    exit_code = 4


class TimeLimitReached(TerminatingError):
    status = "timed_out"
    exit_code = 5


class ModelError(TerminatingError):
    """The model endpoint failed: HTTP errors after retries, unreachable gateway."""


class ProtocolError(TerminatingError):
    """A peer broke its protocol: malformed model response, MCP server misbehaving or gone."""


class Interrupted(TerminatingError):
    """The agent received SIGTERM or SIGINT (for example, the host cancelled the task)."""


EXIT_SUCCEEDED = 0
EXIT_FAILED = TerminatingError.exit_code
EXIT_INVALID_TASK = 2
EXIT_CODES: dict[str, int] = {
    "succeeded": EXIT_SUCCEEDED,
    "failed": EXIT_FAILED,
    "step_limit": StepLimitReached.exit_code,
    "budget_exhausted": BudgetExhausted.exit_code,
    "timed_out": TimeLimitReached.exit_code,
}
