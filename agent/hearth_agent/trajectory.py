"""The run's event stream: JSON Lines to the trajectory file and to stdout, secrets redacted."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

REDACTED = "[REDACTED]"


def redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            # Both spellings: the raw value and the value as it appears inside a JSON string.
            text = text.replace(secret, REDACTED).replace(json.dumps(secret)[1:-1], REDACTED)
    return text


class Trajectory:
    """One event per line, flushed as written so the host can tail either stream for live progress.

    Every event is `{"ts": unix seconds, "step": N, "type": ..., ...}`; types are model_call,
    tool_call, tool_result, error and final.
    """

    def __init__(self, path: str, *, secrets: Sequence[str], stdout: IO[str] | None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._stdout = stdout
        self._secrets = list(secrets)

    def emit(self, step: int, type_: str, **fields: Any) -> None:
        event = {"ts": round(time.time(), 3), "step": step, "type": type_, **fields}
        line = redact(json.dumps(event, default=str), self._secrets) + "\n"
        self._file.write(line)
        self._file.flush()
        if self._stdout is not None:
            try:
                self._stdout.write(line)
                self._stdout.flush()
            except OSError:  # the host stopped reading; the trajectory file still has everything
                self._stdout = None

    def close(self) -> None:
        self._file.close()


def write_json_atomically(path: str, value: Any, secrets: Sequence[str]) -> None:
    """Write through a temporary file and rename, so a reader never sees half a result."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_text(redact(json.dumps(value, indent=2), secrets) + "\n", encoding="utf-8")
    os.replace(temporary, target)
