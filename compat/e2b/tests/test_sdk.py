"""E2B's official Python SDK against `hearth serve`, through the SDK's public API only."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import pytest
from e2b import AsyncSandbox, CommandExitException, Sandbox, SandboxQuery, SandboxState
from e2b.exceptions import AuthenticationException, NotFoundException, SandboxException, TimeoutException

from hearth_daemon import Daemon, wait_for

RUN = os.urandom(4).hex()
PROBE = "python3 -c \"import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3); print('reached')\" "


def test_commands_run_with_exit_codes_callbacks_env_and_cwd(daemon: Daemon) -> None:
    sandbox = Sandbox.create(envs={"FROM_SANDBOX": "s"}, metadata={"suite": RUN})
    try:
        out: list[str] = []
        err: list[str] = []
        result = sandbox.commands.run(
            "echo $FROM_SANDBOX $FROM_CMD; pwd; echo oops >&2",
            envs={"FROM_CMD": "c"},
            on_stdout=out.append,
            on_stderr=err.append,
        )
        assert result.exit_code == 0
        assert result.stdout == "s c\n/workspace\n"
        assert result.stderr == "oops\n"
        assert "".join(out) == result.stdout
        assert "".join(err) == result.stderr
        assert sandbox.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"
        with pytest.raises(CommandExitException) as failed:
            sandbox.commands.run("echo partial; exit 3")
        assert failed.value.exit_code == 3
        assert failed.value.stdout == "partial\n"
        # A command's stdin is empty unless it asks for one.
        assert sandbox.commands.run("cat").stdout == ""
        with pytest.raises(SandboxException, match="bob"):
            sandbox.commands.run("id", user="bob")
        assert sandbox.commands.run("id -u", user="root").stdout == "0\n"
        assert sandbox.is_running()
    finally:
        assert sandbox.kill()
    assert not sandbox.is_running()
    # Killed twice: the second finds nothing (False, as E2B answers).
    assert Sandbox.kill(sandbox.sandbox_id) is False
    assert sandbox.sandbox_id not in daemon.sandbox_ids()


def test_background_commands_wait_kill_and_stdin(daemon: Daemon) -> None:
    sandbox = Sandbox.create()
    try:
        handle = sandbox.commands.run("sleep 60", background=True)
        listed = {p.pid: p for p in sandbox.commands.list()}
        assert handle.pid in listed
        assert listed[handle.pid].args[-1] == "sleep 60"
        assert handle.kill()
        with pytest.raises(CommandExitException) as killed:
            handle.wait()
        assert killed.value.exit_code != 0
        wait_for(
            "the killed command to leave the list", lambda: handle.pid not in [p.pid for p in sandbox.commands.list()]
        )
        assert sandbox.commands.kill(handle.pid) is False

        cat = sandbox.commands.run("cat; echo done", background=True, stdin=True)
        sandbox.commands.send_stdin(cat.pid, "line one\n")
        sandbox.commands.send_stdin(cat.pid, "line two\n")
        sandbox.commands.close_stdin(cat.pid)
        assert cat.wait().stdout == "line one\nline two\ndone\n"

        quick = sandbox.commands.run("sleep 0.5; echo finished", background=True)
        assert quick.wait().stdout == "finished\n"
    finally:
        sandbox.kill()


def test_files_round_trip_and_directories(daemon: Daemon) -> None:
    sandbox = Sandbox.create()
    try:
        info = sandbox.files.write("notes/hello.txt", "hi there")
        assert info.path == "/workspace/notes/hello.txt"
        assert sandbox.files.read("notes/hello.txt") == "hi there"
        assert sandbox.commands.run("cat /workspace/notes/hello.txt").stdout == "hi there"
        assert sandbox.files.exists("notes/hello.txt")
        assert not sandbox.files.exists("notes/missing.txt")
        assert sandbox.files.make_dir("notes/sub/deeper") is True
        assert sandbox.files.make_dir("notes/sub/deeper") is False
        moved = sandbox.files.rename("notes/hello.txt", "notes/sub/moved.txt")
        assert moved.path == "/workspace/notes/sub/moved.txt"
        shallow = {entry.path for entry in sandbox.files.list("notes")}
        assert shallow == {"/workspace/notes/sub"}
        deep = {entry.path: entry.type.value for entry in sandbox.files.list("notes", depth=3)}
        assert deep == {
            "/workspace/notes/sub": "dir",
            "/workspace/notes/sub/deeper": "dir",
            "/workspace/notes/sub/moved.txt": "file",
        }
        stat = sandbox.files.get_info("notes/sub/moved.txt")
        assert stat.size == len("hi there")
        sandbox.files.remove("notes")
        assert not sandbox.files.exists("notes")
        with pytest.raises(NotFoundException):
            sandbox.files.read("notes/sub/moved.txt")
        with pytest.raises(NotFoundException):
            sandbox.files.remove("notes")

        big = os.urandom(24 << 20)
        sandbox.files.write("/tmp/big.bin", big)
        assert bytes(sandbox.files.read("/tmp/big.bin", format="bytes")) == big
        digest = sandbox.commands.run("sha256sum /tmp/big.bin").stdout.split()[0]
        assert digest == hashlib.sha256(big).hexdigest()
    finally:
        sandbox.kill()


def test_watch_dir_reports_changes(daemon: Daemon) -> None:
    sandbox = Sandbox.create()
    try:
        sandbox.files.make_dir("watched")
        handle = sandbox.files.watch_dir("watched", recursive=True)
        sandbox.files.make_dir("watched/sub")
        sandbox.commands.run("echo hi > watched/sub/a.txt; rm watched/sub/a.txt")
        seen: set[tuple[str, str]] = set()

        def removed() -> bool:
            seen.update((e.type.value, e.name) for e in handle.get_new_events())
            return ("remove", "sub/a.txt") in seen

        wait_for(f"the removal to be reported (saw {seen})", removed, timeout=15)
        assert ("create", "sub") in seen
        assert ("create", "sub/a.txt") in seen
        assert ("write", "sub/a.txt") in seen
        handle.stop()
        with pytest.raises(SandboxException):
            handle.get_new_events()
        with pytest.raises(NotFoundException):
            sandbox.files.watch_dir("no-such-dir")
    finally:
        sandbox.kill()


def test_a_second_client_connects_and_follows_a_running_command(daemon: Daemon) -> None:
    first = Sandbox.create(timeout=120)
    try:
        handle = first.commands.run("sleep 1; echo late", background=True)
        second = Sandbox.connect(first.sandbox_id)
        assert second.sandbox_id == first.sandbox_id
        followed = second.commands.connect(handle.pid)
        assert followed.wait().stdout == "late\n"
        second.files.write("/tmp/from-second", "2")
        assert first.files.read("/tmp/from-second") == "2"
        info = Sandbox.get_info(first.sandbox_id)
        assert info.state.value == "running"
    finally:
        first.kill()


def test_list_filters_by_metadata_and_pages(daemon: Daemon) -> None:
    one = Sandbox.create(metadata={"suite": RUN, "n": "1"})
    two = Sandbox.create(metadata={"suite": RUN, "n": "2"})
    try:
        mine = Sandbox.list(query=SandboxQuery(metadata={"suite": RUN})).next_items()
        assert {s.sandbox_id for s in mine} == {one.sandbox_id, two.sandbox_id}
        only = Sandbox.list(query=SandboxQuery(metadata={"suite": RUN, "n": "2"})).next_items()
        assert [s.sandbox_id for s in only] == [two.sandbox_id]
        assert only[0].metadata == {"suite": RUN, "n": "2"}
        pages = Sandbox.list(query=SandboxQuery(metadata={"suite": RUN}), limit=1)
        seen = pages.next_items()
        assert pages.has_next
        seen += pages.next_items()
        assert {s.sandbox_id for s in seen} == {one.sandbox_id, two.sandbox_id}
    finally:
        one.kill()
        two.kill()


def test_wrong_key_and_unknown_sandbox(daemon: Daemon) -> None:
    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key="e2b_0123456789abcdef")
    with pytest.raises(NotFoundException):
        Sandbox.connect("sb-nosuchsandbox")
    with pytest.raises(NotFoundException):
        Sandbox.get_info("sb-nosuchsandbox")
    assert Sandbox.kill("sb-nosuchsandbox") is False


def test_options_hearth_cannot_honour_are_refused_by_name(daemon: Daemon) -> None:
    with pytest.raises(SandboxException, match="deny_out"):
        Sandbox.create(network={"deny_out": ["8.8.8.8"]})
    with pytest.raises(SandboxException, match="node22"):
        Sandbox.create(template="node22")
    with pytest.raises(SandboxException, match="autoPause"):
        Sandbox.create(lifecycle={"on_timeout": "pause"})
    sandbox = Sandbox.create()
    try:
        with pytest.raises(SandboxException, match="OCI"):
            sandbox.pause()
    finally:
        sandbox.kill()


def test_the_timeout_removes_the_sandbox(daemon: Daemon) -> None:
    sandbox = Sandbox.create(timeout=2)
    wait_for("the sandbox to expire", lambda: sandbox.sandbox_id not in daemon.sandbox_ids(), timeout=30)
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sandbox.sandbox_id)
    # set_timeout moves the deadline.
    kept = Sandbox.create(timeout=2)
    try:
        kept.set_timeout(120)
        time.sleep(3)
        assert kept.is_running()
    finally:
        kept.kill()


def test_the_timeout_holds_across_a_restart_of_hearth_serve(daemon: Daemon) -> None:
    sandbox = Sandbox.create(timeout=3)
    daemon.stop()
    try:
        time.sleep(4)
        assert sandbox.sandbox_id in daemon.sandbox_ids(), "nothing removes it while the daemon is down"
    finally:
        daemon.start()
    wait_for("the restarted daemon to remove it", lambda: sandbox.sandbox_id not in daemon.sandbox_ids(), timeout=30)


def test_allow_out_is_enforced(daemon: Daemon, test_host) -> None:  # type: ignore[no-untyped-def]
    url = f"http://{test_host.address}:{test_host.port}/"
    allowed = Sandbox.create(network={"allow_out": [test_host.address], "deny_out": ["0.0.0.0/0"]})
    other = Sandbox.create(network={"allow_out": ["192.0.2.1"]})
    offline = Sandbox.create(allow_internet_access=False)
    try:
        assert allowed.commands.run(PROBE + url).stdout == "reached\n"
        for sandbox in (other, offline):
            with pytest.raises(CommandExitException):
                sandbox.commands.run(PROBE + url)
    finally:
        for sandbox in (allowed, other, offline):
            sandbox.kill()


def test_the_async_client(daemon: Daemon) -> None:
    async def scenario() -> None:
        sandbox = await AsyncSandbox.create()
        try:
            result = await sandbox.commands.run("echo async")
            assert result.stdout == "async\n"
            events: list[tuple[str, str]] = []
            watch = await sandbox.files.watch_dir(".", on_event=lambda e: events.append((e.type.value, e.name)))
            await sandbox.files.write("a.txt", "from async")
            assert await sandbox.files.read("a.txt") == "from async"
            for _ in range(100):
                if ("create", "a.txt") in events:
                    break
                await asyncio.sleep(0.1)
            assert ("create", "a.txt") in events, events
            await watch.stop()
            assert await sandbox.is_running()
        finally:
            await sandbox.kill()

    asyncio.run(scenario())


@pytest.mark.skipif(os.environ.get("HEARTH_E2B_SKIP_VM") == "1", reason="HEARTH_E2B_SKIP_VM=1")
def test_pause_and_resume_a_qemu_sandbox(daemon: Daemon) -> None:
    daemon.build_vm_image()
    sandbox = Sandbox.create(template="qemu", timeout=300)
    try:
        sandbox.files.write("state.txt", "before pause")
        counter = sandbox.commands.run(
            "i=0; while true; do i=$((i+1)); echo $i > /tmp/n; sleep 0.1; done", background=True
        )
        assert sandbox.pause() is True
        assert Sandbox.get_info(sandbox.sandbox_id).state.value == "paused"
        assert [s.sandbox_id for s in Sandbox.list(query=SandboxQuery(state=[SandboxState.PAUSED])).next_items()] == [
            sandbox.sandbox_id
        ]
        with pytest.raises((SandboxException, TimeoutException)):
            sandbox.commands.run("true")
        resumed = Sandbox.connect(sandbox.sandbox_id)
        assert Sandbox.get_info(sandbox.sandbox_id).state.value == "running"
        assert resumed.files.read("state.txt") == "before pause"
        first = int(resumed.commands.run("cat /tmp/n").stdout)
        time.sleep(1)
        assert int(resumed.commands.run("cat /tmp/n").stdout) > first, "the command runs on after resume"
        counter.kill()
    finally:
        sandbox.kill()
