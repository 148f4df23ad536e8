"""A `hearth serve` of its own for the E2B tests and benchmark: fresh runtime and state dirs under
/var/tmp (an unpredictable name), the debug build of hearth, and the E2B variables pointed at it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

TARGET = Path(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/hearth-target"))
HEARTH = Path(os.environ.get("HEARTH_BIN", TARGET / "debug" / "hearth"))
GUEST = Path(os.environ.get("HEARTH_GUEST_BIN", TARGET / "debug" / "hearth-guest"))
STATIC_GUEST = TARGET / "x86_64-unknown-linux-gnu" / "release" / "hearth-guest"


class Daemon:
    """One `hearth serve`; `stop()` and `start()` again keep its dirs and its E2B port."""

    def __init__(self) -> None:
        for binary in (HEARTH, GUEST):
            if not binary.is_file():
                raise RuntimeError(f"{binary} missing: build hearth first (cargo build --workspace)")
        self.root = Path(tempfile.mkdtemp(prefix="hearth-e2b-", dir="/var/tmp"))
        # Sandbox roots are unprivileged host users: they must pass through (not list) the
        # dirs above hearth's runtime dir, as they do through /var/tmp.
        self.root.chmod(0o711)
        self.env = {
            **os.environ,
            "HEARTH_RUNTIME_DIR": str(self.root / "run"),
            "HEARTH_STATE_DIR": str(self.root / "state"),
            "HEARTH_GUEST_BINARY": str(GUEST),
        }
        for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "HEARTH_API_TOKEN", "RUST_LOG"):
            self.env.pop(name, None)
        self.process: subprocess.Popen[str] | None = None
        self.e2b_port = 0
        self.api_url = ""
        self.rest_url = ""
        self.token = ""

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(HEARTH), "serve", "--listen", "127.0.0.1:0", "--e2b-listen", f"127.0.0.1:{self.e2b_port}"],
            env=self.env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("hearth serve: listening on http://"):
                self.rest_url = "http://" + line.split("http://", 1)[1].split()[0]
            if "E2B-compatible API on http://" in line:
                self.api_url = "http://" + line.split("http://", 1)[1].split()[0]
                self.e2b_port = int(self.api_url.rsplit(":", 1)[1])
                break
        else:
            raise RuntimeError(f"hearth serve exited ({self.process.wait()}) without serving the E2B API")
        stdout = self.process.stdout
        # Keep reading, so the daemon never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in stdout], daemon=True).start()
        self.token = (self.root / "state" / "api-token").read_text().strip()
        # The SDKs read these when a sandbox or client is made. 2.40 refuses a key that is not
        # e2b_<hex>; hearth accepts its token with that prefix.
        os.environ["E2B_API_URL"] = self.api_url
        os.environ["E2B_SANDBOX_URL"] = self.api_url
        os.environ["E2B_API_KEY"] = f"e2b_{self.token}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def hearth(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The hearth CLI on this daemon's dirs."""
        return subprocess.run([str(HEARTH), *args], env=self.env, capture_output=True, text=True, check=check)

    def sandbox_ids(self) -> list[str]:
        listed = json.loads(self.hearth("sandbox", "ls", "--json").stdout)
        return sorted(entry["id"] for entry in listed)

    def build_vm_image(self) -> None:
        if not STATIC_GUEST.is_file():
            raise RuntimeError(f"{STATIC_GUEST} missing: scripts/test.sh builds the static guest")
        self.hearth("image", "build", "--json", "--guest-binary", str(STATIC_GUEST))

    def close(self) -> list[str]:
        """Stops the daemon, removes whatever sandboxes are left and the dirs. Returns what a test
        left behind: sandboxes, and network namespaces or nft tables of hearth's."""
        self.stop()
        left = self.sandbox_ids()
        for sandbox in left:
            self.hearth("sandbox", "rm", "--force", sandbox, check=False)
        left += host_leftovers()
        shutil.rmtree(self.root, ignore_errors=True)
        return left


def host_leftovers() -> list[str]:
    """Network objects of sandboxes (`sb-` ids: what the E2B API creates) still on the host: a
    `hearth-sb-*` namespace or a `hearth_sb_*` nft table."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False).stdout
    found = [f"netns {line.split()[0]}" for line in netns.splitlines() if line.startswith("hearth-sb-")]
    found += [f"nft {line.split()[-1]}" for line in tables.splitlines() if line.split()[-1].startswith("hearth_sb_")]
    return found


def wait_for(what: str, condition, timeout: float = 30.0, every: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)
