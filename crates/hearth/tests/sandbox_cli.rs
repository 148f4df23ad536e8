//! The sandbox runtime end to end: the `hearth` binary, real runc, real namespaces and cgroups.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{leftovers, ok, run, stderr, stdout, Sandbox};

#[test]
fn create_exec_cp_rm_round_trip() {
    let sb = Sandbox::create("rt-round-trip", &[]);
    let listed = ok(&["sandbox", "ls", "--json"]);
    let records: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let mine = records
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "rt-round-trip")
        .expect("listed");
    assert_eq!(mine["status"], "running");

    // Output streams stay separate and the exit code comes through.
    let out = sb.sh("echo to-out; echo to-err >&2; exit 7");
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(stdout(&out), "to-out\n");
    assert_eq!(stderr(&out), "to-err\n");

    // env and cwd reach the command; nothing else of the host's environment does.
    let out = common::hearth()
        .env("HEARTH_TEST_SECRET", "leak")
        .args([
            "sandbox",
            "exec",
            &sb.id,
            "--env",
            "GREETING=hi",
            "--cwd",
            "/tmp",
            "--",
            "sh",
            "-c",
            "echo $GREETING $(pwd) ${HEARTH_TEST_SECRET:-none}",
        ])
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "hi /tmp none\n");

    // cp in, change inside, cp out.
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("note.txt");
    std::fs::write(&local, "first\n").unwrap();
    ok(&[
        "sandbox",
        "cp",
        local.to_str().unwrap(),
        &format!("{}:/workspace/", sb.id),
    ]);
    sb.sh_ok("echo second >> /workspace/note.txt");
    let back = tmp.path().join("back.txt");
    ok(&[
        "sandbox",
        "cp",
        &format!("{}:/workspace/note.txt", sb.id),
        back.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "first\nsecond\n");

    // stdin is forwarded with -i.
    let mut child = common::hearth()
        .args(["sandbox", "exec", "-i", &sb.id, "--", "wc", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"12345").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(stdout(&out).trim(), "5");

    ok(&["sandbox", "rm", &sb.id]);
    assert!(leftovers(&sb.id).is_empty(), "{:?}", leftovers(&sb.id));
}

#[test]
fn sandbox_is_isolated_from_the_host() {
    // `--net none`: the namespace hearth made has loopback only (the default adds the
    // firewalled link to hearth's gateway; see network_modes_and_the_net_command).
    let sb = Sandbox::create("rt-isolation", &["--net", "none"]);
    assert_eq!(sb.sh_ok("cat /proc/1/comm").trim(), "hearth-guest");

    // Host processes are invisible: the test runner's own pid is not there, and the sandbox
    // sees only its own few processes.
    let pids = sb.sh_ok("ls /proc | grep -E '^[0-9]+$'");
    let pids: Vec<u32> = pids.lines().map(|l| l.parse().unwrap()).collect();
    assert!(pids.len() < 10, "sandbox sees {} processes", pids.len());
    assert!(!pids.contains(&std::process::id()) || std::process::id() < 10);

    let out = sb.sh("touch /usr/hearth-test 2>&1");
    assert!(!out.status.success());
    assert!(
        stdout(&out).contains("Read-only file system"),
        "{}",
        stdout(&out)
    );

    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let inside = sb.sh_ok("cat /proc/sys/kernel/hostname");
    assert_eq!(inside.trim(), "rt-isolation");
    assert_ne!(inside.trim(), host);

    assert_eq!(
        sb.sh_ok("ls /sys/class/net")
            .split_whitespace()
            .collect::<Vec<_>>(),
        vec!["lo"]
    );

    let status = sb.sh_ok("grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs)' /proc/self/status");
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
    assert!(status.contains("CapBnd:\t0000000000000000"), "{status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");

    // The workspace is writable; the rest of the root is not.
    sb.sh_ok("touch /workspace/ok /tmp/ok");
    assert!(!sb.sh("touch /etc/passwd-new").status.success());
}

#[test]
fn memory_limit_kills_and_is_reported_as_oom() {
    let sb = Sandbox::create("rt-oom", &["--memory", "64M"]);
    // Touch 256 MiB, four times the limit.
    let out = run(&[
        "sandbox", "exec", &sb.id, "--", "python3", "-c",
        "b = bytearray(256 * 1024 * 1024)\nfor i in range(0, len(b), 4096): b[i] = 1\nprint('survived')",
    ]);
    assert_eq!(out.status.code(), Some(137), "stderr: {}", stderr(&out));
    assert!(!stdout(&out).contains("survived"));
    assert!(stderr(&out).contains("out of memory"), "{}", stderr(&out));
    // The sandbox itself is still usable afterwards.
    assert_eq!(sb.sh_ok("echo alive").trim(), "alive");
}

#[test]
fn fork_bomb_stops_at_the_pids_limit() {
    let sb = Sandbox::create("rt-forkbomb", &["--pids", "64"]);
    let started = Instant::now();
    let out = run(&[
        "sandbox",
        "exec",
        &sb.id,
        "--timeout",
        "5",
        "--",
        "sh",
        "-c",
        "bomb() { bomb | bomb & }; bomb; sleep 3",
    ]);
    // The timeout (124) or the shell's own end: either way it came back.
    assert!(out.status.code().is_some(), "{:?}", out.status.signal());
    assert!(started.elapsed() < Duration::from_secs(60));
    // The host stayed responsive: a host process starts and finishes promptly.
    let host_started = Instant::now();
    assert!(std::process::Command::new("true")
        .status()
        .unwrap()
        .success());
    assert!(host_started.elapsed() < Duration::from_secs(5));
    // The cgroup hit its limit and refused forks.
    let events = std::fs::read_to_string("/sys/fs/cgroup/pids/hearth/rt-forkbomb/pids.events")
        .or_else(|_| std::fs::read_to_string("/sys/fs/cgroup/hearth/rt-forkbomb/pids.events"))
        .expect("pids.events of the sandbox cgroup");
    let max_hits: u64 = events.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(max_hits > 0, "pids.events: {events}");
    // And the sandbox still answers.
    assert_eq!(sb.sh_ok("echo alive").trim(), "alive");
}

#[test]
fn failed_create_leaves_nothing_behind() {
    // A guest binary that exits at once: runc starts the container, then the guest never
    // answers, so the create fails half-way after the runtime made everything.
    let id = "rt-failed-create";
    let out = common::hearth()
        .env("HEARTH_GUEST_BINARY", "/usr/bin/false")
        .args(["sandbox", "create", "--id", id])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("did not come up"), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).trim().lines().count(),
        1,
        "one line: {}",
        stderr(&out)
    );
    assert!(leftovers(id).is_empty(), "{:?}", leftovers(id));

    // A missing guest binary fails before the runtime runs, also cleanly.
    let out = common::hearth()
        .env("HEARTH_GUEST_BINARY", "/nonexistent/hearth-guest")
        .args(["sandbox", "create", "--id", id])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(leftovers(id).is_empty(), "{:?}", leftovers(id));

    // A workspace that does not exist is bad input.
    let out = run(&[
        "sandbox",
        "create",
        "--id",
        id,
        "--workspace",
        "/nonexistent/ws",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(leftovers(id).is_empty(), "{:?}", leftovers(id));
}

#[test]
fn killed_create_is_cleaned_up_on_the_next_run() {
    let id = "rt-killed-create";
    for delay_ms in [30u64, 120, 250] {
        let mut child = common::hearth()
            .args(["sandbox", "create", "--id", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL: no cleanup code runs
        let _ = child.wait();
        // The next hearth command reconciles. If the create had finished, remove it normally.
        ok(&["sandbox", "ls"]);
        let _ = run(&["sandbox", "rm", id]);
        assert!(
            leftovers(id).is_empty(),
            "after kill at {delay_ms} ms: {:?}",
            leftovers(id)
        );
    }
}

#[test]
fn bad_ids_are_rejected_with_nothing_created() {
    let long = "a".repeat(65);
    for bad in [
        "../escape",
        "a/b",
        "has space",
        "Upper",
        "caf\u{e9}",
        long.as_str(),
        "-lead",
        "",
    ] {
        let out = run(&["sandbox", "create", &format!("--id={bad}")]);
        assert_eq!(out.status.code(), Some(3), "{bad:?}: {}", stderr(&out));
        assert!(stderr(&out).starts_with("hearth: "), "{}", stderr(&out));
        assert_eq!(stderr(&out).lines().count(), 1);
        if !bad.starts_with('-') {
            let out = run(&["sandbox", "exec", bad, "--", "true"]);
            assert_eq!(out.status.code(), Some(3), "{bad:?}");
        }
    }
    let sandboxes = std::fs::read_dir(common::env().runtime_dir.join("sandboxes")).unwrap();
    for entry in sandboxes {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(hearth_sandbox_id_ok(&name), "unexpected dir {name}");
    }
}

#[test]
fn snapshot_bad_inputs_have_distinct_codes_and_make_nothing() {
    // No such snapshot: 4, and no sandbox (record, dirs, netns) for the id.
    let out = run(&[
        "sandbox",
        "create",
        "--id",
        "rt-from-nothing",
        "--from-snapshot",
        "no-such-snap",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no snapshot named no-such-snap"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).lines().count(), 1);
    assert!(
        leftovers("rt-from-nothing").is_empty(),
        "{:?}",
        leftovers("rt-from-nothing")
    );
    let out = run(&["sandbox", "snapshot-rm", "no-such-snap"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let out = run(&["sandbox", "snapshot", "rt-no-such"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    // Names are validated like ids, before anything is looked up.
    for bad in ["../escape", "a/b", "Upper", "-lead", ""] {
        let out = run(&[
            "sandbox",
            "snapshot",
            "rt-no-such",
            &format!("--name={bad}"),
        ]);
        assert_eq!(out.status.code(), Some(3), "{bad:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("snapshot name"), "{}", stderr(&out));
        let out = run(&["sandbox", "create", &format!("--from-snapshot={bad}")]);
        assert_eq!(out.status.code(), Some(3), "{bad:?}: {}", stderr(&out));
    }
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&["sandbox", "snapshots", "--json"])).unwrap();
    assert!(listed.is_array(), "{listed}");
}

fn hearth_sandbox_id_ok(name: &str) -> bool {
    name.chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

#[test]
fn errors_have_distinct_codes() {
    let out = run(&["sandbox", "exec", "rt-no-such", "--", "true"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr(&out).contains("no sandbox with id rt-no-such"));

    let sb = Sandbox::create("rt-errors", &[]);
    let out = run(&["sandbox", "exec", &sb.id, "--", "no-such-binary"]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));

    let out = run(&[
        "sandbox",
        "exec",
        &sb.id,
        "--timeout",
        "0.3",
        "--",
        "sleep",
        "10",
    ]);
    assert_eq!(out.status.code(), Some(124));

    let out = run(&[
        "sandbox",
        "cp",
        &format!("{}:/workspace/missing", sb.id),
        "/tmp",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));

    // A file over the copy limit is refused before anything is sent.
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big");
    let file = std::fs::File::create(&big).unwrap();
    file.set_len(65 * 1024 * 1024).unwrap();
    let out = run(&[
        "sandbox",
        "cp",
        big.to_str().unwrap(),
        &format!("{}:/workspace/big", sb.id),
    ]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert!(!sb.sh("test -e /workspace/big").status.success());

    let out = run(&["sandbox", "create", "--id", &sb.id]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    // The failed duplicate create did not harm the original.
    assert_eq!(sb.sh_ok("echo still-here").trim(), "still-here");

    let out = run(&["sandbox", "create", "--memory", "lots"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap rejects a bad size: {}",
        stderr(&out)
    );
}

#[test]
fn host_workspace_is_shared_read_write() {
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(ws.path().join("input.txt"), "from host\n").unwrap();
    let sb = Sandbox::create(
        "rt-workspace",
        &["--workspace", ws.path().to_str().unwrap()],
    );
    assert_eq!(sb.sh_ok("cat /workspace/input.txt"), "from host\n");
    sb.sh_ok("echo from sandbox > /workspace/output.txt");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("output.txt")).unwrap(),
        "from sandbox\n"
    );
    ok(&["sandbox", "rm", &sb.id]);
    // Removing the sandbox never deletes the user's workspace.
    assert!(ws.path().join("output.txt").exists());
}

#[test]
fn doctor_reports_the_oci_backend_usable() {
    let out = ok(&["doctor", "--json"]);
    let checks: serde_json::Value = serde_json::from_str(&out).unwrap();
    let find = |name: &str| {
        checks
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(find("runc")["ok"], true);
    assert_eq!(find("netns")["ok"], true);
    let kvm = find("kvm");
    if !kvm["ok"].as_bool().unwrap() {
        assert!(kvm["fix"].is_string(), "a failing check carries a fix");
    }
}

#[test]
fn default_seccomp_profile_denies_with_eperm_and_the_program_carries_on() {
    let sb = Sandbox::create("rt-seccomp", &[]);
    let script = [
        "import ctypes, os",
        "libc = ctypes.CDLL(None, use_errno=True)",
        "calls = [('unshare', lambda: libc.unshare(0x10000000)),",
        "         ('mount', lambda: libc.mount(b'x', b'/tmp', b'tmpfs', 0, None)),",
        "         ('keyctl', lambda: libc.syscall(250, 0, 0, 0, 0, 0)),",
        "         ('bpf', lambda: libc.syscall(321, 0, 0, 0)),",
        "         ('ptrace', lambda: libc.ptrace(16, 1, 0, 0))]",
        "for name, call in calls:",
        "    ctypes.set_errno(0); r = call(); print(name, r, ctypes.get_errno())",
        "print('carried on', os.getpid() > 0)",
    ]
    .join("\n");
    let out = run(&["sandbox", "exec", &sb.id, "--", "python3", "-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for name in ["unshare", "mount", "keyctl", "bpf", "ptrace"] {
        assert!(
            text.contains(&format!("{name} -1 1\n")),
            "{name} not EPERM: {text}"
        );
    }
    assert!(text.contains("carried on True"));

    let out = run(&[
        "sandbox",
        "create",
        "--id",
        "rt-seccomp-bad",
        "--seccomp",
        "/nonexistent/policy.toml",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(leftovers("rt-seccomp-bad").is_empty());
}

#[test]
fn network_modes_and_the_net_command() {
    // Default: a link to the host side, hearth's resolver in resolv.conf, a firewall table.
    let sb = Sandbox::create("rt-net-gateway", &[]);
    let links = sb.sh_ok("ls /sys/class/net");
    assert_eq!(
        links.split_whitespace().collect::<Vec<_>>(),
        vec!["eth0", "lo"]
    );
    let report: serde_json::Value =
        serde_json::from_str(&ok(&["sandbox", "net", &sb.id, "--json"])).unwrap();
    assert_eq!(report["policy"]["mode"], "gateway");
    let host = report["link"]["host_address"].as_str().unwrap().to_owned();
    assert!(sb
        .sh_ok("cat /etc/resolv.conf")
        .contains(&format!("nameserver {host}")));
    assert!(
        !report["rules"].as_array().unwrap().is_empty(),
        "rules with counters: {report}"
    );

    // --net none: loopback only, no table, no link.
    let none = Sandbox::create("rt-net-none", &["--net", "none"]);
    assert_eq!(none.sh_ok("ls /sys/class/net").trim(), "lo");
    let report: serde_json::Value =
        serde_json::from_str(&ok(&["sandbox", "net", &none.id, "--json"])).unwrap();
    assert!(report["link"].is_null());

    // Two sandboxes cannot reach each other: a listener in one, a connection attempt from the other.
    let other = Sandbox::create("rt-net-other", &[]);
    let other_report: serde_json::Value =
        serde_json::from_str(&ok(&["sandbox", "net", &other.id, "--json"])).unwrap();
    let other_addr = other_report["link"]["sandbox_address"]
        .as_str()
        .unwrap()
        .to_owned();
    let probe = format!(
        "import socket\ns = socket.socket(); s.settimeout(2)\ntry:\n    s.connect(('{other_addr}', 8000)); print('connected')\nexcept OSError as e:\n    print('blocked', type(e).__name__)"
    );
    let out = run(&["sandbox", "exec", &sb.id, "--", "python3", "-c", &probe]);
    assert!(stdout(&out).contains("blocked"), "{}", stdout(&out));
}

#[test]
fn bad_network_flags_are_refused_with_nothing_made() {
    let id = "rt-net-bad";
    for args in [
        vec!["--allow", "not a destination"],
        vec!["--net", "gateway", "--allow", "10.0.0.0/8"],
        vec!["--net", "bogus"],
        vec!["--net-rate", "fast"],
    ] {
        let mut full = vec!["sandbox", "create", "--id", id];
        full.extend(args.iter().copied());
        let out = run(&full);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
        assert!(leftovers(id).is_empty(), "{args:?}: {:?}", leftovers(id));
    }
}
