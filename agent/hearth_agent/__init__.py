"""hearth's in-sandbox agent: an OpenAI-compatible model loop with MCP tools (standard library only)."""

__version__ = "0.1.0"
