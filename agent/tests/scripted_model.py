"""scripted_model: a test fixture standing in for an OpenAI-compatible model server.

It serves a fixed script of model turns, one per `POST /v1/chat/completions`, from an
`http.server` thread on 127.0.0.1, and records every request (headers and body) so tests can
check what the agent sent. It is a fixture of canned turns, not a model.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class ScriptedTurn:
    """One response: `status` with `body` (JSON), optionally after holding the request `delay_s`."""

    body: Any
    status: int = 200
    delay_s: float = 0.0


@dataclass
class RecordedRequest:
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = self.body["messages"]
        return messages


def tool_call_turn(*calls: tuple[str, Any], tokens: int = 10, content: str | None = None) -> ScriptedTurn:
    """A turn calling tools; each call is (name, arguments), arguments a dict or raw JSON text."""
    tool_calls = [
        {
            "id": f"call_{i}_{name}",
            "type": "function",
            "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)},
        }
        for i, (name, args) in enumerate(calls)
    ]
    message = {"role": "assistant", "content": content, "tool_calls": tool_calls}
    return ScriptedTurn(_completion(message, "tool_calls", tokens))


def final_turn(text: str, tokens: int = 10) -> ScriptedTurn:
    return ScriptedTurn(_completion({"role": "assistant", "content": text}, "stop", tokens))


def error_turn(status: int, message: str, code: str | None = None) -> ScriptedTurn:
    return ScriptedTurn({"error": {"message": message, "type": code or "server_error", "code": code}}, status)


def _completion(message: dict[str, Any], finish: str, tokens: int) -> dict[str, Any]:
    prompt = tokens // 2
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "model": "scripted",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": tokens - prompt, "total_tokens": tokens},
    }


@dataclass
class ScriptedModel:
    """Serves `turns` in order; a request past the end gets HTTP 500 'script exhausted'."""

    turns: list[ScriptedTurn]
    requests: list[RecordedRequest] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> ScriptedModel:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.released.set()  # wakes any turn still holding its request
        self._server.shutdown()
        self._server.server_close()

    def next_turn(self, request: RecordedRequest) -> ScriptedTurn:
        with self._lock:
            index = len(self.requests)
            self.requests.append(request)
        if index < len(self.turns):
            return self.turns[index]
        return error_turn(500, f"scripted model: script exhausted after {len(self.turns)} turns")


def _make_handler(model: ScriptedModel) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            turn = model.next_turn(RecordedRequest(dict(self.headers.items()), body))
            if turn.delay_s:
                model.released.wait(turn.delay_s)
            payload = json.dumps(turn.body).encode()
            try:
                self.send_response(turn.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:
                pass  # the agent gave up on this request (its time ran out)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def scripted(turns: Sequence[ScriptedTurn]) -> ScriptedModel:
    return ScriptedModel(list(turns)).start()
