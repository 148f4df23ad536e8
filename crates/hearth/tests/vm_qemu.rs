//! microVM sandboxes end to end through QEMU under TCG (these machines' KVM cannot run a guest):
//! the guest image, boot, exec, files both ways, the seccomp policy inside the guest, the
//! firewall seen from inside the VM, pause and resume, a snapshot resumed as a second sandbox
//! (no boot: it continues the saved VM), and removal leaving nothing. One booted VM for all of
//! it: each boot costs seconds. Traffic goes only to listeners this test opens on the
//! sandbox's own host-side address.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use common::{leftovers, ok, run, stderr, stdout, Sandbox};

/// `hearth sandbox exec ID -- python3 -c SCRIPT`.
fn python(id: &str, script: &str) -> std::process::Output {
    run(&["sandbox", "exec", id, "--", "python3", "-c", script])
}

fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(args)).expect("JSON output")
}

/// Accepts one connection and answers it, in the background.
fn answer_once(listener: TcpListener, reply: &'static [u8]) -> std::thread::JoinHandle<bool> {
    listener.set_nonblocking(false).unwrap();
    std::thread::spawn(move || match listener.accept() {
        Ok((mut stream, _)) => {
            let mut buf = [0u8; 16];
            let _ = stream.read(&mut buf);
            stream.write_all(reply).is_ok()
        }
        Err(_) => false,
    })
}

#[test]
fn a_qemu_sandbox_boots_runs_and_goes_away() {
    common::build_vm_image();
    let workspace = tempfile::tempdir().unwrap();
    std::fs::write(workspace.path().join("from-host.txt"), "hello vm\n").unwrap();
    let ws = workspace.path().to_str().unwrap().to_owned();
    let sb = Sandbox::create(
        "vm-qemu",
        &["--backend", "qemu", "--memory", "512M", "--workspace", &ws],
    );

    // Its own kernel, hearth-guest as PID 1 (the initramfs' /init), python3 from the image.
    // PID 1 is non-dumpable: its name is public, its exe link (like its fds and memory) is not.
    let out = sb.sh_ok(
        "cat /proc/1/comm; readlink /proc/1/exe || echo no-exe-link; uname -r; \
         python3 -c 'print(6 * 7)'",
    );
    assert!(out.starts_with("init\nno-exe-link\n"), "{out}");
    assert!(out.trim_end().ends_with("42"), "{out}");
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(
        !out.contains(host_kernel.trim()),
        "the VM runs its own kernel: {out}"
    );

    // Files both ways: the workspace share, and cp in and out.
    assert_eq!(sb.sh_ok("cat /workspace/from-host.txt"), "hello vm\n");
    let local = workspace.path().join("in.txt");
    std::fs::write(&local, "copied in\n").unwrap();
    ok(&[
        "sandbox",
        "cp",
        local.to_str().unwrap(),
        &format!("{}:/tmp/in.txt", sb.id),
    ]);
    sb.sh_ok("tr a-z A-Z < /tmp/in.txt > /tmp/out.txt");
    let back = workspace.path().join("out.txt");
    ok(&[
        "sandbox",
        "cp",
        &format!("{}:/tmp/out.txt", sb.id),
        back.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "COPIED IN\n");

    // The default policy, applied by hearth-guest to what it starts: EPERM, and it carries on.
    let probe = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n\
        ctypes.set_errno(0); r = libc.unshare(0x10000000); print('unshare', r, ctypes.get_errno())";
    let out = python(&sb.id, probe);
    assert!(
        stdout(&out).contains("unshare -1 1"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    // ... and the denial reaches the sandbox's audit, answered and recorded by hearth-guest.
    let audit = json(&["sandbox", "audit", &sb.id, "--json"]);
    let unshare = audit["recent"].as_array().and_then(|recent| {
        recent
            .iter()
            .find(|e| e["syscall_name"] == "unshare" && e["comm"] == "python3")
    });
    let unshare = unshare.unwrap_or_else(|| panic!("no unshare in the audit: {audit:#}"));
    assert_eq!(unshare["source"], "guest", "{unshare}");
    assert_eq!(unshare["action"], "denied_eperm", "{unshare}");

    // The review's attacks from inside the VM. The workload is uid 0 with no capabilities at
    // all, sees no host channel port, disk or userfaultfd in its /dev, cannot touch PID 1 or
    // kernel tunables, and a fork flood stops at the sandbox's pids limit.
    let probe = "import os, ctypes\n\
        print([l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff') or l.startswith('CapBnd')])\n\
        print(sorted(os.listdir('/dev')))\n\
        for path, mode in (('/proc/1/mem', 'rb'), ('/proc/1/environ', 'rb'), ('/proc/sys/kernel/sysrq', 'wb')):\n\
        \x20   try:\n\
        \x20       open(path, mode); print(path, 'open')\n\
        \x20   except OSError as e:\n\
        \x20       print(path, 'refused')\n\
        n = 0\n\
        try:\n\
        \x20   while n < 400:\n\
        \x20       if os.fork() == 0:\n\
        \x20           import time; time.sleep(2); os._exit(0)\n\
        \x20       n += 1\n\
        except OSError:\n\
        \x20   pass\n\
        print('forked', n)\n\
        while True:\n\
        \x20   try:\n\
        \x20       os.wait()\n\
        \x20   except ChildProcessError:\n\
        \x20       break\n";
    let out = python(&sb.id, probe);
    let text = stdout(&out);
    assert!(
        text.contains("['0000000000000000', '0000000000000000']"),
        "{text}"
    );
    for absent in ["vda", "vport", "userfaultfd", "kmsg", "mem'"] {
        assert!(
            !text.lines().nth(1).unwrap_or("").contains(absent),
            "{absent} in {text}"
        );
    }
    assert_eq!(text.matches(" refused").count(), 3, "{text}");
    let forked: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("forked "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{text}{}", stderr(&out)));
    assert!(
        forked < 256,
        "the default pids limit (256) held inside the VM: {forked}"
    );
    // An OOM inside the VM takes the workload's process, is reported as such, and leaves
    // hearth-guest serving.
    // Touched 32 MiB at a time: one huge allocation would only be refused (MemoryError).
    let oom = python(
        &sb.id,
        "chunks = []\nwhile True:\n    chunks.append(b'x' * (32 << 20))",
    );
    assert_eq!(oom.status.code(), Some(137), "{}", stderr(&oom));
    assert!(stderr(&oom).contains("out of memory"), "{}", stderr(&oom));
    assert_eq!(sb.sh_ok("echo alive"), "alive\n");
    // A setuid plant through the 9p share: refused by the policy; what QEMU writes is only
    // ever a plain file on the host, whatever the guest asks for.
    let plant = sb.sh("cp /bin/sh /workspace/plant; chmod 4755 /workspace/plant; echo chmod=$?");
    assert!(stdout(&plant).contains("chmod=1"), "{}", stdout(&plant));
    let plant_path = workspace.path().join("plant");
    let planted = std::fs::metadata(&plant_path).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::mode(&planted) & 0o7000, 0);
    // ... and the mode the guest sees (kept in an xattr by mapped-xattr) has no setuid bit
    // either: the refusal happened in the guest, not only on the host.
    let guest_mode = sb.sh_ok("stat -c %a /workspace/plant");
    assert_eq!(guest_mode.trim().len(), 3, "no special bits: {guest_mode}");

    // The firewall from inside the VM: the gateway port on the host side answers, another port
    // of the same host address (a listener this test opened) is dropped and audited.
    let link = json(&["sandbox", "net", &sb.id, "--json"])["link"].clone();
    let host: Ipv4Addr = link["host_address"].as_str().unwrap().parse().unwrap();
    let gateway_port = u16::try_from(link["gateway_ports"][0].as_u64().unwrap()).unwrap();
    let gateway = answer_once(
        TcpListener::bind(SocketAddr::from((host, gateway_port))).unwrap(),
        b"gateway",
    );
    let other = TcpListener::bind(SocketAddr::from((host, 0))).unwrap();
    let other_port = other.local_addr().unwrap().port();
    let connect = format!(
        "import socket, sys\n\
         for port in ({gateway_port}, {other_port}):\n\
         \x20   s = socket.socket(); s.settimeout(3)\n\
         \x20   try:\n\
         \x20       s.connect(('{host}', port)); s.sendall(b'hi'); print(port, s.recv(16).decode())\n\
         \x20   except OSError as e:\n\
         \x20       print(port, 'blocked', type(e).__name__)\n"
    );
    let out = python(&sb.id, &connect);
    let text = stdout(&out);
    assert!(
        text.contains(&format!("{gateway_port} gateway")),
        "{text}{}",
        stderr(&out)
    );
    assert!(text.contains(&format!("{other_port} blocked")), "{text}");
    assert!(gateway.join().unwrap());
    let mut dropped = false;
    for _ in 0..20 {
        let drops = json(&["sandbox", "audit", &sb.id, "--json"])["network_drops"].clone();
        dropped = drops["by_destination"].as_array().is_some_and(|d| {
            d.iter()
                .any(|d| d["port"] == other_port && d["address"] == host.to_string())
        });
        if dropped {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(dropped, "the drop from inside the VM reached the audit");

    // Pause stops the guest: a command sent meanwhile only runs after the resume.
    assert!(ok(&["sandbox", "pause", &sb.id]).contains("paused"));
    let paused_id = sb.id.clone();
    let paused_exec = std::thread::spawn(move || {
        run(&["sandbox", "exec", &paused_id, "--", "cat", "/tmp/out.txt"])
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(!paused_exec.is_finished(), "a paused guest answered");
    assert!(ok(&["sandbox", "resume", &sb.id]).contains("running"));
    let out = paused_exec.join().unwrap();
    assert_eq!(stdout(&out), "COPIED IN\n", "{}", stderr(&out));

    // QEMU runs in the sandbox's own cgroup, held to the guest's memory plus its overhead.
    let pgrep = std::process::Command::new("pgrep")
        .args(["-f", &format!("qemu-system.*{}", sb.id)])
        .output()
        .unwrap();
    let qemu_pid = stdout(&pgrep).trim().to_owned();
    // ... as the sandbox's own unprivileged host id, not root.
    let status = std::fs::read_to_string(format!("/proc/{qemu_pid}/status")).unwrap();
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(uid >= 0x7000_0000, "QEMU runs as uid {uid}");
    let cgroups = std::fs::read_to_string(format!("/proc/{qemu_pid}/cgroup")).unwrap();
    assert!(
        cgroups.contains(&format!("/hearth/{}", sb.id)),
        "{qemu_pid}: {cgroups}"
    );
    let memory = std::path::Path::new("/sys/fs/cgroup/memory/hearth").join(&sb.id);
    if memory.is_dir() {
        let limit = std::fs::read_to_string(memory.join("memory.limit_in_bytes")).unwrap();
        assert_eq!(limit.trim(), ((512u64 + 384) << 20).to_string());
        let peak = std::fs::read_to_string(memory.join("memory.max_usage_in_bytes")).unwrap();
        eprintln!(
            "QEMU cgroup peak memory: {} MiB",
            peak.trim().parse::<u64>().unwrap() >> 20
        );
    }

    let restored = snapshot_and_restore(&sb, host);

    // Pause and snapshots are for microVMs only; an OCI sandbox says so.
    let oci = Sandbox::create("vm-oci-neighbour", &[]);
    let out = run(&["sandbox", "pause", &oci.id]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let out = run(&["sandbox", "snapshot", &oci.id]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("only microVM sandboxes can be snapshotted"),
        "{}",
        stderr(&out)
    );

    for sb in [sb, restored] {
        let id = sb.id.clone();
        drop(sb);
        assert!(leftovers(&id).is_empty(), "{:?}", leftovers(&id));
        assert!(
            !std::process::Command::new("pgrep")
                .args(["-f", &format!("qemu-system.*{id}")])
                .status()
                .unwrap()
                .success(),
            "QEMU still runs"
        );
    }
    // The snapshot goes with snapshot-rm, files and record.
    let dir = common::env().state_dir.join("snapshots").join("vm-snap");
    assert!(dir.is_dir());
    ok(&["sandbox", "snapshot-rm", "vm-snap"]);
    assert!(!dir.exists());
    assert_eq!(
        json(&["sandbox", "snapshots", "--json"]),
        serde_json::json!([])
    );
    let out = run(&["sandbox", "snapshot-rm", "vm-snap"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
}

/// Snapshots the running VM and resumes the snapshot as a second sandbox with its own id,
/// address and workspace; returns it (still running, for the caller's cleanup checks).
fn snapshot_and_restore(sb: &Sandbox, host: Ipv4Addr) -> Sandbox {
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;

    // A process using the shared workspace keeps QEMU from saving the VM: a clear refusal.
    let pid = sb.sh_ok("cd /workspace && sleep 60 </dev/null >/dev/null 2>&1 & echo $!");
    let pid = pid.trim();
    let out = run(&["sandbox", "snapshot", &sb.id, "--name", "vm-busy"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("/workspace"), "{}", stderr(&out));
    sb.sh_ok(&format!(
        "kill {pid}; while [ -e /proc/{pid}/cwd ]; do sleep 0.1; done"
    ));
    assert_eq!(sb.sh_ok("cat /workspace/from-host.txt"), "hello vm\n");

    // Guest memory (tmpfs /tmp) is what a snapshot carries.
    sb.sh_ok("echo saved in memory > /tmp/marker");
    let snap = json(&["sandbox", "snapshot", &sb.id, "--name", "vm-snap", "--json"]);
    assert_eq!(snap["name"], "vm-snap");
    assert_eq!(snap["source_id"], sb.id.as_str());
    assert_eq!(snap["backend"], "qemu");
    assert!(snap["size_bytes"].as_u64().unwrap() > 1024 * 1024, "{snap}");
    let dir = common::env().state_dir.join("snapshots");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("vm-snap")), 0o700);
    assert_eq!(mode(&dir.join("vm-snap/vm.state")), 0o600);
    assert!(
        !dir.join("vm-busy").exists(),
        "the refused snapshot left files"
    );
    // The source runs on, its workspace mounted again.
    assert_eq!(sb.sh_ok("cat /workspace/from-host.txt"), "hello vm\n");
    let out = run(&["sandbox", "snapshot", &sb.id, "--name", "vm-snap"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let listed = json(&["sandbox", "snapshots", "--json"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");

    // A paused VM stays paused through a snapshot, its workspace mounted again.
    ok(&["sandbox", "pause", &sb.id]);
    ok(&["sandbox", "snapshot", &sb.id, "--name", "vm-snap-paused"]);
    let paused_id = sb.id.clone();
    let paused_exec = std::thread::spawn(move || {
        run(&[
            "sandbox",
            "exec",
            &paused_id,
            "--",
            "cat",
            "/workspace/from-host.txt",
        ])
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !paused_exec.is_finished(),
        "the snapshot left the VM running"
    );
    assert!(ok(&["sandbox", "resume", &sb.id]).contains("running"));
    let out = paused_exec.join().unwrap();
    assert_eq!(stdout(&out), "hello vm\n", "{}", stderr(&out));
    ok(&["sandbox", "snapshot-rm", "vm-snap-paused"]);
    assert!(!dir.join("vm-snap-paused").exists());

    // Flags that contradict the saved VM are refused before anything is made.
    let out = run(&[
        "sandbox",
        "create",
        "--id",
        "vm-bad",
        "--from-snapshot",
        "vm-snap",
        "--memory",
        "1G",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(leftovers("vm-bad").is_empty(), "{:?}", leftovers("vm-bad"));

    // A second sandbox resumes it: the memory is the source's, the identity its own.
    let workspace = tempfile::tempdir().unwrap();
    std::fs::write(workspace.path().join("second.txt"), "second workspace\n").unwrap();
    let restored = Sandbox::create(
        "vm-restored",
        &[
            "--from-snapshot",
            "vm-snap",
            "--workspace",
            workspace.path().to_str().unwrap(),
        ],
    );
    assert_eq!(restored.sh_ok("cat /tmp/marker"), "saved in memory\n");
    // Its audit starts empty (the source's unshare denial was in the saved guest's log), and
    // its own denials arrive: this one a ptrace.
    let ptrace = "import ctypes\nl = ctypes.CDLL(None, use_errno=True)\n\
        print('ptrace', l.ptrace(0, 0, 0, 0), ctypes.get_errno())";
    let out = python(&restored.id, ptrace);
    assert!(stdout(&out).contains("ptrace -1 1"), "{}", stderr(&out));
    let audit = json(&["sandbox", "audit", &restored.id, "--json"]);
    let names: Vec<&str> = audit["recent"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["syscall_name"].as_str())
        .collect();
    assert!(names.contains(&"ptrace"), "{audit:#}");
    assert!(
        !names.contains(&"unshare"),
        "the source's denial leaked: {audit:#}"
    );
    assert_eq!(
        restored.sh_ok(
            "cat /proc/sys/kernel/hostname /workspace/second.txt; python3 -c 'print(6 * 7)'"
        ),
        "vm-restored\nsecond workspace\n42\n"
    );
    // Its eth0 has the new sandbox's address, so its own gateway answers it.
    let link = json(&["sandbox", "net", &restored.id, "--json"])["link"].clone();
    let new_host: Ipv4Addr = link["host_address"].as_str().unwrap().parse().unwrap();
    assert_ne!(new_host, host, "the restored sandbox has its own link");
    let gateway_port = u16::try_from(link["gateway_ports"][0].as_u64().unwrap()).unwrap();
    let gateway = answer_once(
        TcpListener::bind(SocketAddr::from((new_host, gateway_port))).unwrap(),
        b"gateway",
    );
    let connect = format!(
        "import socket\ns = socket.create_connection(('{new_host}', {gateway_port}), timeout=5)\n\
         s.sendall(b'hi'); print(s.recv(16).decode(), s.getsockname()[0])"
    );
    let out = python(&restored.id, &connect);
    assert_eq!(
        stdout(&out).trim(),
        format!("gateway {}", link["sandbox_address"].as_str().unwrap()),
        "{}",
        stderr(&out)
    );
    assert!(gateway.join().unwrap());
    // The source is untouched by its copy.
    assert_eq!(
        sb.sh_ok("cat /proc/sys/kernel/hostname"),
        format!("{}\n", sb.id)
    );
    restored
}
