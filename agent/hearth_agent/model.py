"""The model side: a `ModelClient` protocol and an OpenAI-compatible chat-completions client.

The gateway speaks the OpenAI `POST /v1/chat/completions` API with function calling. A budget
refusal is HTTP 402, or 429, whose JSON body has `error.code` or `error.type` equal to
`budget_exhausted` (OpenAI's own `insufficient_quota` is treated the same); it ends the run as
`budget_exhausted`. Other 429s and 5xx are retried a few times, then end the run.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import BudgetExhausted, ModelError, ProtocolError, TimeLimitReached
from .messages import AssistantMessage, Message, TokenCounts, ToolCall, ToolSpec

BUDGET_ERROR_CODES = frozenset({"budget_exhausted", "insufficient_quota"})


@dataclass(frozen=True)
class Completion:
    message: AssistantMessage
    usage: TokenCounts
    finish_reason: str | None


class ModelClient(Protocol):
    def complete(self, messages: Sequence[Message], tools: Sequence[ToolSpec], timeout_s: float) -> Completion:
        """One model turn. `timeout_s` is the time left in the run: running out raises TimeLimitReached."""
        ...


class _Retryable(Exception):
    def __init__(self, reason: str, wait_s: float | None = None) -> None:
        super().__init__(reason)
        self.wait_s = wait_s


class OpenAIChatClient:
    def __init__(self, base_url: str, token: str, model: str, *, retries: int = 2, backoff_s: float = 0.5) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"the gateway URL must be http(s), got {base_url!r}")
        self._url = base_url.rstrip("/") + "/v1/chat/completions"
        self._token = token
        self._model = model
        self._retries = retries
        self._backoff_s = backoff_s
        # An empty ProxyHandler: the sandbox reaches the gateway directly, whatever *_proxy says.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def __repr__(self) -> str:  # keeps the token out of any accidental repr()
        return f"OpenAIChatClient(url={self._url!r}, model={self._model!r})"

    def complete(self, messages: Sequence[Message], tools: Sequence[ToolSpec], timeout_s: float) -> Completion:
        body: dict[str, Any] = {"model": self._model, "messages": list(messages)}
        if tools:
            body["tools"] = list(tools)
        data = json.dumps(body).encode()
        deadline = time.monotonic() + timeout_s
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeLimitReached("time limit reached while waiting for the model")
            try:
                return parse_completion(self._post(data, remaining))
            except _Retryable as exc:
                if attempt >= self._retries:
                    raise ModelError(f"model call failed after {attempt + 1} attempts: {exc}") from None
                wait = exc.wait_s if exc.wait_s is not None else self._backoff_s * 2**attempt
                time.sleep(max(0.0, min(wait, 10.0, deadline - time.monotonic())))
                attempt += 1

    def _post(self, data: bytes, timeout_s: float) -> bytes:
        request = urllib.request.Request(self._url, data=data, method="POST")  # noqa: S310 - http(s) checked above
        request.add_header("Content-Type", "application/json")
        request.add_header("Authorization", f"Bearer {self._token}")
        try:
            with self._opener.open(request, timeout=timeout_s) as response:
                payload: bytes = response.read()
                return payload
        except urllib.error.HTTPError as exc:
            raise _http_error(exc.code, exc.read(), exc.headers.get("Retry-After")) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError | socket.timeout):
                raise TimeLimitReached("time limit reached while waiting for the model") from None
            raise _Retryable(f"cannot reach the gateway at {self._url}: {exc.reason}") from None
        except TimeoutError:
            raise TimeLimitReached("time limit reached while waiting for the model") from None
        except (OSError, http.client.HTTPException) as exc:
            raise _Retryable(f"connection to the gateway failed: {type(exc).__name__}: {exc}") from None


def _http_error(status: int, body: bytes, retry_after: str | None) -> Exception:
    code, message = _error_fields(body)
    detail = f"HTTP {status} from the gateway: {message}"
    if status == 402 or (status == 429 and code in BUDGET_ERROR_CODES):
        return BudgetExhausted(f"token budget exhausted (gateway said: {message})")
    if status == 429:
        wait = float(retry_after) if retry_after and retry_after.isdigit() else None
        return _Retryable(detail, wait)
    if status >= 500:
        return _Retryable(detail)
    return ModelError(detail)


def _error_fields(body: bytes) -> tuple[str | None, str]:
    text = body.decode("utf-8", errors="replace")
    try:
        error = json.loads(text).get("error")
    except (json.JSONDecodeError, AttributeError):
        return None, text[:500] or "(empty body)"
    if isinstance(error, dict):
        code = error.get("code") if isinstance(error.get("code"), str) else error.get("type")
        return (code if isinstance(code, str) else None), str(error.get("message", text[:500]))
    if isinstance(error, str):
        return None, error
    return None, text[:500]


def parse_completion(payload: bytes) -> Completion:
    """Validate a chat-completions response into a Completion; anything malformed is a ProtocolError."""
    try:
        body = json.loads(payload)
        choice = body["choices"][0]
        raw = choice["message"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError) as exc:
        raise ProtocolError(f"malformed model response ({type(exc).__name__}: {exc}): {payload[:300]!r}") from None
    if not isinstance(raw, dict):
        raise ProtocolError("malformed model response: choices[0].message is not an object")
    content = raw.get("content")
    if content is not None and not isinstance(content, str):
        raise ProtocolError("malformed model response: message.content is neither a string nor null")
    message: AssistantMessage = {"role": "assistant", "content": content}
    calls = raw.get("tool_calls")
    if calls:
        if not isinstance(calls, list):
            raise ProtocolError("malformed model response: message.tool_calls is not a list")
        message["tool_calls"] = [_parse_tool_call(c) for c in calls]
    finish = choice.get("finish_reason")
    return Completion(message, _parse_usage(body.get("usage")), finish if isinstance(finish, str) else None)


def _parse_tool_call(raw: object) -> ToolCall:
    if not isinstance(raw, dict) or not isinstance(raw.get("function"), dict):
        raise ProtocolError(f"malformed tool call in model response: {raw!r:.300}")
    call_id, name, arguments = raw.get("id"), raw["function"].get("name"), raw["function"].get("arguments", "")
    if not isinstance(call_id, str) or not call_id or not isinstance(name, str):
        raise ProtocolError(f"tool call without an id or function name: {raw!r:.300}")
    if not isinstance(arguments, str):  # some servers send an object; the loop parses text uniformly
        arguments = json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _parse_usage(raw: object) -> TokenCounts:
    if not isinstance(raw, dict):
        return {"prompt": 0, "completion": 0, "total": 0}
    prompt, completion = _count(raw.get("prompt_tokens")), _count(raw.get("completion_tokens"))
    total = _count(raw.get("total_tokens")) or prompt + completion
    return {"prompt": prompt, "completion": completion, "total": total}


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
