"""A deliberately minimal, hand-written MCP stdio server (test-only, standard library).

The official SDK always agrees to the client's protocol version, so this stands in for
older or odd servers: it answers `initialize` with the version given on its command line and
exercises what the SDK server doesn't: a paginated tools/list, a log notification and a
server-to-client `ping` in the middle of a tools/call (echo), and (with `sleep`) a slow tool.

Usage: python3 handwritten_mcp_server.py PROTOCOL_VERSION
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

PAGES: dict[str | None, dict[str, Any]] = {
    None: {"tools": [{"name": "echo", "inputSchema": {"type": "object"}}], "nextCursor": "page2"},
    "page2": {"tools": [{"name": "sleep", "description": "sleeps", "inputSchema": {"type": "object"}}]},
}


def send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def call_tool(request_id: object, params: dict[str, Any]) -> None:
    send({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "working"}})
    if params["name"] == "sleep":
        time.sleep(float(params["arguments"].get("seconds", 1)))
    else:  # no ping around the slow tool: a client that gave up on it would never answer
        send({"jsonrpc": "2.0", "id": "srv-1", "method": "ping"})
        pong = json.loads(sys.stdin.readline())
        assert pong == {"jsonrpc": "2.0", "id": "srv-1", "result": {}}, pong
    text = json.dumps(params["arguments"])
    send({"jsonrpc": "2.0", "id": request_id, "result": {"content": [{"type": "text", "text": text}]}})


def main() -> None:
    version = sys.argv[1]
    for line in sys.stdin:
        message = json.loads(line)
        method, request_id = message.get("method"), message.get("id")
        if method == "initialize":
            result = {"protocolVersion": version, "capabilities": {"tools": {}}, "serverInfo": {"name": "handwritten"}}
            send({"jsonrpc": "2.0", "id": request_id, "result": result})
        elif method == "tools/list":
            send({"jsonrpc": "2.0", "id": request_id, "result": PAGES[message["params"].get("cursor")]})
        elif method == "tools/call":
            call_tool(request_id, message["params"])


if __name__ == "__main__":
    main()
