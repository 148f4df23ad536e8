"""One `hearth serve` for the whole session (tests run one at a time: two hearth daemons on one
host would reconcile each other's objects away), and a check at the end that nothing is left."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hearth_daemon import Daemon


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    daemon = Daemon()
    daemon.start()
    try:
        yield daemon
    finally:
        left = daemon.close()
    assert left == [], f"sandboxes left behind by the tests: {left}"


@pytest.fixture(autouse=True)
def nothing_left_behind(daemon: Daemon) -> Iterator[None]:
    """Every test removes what it made: no sandbox survives it."""
    yield
    if daemon.process is not None:
        left = daemon.sandbox_ids()
        for sandbox in left:
            daemon.hearth("sandbox", "rm", "--force", sandbox, check=False)
        assert left == [], f"the test left sandboxes behind: {left}"


class TestHost:
    """An HTTP server in a network namespace this test made, reached from the host through a veth
    pair (no real network is involved)."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.netns = f"e2bt-{tag}"
        self.veth = f"e2bt{tag}h"
        octet = int(tag[:2], 16)
        self.host_side = f"10.199.{octet}.1"
        self.address = f"10.199.{octet}.2"
        self.port = 8080
        self.server: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> TestHost:
        def ip(*args: str) -> None:
            subprocess.run(["ip", *args], check=True)

        ip("netns", "add", self.netns)
        try:
            ip("link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
            ip("addr", "add", f"{self.host_side}/30", "dev", self.veth)
            ip("link", "set", self.veth, "up")
            ns = ["netns", "exec", self.netns, "ip"]
            ip(*ns, "addr", "add", f"{self.address}/30", "dev", "eth0")
            ip(*ns, "link", "set", "eth0", "up")
            ip(*ns, "link", "set", "lo", "up")
            ip(*ns, "route", "add", "default", "via", self.host_side)
            self.server = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.netns,
                    "python3",
                    "-m",
                    "http.server",
                    str(self.port),
                    "--bind",
                    self.address,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=os.path.dirname(__file__),
            )
            self._wait_listening()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((self.address, self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def __exit__(self, *_: object) -> None:
        if self.server is not None:
            self.server.terminate()
            self.server.wait()
        subprocess.run(["ip", "link", "del", self.veth], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", self.netns], check=False, capture_output=True)


@pytest.fixture
def test_host() -> Iterator[TestHost]:
    with TestHost() as host:
        yield host
