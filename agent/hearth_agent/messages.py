"""Typed shapes of the OpenAI chat messages, tool specs and MCP tools the agent passes around."""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict


class FunctionCall(TypedDict):
    name: str
    arguments: str  # JSON text, exactly as the model produced it


class ToolCall(TypedDict):
    id: str
    type: Literal["function"]
    function: FunctionCall


class SystemMessage(TypedDict):
    role: Literal["system"]
    content: str


class UserMessage(TypedDict):
    role: Literal["user"]
    content: str


class AssistantMessage(TypedDict):
    role: Literal["assistant"]
    content: str | None
    tool_calls: NotRequired[list[ToolCall]]


class ToolMessage(TypedDict):
    role: Literal["tool"]
    tool_call_id: str
    content: str


Message = SystemMessage | UserMessage | AssistantMessage | ToolMessage


class FunctionSpec(TypedDict):
    name: str
    description: str
    parameters: dict[str, Any]


class ToolSpec(TypedDict):
    """A tool in the OpenAI `tools` request field."""

    type: Literal["function"]
    function: FunctionSpec


class McpTool(TypedDict):
    """A tool as listed by an MCP server's `tools/list`."""

    name: str
    description: str
    inputSchema: dict[str, Any]


class TokenCounts(TypedDict):
    prompt: int
    completion: int
    total: int


def to_openai_tool(tool: McpTool) -> ToolSpec:
    return {
        "type": "function",
        "function": {
            "name": tool["name"],
            "description": tool["description"],
            "parameters": tool["inputSchema"],
        },
    }
