"""Running one model tool call through MCP."""

from __future__ import annotations

import json
from typing import Any

from .errors import FormatError, NonTerminatingError
from .mcp_client import McpClient
from .messages import ToolCall

MAX_RESULT_CHARS = 100_000  # keeps one huge file or log from eating the context window


def execute_tool(call: ToolCall, mcp_client: McpClient) -> dict[str, Any]:
    """Run `call` and return the tool message for the model.

    The result has the OpenAI tool-message keys (`role`, `tool_call_id`, `content`) plus
    `is_error`, which is for the trajectory; the loop drops it before sending the message on.
    Mistakes the model can fix (malformed arguments, unknown tool, a tool that fails) come
    back as error results; terminating errors (the server died, time ran out) propagate.
    """
    name = call["function"]["name"]
    try:
        arguments = parse_arguments(call["function"]["arguments"])
        output = mcp_client.call_tool(name, arguments)
        text, is_error = output.text, output.is_error
    except NonTerminatingError as exc:
        text, is_error = str(exc), True
    if is_error and not text.startswith("Error"):
        text = f"Error: {text}" if text else "Error: the tool failed without a message"
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + f"\n[truncated {len(text) - MAX_RESULT_CHARS} characters]"
    return {"role": "tool", "tool_call_id": call["id"], "content": text, "is_error": is_error}


def parse_arguments(raw: str) -> dict[str, Any]:
    try:
        arguments = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as exc:
        raise FormatError(f"the tool arguments are not valid JSON ({exc}); send a JSON object") from None
    if not isinstance(arguments, dict):
        raise FormatError(f"the tool arguments must be a JSON object, got {type(arguments).__name__}")
    return arguments
