"""A small MCP tool server written with the official Python `mcp` SDK (test-only).

It serves the same tools, with the same argument names, as `hearth-guest mcp`
(shell, read_file, write_file, edit_file, list_dir), so the agent's system prompt
and the tests' scripted model turns match the real server. Paths are resolved
against the workspace (`HEARTH_WORKSPACE`, else the working directory).

Run: python3 sdk_mcp_server.py   (speaks MCP over stdin/stdout)
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

OUTPUT_CAP = 16_000

server = MCPServer("hearth-test-tools")


# The SDK reports only a generic "Error executing tool" for unexpected exceptions; a ToolError's
# message reaches the client, so tools turn the failures a model can act on into ToolErrors.


def _workspace() -> Path:
    return Path(os.environ.get("HEARTH_WORKSPACE") or os.getcwd())


def _resolve(path: str) -> Path:
    return (_workspace() / path).resolve()


def _cap(text: str) -> str:
    if len(text) <= OUTPUT_CAP:
        return text
    return text[:OUTPUT_CAP] + f"\n[output truncated: {len(text) - OUTPUT_CAP} more characters]"


@server.tool()
def shell(command: str, timeout_s: float = 60.0) -> str:
    """Run a shell command in the workspace; returns exit code, stdout and stderr."""
    try:
        done = subprocess.run(
            ["/bin/sh", "-c", command],
            cwd=_workspace(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ToolError(f"command timed out after {timeout_s}s") from None
    return _cap(f"exit code: {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}")


@server.tool()
def read_file(path: str) -> str:
    """Read a UTF-8 text file."""
    try:
        return _cap(_resolve(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ToolError(f"cannot read {path}: {exc}") from None


@server.tool()
def write_file(path: str, content: str) -> str:
    """Create or overwrite a file."""
    target = _resolve(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(content, encoding="utf-8")
    return f"wrote {len(content)} characters to {path}"


@server.tool()
def edit_file(path: str, old: str, new: str) -> str:
    """Replace the exact string `old` with `new`; `old` must occur exactly once."""
    target = _resolve(path)
    try:
        text = target.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ToolError(f"cannot read {path}: {exc}") from None
    count = text.count(old)
    if count != 1:
        raise ToolError(f"`old` must match exactly once in {path}, found {count} matches")
    target.write_text(text.replace(old, new, 1), encoding="utf-8")
    return f"edited {path}"


@server.tool()
def list_dir(path: str) -> str:
    """List a directory; directories end with '/'."""
    try:
        entries = sorted(_resolve(path).iterdir())
    except OSError as exc:
        raise ToolError(f"cannot list {path}: {exc}") from None
    return "\n".join(e.name + ("/" if e.is_dir() else "") for e in entries)


if __name__ == "__main__":
    server.run("stdio")
