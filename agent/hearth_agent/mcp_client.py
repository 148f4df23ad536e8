"""The tool side: a `McpClient` protocol and a client for an MCP server on stdio.

The server is a subprocess speaking JSON-RPC 2.0, one message per line, on its stdin/stdout
(the MCP stdio transport). The client offers protocol version 2025-06-18 and accepts a server
that counter-offers 2025-03-26 or 2024-11-05: the three agree on everything used here
(initialize, tools/list, tools/call with text content and isError).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Protocol

from . import __version__
from .errors import ProtocolError, TimeLimitReached, ToolError
from .messages import McpTool

PROTOCOL_VERSION = "2025-06-18"
SUPPORTED_VERSIONS = frozenset({"2025-06-18", "2025-03-26", "2024-11-05"})
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ToolOutput:
    text: str
    is_error: bool


class McpClient(Protocol):
    def list_tools(self) -> list[McpTool]: ...

    def call_tool(self, name: str, arguments: dict[str, Any]) -> ToolOutput:
        """Run a tool. A tool that fails is an `is_error` output or a ToolError, never a crash."""
        ...

    def close(self) -> None: ...


def allowlisted_env(workspace: str, source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The MCP server's whole environment: never the agent's, which a host might have filled."""
    source = os.environ if source is None else source
    return {
        "PATH": source.get("PATH") or DEFAULT_PATH,
        "HOME": source.get("HOME") or workspace,
        "LANG": source.get("LANG") or "C.UTF-8",
        "HEARTH_WORKSPACE": workspace,
    }


class _RpcError(Exception):
    def __init__(self, code: object, message: str) -> None:
        super().__init__(f"JSON-RPC error {code}: {message}")


class _RequestTimeout(Exception):
    pass


class StdioMcpClient:
    """One MCP server subprocess. Use `StdioMcpClient.start(...)`, which also initializes it."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str,
        deadline: float | None = None,
        request_timeout_s: float = 30.0,
        tool_timeout_s: float = 900.0,
    ) -> None:
        self._deadline = deadline  # time.monotonic() value; the run's wall-clock limit
        self._request_timeout_s = request_timeout_s
        self.tool_timeout_s = tool_timeout_s
        self._next_id = 1
        self._buffer = bytearray()
        self._stderr_tail: deque[str] = deque(maxlen=20)
        self.server_info: dict[str, Any] = {}
        self._tool_names: list[str] | None = None
        self.protocol_version = ""
        try:
            self._proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=dict(env),
                cwd=cwd,
                bufsize=0,
                start_new_session=True,  # so close() can stop whatever the tools spawned
            )
        except OSError as exc:
            raise ProtocolError(f"cannot start the MCP server {argv[0]!r}: {exc.strerror or exc}") from exc
        stdin, stdout, stderr = self._proc.stdin, self._proc.stdout, self._proc.stderr
        if stdin is None or stdout is None or stderr is None:  # cannot happen with PIPE; keeps mypy honest
            raise ProtocolError("the MCP server's pipes were not created")
        self._stdin: IO[bytes] = stdin
        self._stdout_fd = stdout.fileno()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._stdout_fd, selectors.EVENT_READ)
        self._stderr_thread = threading.Thread(target=self._drain_stderr, args=(stderr,), daemon=True)
        self._stderr_thread.start()

    @classmethod
    def start(cls, argv: Sequence[str], **kwargs: Any) -> StdioMcpClient:
        client = cls(argv, **kwargs)
        try:
            client.initialize()
        except BaseException:
            client.close()
            raise
        return client

    def __enter__(self) -> StdioMcpClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- the MCP methods the agent uses ----------------------------------------------

    def initialize(self) -> None:
        params = {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "hearth-agent", "version": __version__},
        }
        result = self._checked_request("initialize", params)
        version = result.get("protocolVersion")
        if version not in SUPPORTED_VERSIONS:
            raise ProtocolError(f"MCP server wants protocol version {version!r}; we speak {sorted(SUPPORTED_VERSIONS)}")
        self.protocol_version = str(version)
        info = result.get("serverInfo")
        self.server_info = info if isinstance(info, dict) else {}
        self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def list_tools(self) -> list[McpTool]:
        tools: list[McpTool] = []
        cursor: str | None = None
        while True:
            result = self._checked_request("tools/list", {"cursor": cursor} if cursor else {})
            raw_tools = result.get("tools")
            if not isinstance(raw_tools, list):
                raise ProtocolError("MCP tools/list result has no 'tools' list")
            tools.extend(_parse_tool(t) for t in raw_tools)
            next_cursor = result.get("nextCursor")
            if not isinstance(next_cursor, str) or not next_cursor:
                self._tool_names = [t["name"] for t in tools]
                return tools
            cursor = next_cursor

    def call_tool(self, name: str, arguments: dict[str, Any]) -> ToolOutput:
        if self._tool_names is not None and name not in self._tool_names:
            raise ToolError(f"unknown tool {name!r}; the tools are: {', '.join(self._tool_names)}")
        try:
            result = self._request("tools/call", {"name": name, "arguments": arguments}, self.tool_timeout_s)
        except _RpcError as exc:
            raise ToolError(f"tool {name!r} failed: {exc}") from None
        except _RequestTimeout:
            raise ToolError(f"tool {name!r} did not answer within {self.tool_timeout_s:g}s") from None
        content = result.get("content")
        if not isinstance(content, list):
            raise ProtocolError(f"MCP tools/call result for {name!r} has no 'content' list")
        text = "\n".join(_content_text(item) for item in content)
        if not content and "structuredContent" in result:
            text = json.dumps(result["structuredContent"])
        return ToolOutput(text=text, is_error=result.get("isError") is True)

    def close(self) -> None:
        """Close stdin, give the server a moment to exit, then SIGTERM and SIGKILL its process group."""
        proc = self._proc
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                self._stdin.close()
            for sig in (None, signal.SIGTERM, signal.SIGKILL):
                if sig is not None:
                    try:
                        os.killpg(proc.pid, sig)
                    except ProcessLookupError:
                        break
                try:
                    proc.wait(timeout=2.0)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._selector.close()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._stderr_thread.join(timeout=1.0)

    # --- JSON-RPC over newline-delimited stdio ---------------------------------------

    def _checked_request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """A request whose failure means the server is unusable: errors and timeouts are terminating."""
        try:
            return self._request(method, params, self._request_timeout_s)
        except _RpcError as exc:
            raise ProtocolError(f"MCP {method} failed: {exc}") from None
        except _RequestTimeout:
            raise ProtocolError(f"MCP server did not answer {method} within {self._request_timeout_s:g}s") from None

    def _request(self, method: str, params: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        request_id = self._next_id
        self._next_id += 1
        self._send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        limit = time.monotonic() + timeout_s
        deadline = limit if self._deadline is None else min(limit, self._deadline)
        while True:
            message = self._read_message(deadline)
            if message is None:
                self._send_cancel(request_id)
                if self._deadline is not None and deadline >= self._deadline:
                    raise TimeLimitReached(f"time limit reached during MCP {method}")
                raise _RequestTimeout
            if "method" in message:
                self._answer_server(message)
            elif message.get("id") == request_id:
                if "error" in message:
                    error = message["error"] if isinstance(message["error"], dict) else {}
                    raise _RpcError(error.get("code"), str(error.get("message", message["error"])))
                result = message.get("result")
                if not isinstance(result, dict):
                    raise ProtocolError(f"MCP {method} response has no result object")
                return result
            # Anything else is a late answer to a request we gave up on.

    def _answer_server(self, message: dict[str, Any]) -> None:
        """Server-to-client requests: answer ping, decline the rest; ignore notifications."""
        if "id" not in message:
            return
        if message.get("method") == "ping":
            self._send({"jsonrpc": "2.0", "id": message["id"], "result": {}})
        else:
            error = {"code": -32601, "message": f"hearth-agent does not support {message.get('method')}"}
            self._send({"jsonrpc": "2.0", "id": message["id"], "error": error})

    def _send_cancel(self, request_id: int) -> None:
        try:
            params = {"requestId": request_id, "reason": "timed out"}
            self._send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params})
        except ProtocolError:
            pass

    def _send(self, message: dict[str, Any]) -> None:
        line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        try:
            self._stdin.write(line)
            self._stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            raise self._exited() from None

    def _read_message(self, deadline: float) -> dict[str, Any] | None:
        """The next JSON object from the server, or None when `deadline` passes first."""
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline]).strip()
                del self._buffer[: newline + 1]
                if not line:
                    continue
                try:
                    message = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    raise ProtocolError(f"MCP server wrote a line that is not JSON: {line[:200]!r}") from None
                if not isinstance(message, dict):
                    raise ProtocolError(f"MCP server wrote a non-object message: {line[:200]!r}")
                return message
            if len(self._buffer) > MAX_MESSAGE_BYTES:
                raise ProtocolError(f"MCP server message exceeds {MAX_MESSAGE_BYTES} bytes")
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._selector.select(remaining):
                return None
            chunk = os.read(self._stdout_fd, 1 << 16)
            if not chunk:
                raise self._exited()
            self._buffer += chunk

    def _exited(self) -> ProtocolError:
        try:
            code: int | None = self._proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            code = None
        self._stderr_thread.join(timeout=0.5)
        status = "closed its stdout" if code is None else f"exited with code {code}"
        tail = " | ".join(self._stderr_tail)
        return ProtocolError(f"MCP server {status}" + (f"; its stderr ended with: {tail[-1000:]}" if tail else ""))

    def _drain_stderr(self, stream: IO[bytes]) -> None:
        # Read continuously so a chatty server never blocks on a full pipe; keep the tail for errors.
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip()
            if line:
                self._stderr_tail.append(line[:500])
        stream.close()


def _parse_tool(raw: object) -> McpTool:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise ProtocolError(f"MCP tools/list returned a tool without a name: {raw!r:.200}")
    schema = raw.get("inputSchema")
    description = raw.get("description")
    return {
        "name": raw["name"],
        "description": description if isinstance(description, str) else "",
        "inputSchema": schema if isinstance(schema, dict) else {"type": "object", "properties": {}},
    }


def _content_text(item: object) -> str:
    if not isinstance(item, dict):
        return str(item)
    kind = item.get("type")
    if kind == "text":
        return str(item.get("text", ""))
    if kind == "resource" and isinstance(item.get("resource"), dict):
        resource = item["resource"]
        return str(resource.get("text") or f"[binary resource {resource.get('uri', '')}]")
    if kind == "resource_link":
        return f"[resource link {item.get('uri', '')}]"
    return f"[{kind} content ({item.get('mimeType', 'unknown type')}) omitted]"
