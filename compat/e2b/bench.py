"""E2B SDK against hearth, next to hearth's own interfaces, in one run:

- `commands.run("true")` through the SDK vs the same command (`/bin/bash -l -c true`, what the SDK
  runs) through hearth's REST exec on a kept-alive connection; p50 and p99.
- `Sandbox.create()` through the SDK vs `hearth sandbox create` (the CLI), p50.

Run as root after building hearth: `compat/e2b/bench.sh` (it makes the SDK's virtualenv)."""

from __future__ import annotations

import http.client
import json
import statistics
import sys
import time
from urllib.parse import urlparse

from e2b import Sandbox

from hearth_daemon import Daemon

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 200
CREATES = max(5, RUNS // 20)


def quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(call) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def rest_exec(conn: http.client.HTTPConnection, token: str, sandbox: str, argv: list[str]) -> None:
    body = json.dumps({"argv": argv})
    conn.request(
        "POST",
        f"/v1/sandboxes/{sandbox}/exec",
        body=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    response = conn.getresponse()
    answer = json.loads(response.read())
    assert response.status == 200 and answer["exit_code"] == 0, answer  # noqa: PT018


def main() -> None:
    daemon = Daemon()
    daemon.start()
    try:
        sandbox = Sandbox.create(timeout=600)
        rest = urlparse(daemon.rest_url)
        conn = http.client.HTTPConnection(rest.hostname, rest.port)
        bash_true = ["/bin/bash", "-l", "-c", "true"]
        for _ in range(10):  # warm both paths
            sandbox.commands.run("true")
            rest_exec(conn, daemon.token, sandbox.sandbox_id, bash_true)
        sdk, own, own_plain = [], [], []
        for _ in range(RUNS):  # interleaved, so both see the same machine
            sdk.append(timed(lambda: sandbox.commands.run("true")))
            own.append(timed(lambda: rest_exec(conn, daemon.token, sandbox.sandbox_id, bash_true)))
            own_plain.append(timed(lambda: rest_exec(conn, daemon.token, sandbox.sandbox_id, ["true"])))
        sandbox.kill()

        sdk_create, cli_create = [], []
        for i in range(CREATES):
            start = time.perf_counter()
            made = Sandbox.create()
            sdk_create.append((time.perf_counter() - start) * 1000)
            made.kill()
            name = f"bench-cli-{i}"
            start = time.perf_counter()
            daemon.hearth("sandbox", "create", "--id", name)
            cli_create.append((time.perf_counter() - start) * 1000)
            daemon.hearth("sandbox", "rm", name)
    finally:
        left = daemon.close()
        if left:
            print(f"removed leftovers: {left}", file=sys.stderr)

    print(f"E2B SDK vs hearth's own interfaces ({RUNS} runs each, interleaved; {CREATES} creates)")
    print(f"{'call':<52} {'p50 ms':>8} {'p99 ms':>8}")
    rows = [
        ('SDK commands.run("true")  [bash -l -c true]', sdk),
        ("hearth REST exec          [bash -l -c true]", own),
        ("hearth REST exec          [true]", own_plain),
    ]
    for label, samples in rows:
        print(f"{label:<52} {statistics.median(samples):>8.2f} {quantile(samples, 0.99):>8.2f}")
    ratio = statistics.median(sdk) / statistics.median(own)
    print(f"SDK / REST (same command), p50: {ratio:.2f}x")
    print(f"{'SDK Sandbox.create()':<52} {statistics.median(sdk_create):>8.2f}")
    print(f"{'hearth sandbox create (CLI)':<52} {statistics.median(cli_create):>8.2f}")


if __name__ == "__main__":
    main()
