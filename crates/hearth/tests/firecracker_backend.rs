//! `hearth sandbox create --backend firecracker` end to end, against a stand-in VMM
//! (`fc_fake`). Everything of hearth's runs for real: store, netns and firewall, tap and
//! bridge, the supervisor's relay with its `CONNECT` handshake, exec through it, `PATCH /vm`,
//! the audit of a VMM seccomp fault, and removal.

mod common;
mod fc_fake;

use std::process::Command;

use common::{env, hearth, leftovers, ok, run, stderr, stdout};
use fc_fake::*;

/// The fake VMM's entry point (see `fc_fake`).
#[test]
fn fake_firecracker_vmm() {
    fc_fake::serve_if_asked();
}

#[test]
fn image_kernel_refuses_a_missing_config_in_one_line() {
    // Also proves `image kernel --firecracker` parses next to the global --firecracker-bin.
    let out = run(&[
        "image",
        "kernel",
        "--firecracker",
        "--config",
        "/nonexistent/x.config",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/x.config"), "{err}");
    let out = run(&["image", "kernel"]);
    assert_eq!(out.status.code(), Some(2), "--firecracker is required");
}

#[test]
fn a_vmm_filter_that_cannot_work_is_refused_in_one_line() {
    // `default` needs two actions besides allow; a uniform VMM filter has one.
    let out = run(&["--firecracker-seccomp", "default", "sandbox", "ls"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--firecracker-seccomp default"), "{err}");
    let out = run(&["--firecracker-seccomp", "builtin", "sandbox", "ls"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn without_a_firecracker_binary_the_backend_is_unavailable_with_exit_6() {
    let out = hearth()
        .args(["--firecracker-bin", "/nonexistent/firecracker"])
        .args([
            "sandbox",
            "create",
            "--id",
            "fc-none",
            "--backend",
            "firecracker",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("firecracker backend is not available")
            && err.contains("/nonexistent/firecracker"),
        "{err}"
    );
    // Nothing is found on PATH here either (no Firecracker can be installed on these hosts).
    if hearth_sandbox::host_tools::find_in_path("firecracker").is_none() {
        let out = run(&[
            "sandbox",
            "create",
            "--id",
            "fc-none",
            "--backend",
            "firecracker",
        ]);
        assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
        assert!(stderr(&out).contains("not on PATH"), "{}", stderr(&out));
    }
    assert!(
        leftovers("fc-none").is_empty(),
        "{:?}",
        leftovers("fc-none")
    );
}

#[test]
fn a_workspace_is_refused_in_one_line_since_firecracker_shares_no_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let fc = fake_firecracker(tmp.path(), &[]);
    let out = fc_cmd(
        &fc,
        &[
            "sandbox",
            "create",
            "--id",
            "fc-ws",
            "--backend",
            "firecracker",
            "--workspace",
            tmp.path().to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--workspace"), "{err}");
    assert!(leftovers("fc-ws").is_empty(), "{:?}", leftovers("fc-ws"));
    let out = run(&["sandbox", "ls", "--json"]);
    assert!(
        !stdout(&out).contains("fc-ws"),
        "no record: {}",
        stdout(&out)
    );
}

#[test]
fn create_exec_pause_resume_and_rm_through_the_vmm_and_a_fault_reaches_the_audit() {
    fake_images();
    let tmp = tempfile::tempdir().unwrap();
    let fc = fake_firecracker(tmp.path(), &[]);
    let id = "fc-cli";
    let out = fc_ok(
        &fc,
        &["sandbox", "create", "--id", id, "--backend", "firecracker"],
    );
    assert_eq!(stdout(&out).trim(), id);
    // Removed on failure too (without --firecracker-bin: removal needs no binary).
    let _cleanup = common::Sandbox { id: id.to_owned() };

    // exec goes CLI -> guest socket -> supervisor's relay -> CONNECT 1024 -> guest.
    // The stand-in guest runs on the host, where there is no /workspace.
    let out = fc_ok(
        &fc,
        &[
            "sandbox",
            "exec",
            id,
            "--cwd",
            "/",
            "--",
            "sh",
            "-c",
            "echo through-vsock",
        ],
    );
    assert_eq!(stdout(&out), "through-vsock\n");
    let vm = env().runtime_dir.join("sandboxes").join(id).join("vm");
    assert!(vm.join("api.sock").exists() && vm.join("vsock.sock").exists());
    let ns = format!("/run/netns/hearth-{id}");
    let tap = Command::new("ip")
        .args(["-n", &format!("hearth-{id}"), "-o", "link", "show", "tap0"])
        .output()
        .unwrap();
    assert!(
        stdout(&tap).contains("master br0"),
        "tap0 bridged in {ns}: {}",
        stderr(&tap)
    );

    assert_eq!(
        ok(&[
            "--firecracker-bin",
            fc.to_str().unwrap(),
            "sandbox",
            "pause",
            id
        ])
        .trim(),
        format!("{id} paused")
    );
    assert_eq!(
        ok(&[
            "--firecracker-bin",
            fc.to_str().unwrap(),
            "sandbox",
            "resume",
            id
        ])
        .trim(),
        format!("{id} running")
    );
    assert!(!fake_vmms(id).is_empty(), "the fake VMM runs");
    fc_ok(&fc, &["sandbox", "rm", id]);
    assert!(leftovers(id).is_empty(), "{:?}", leftovers(id));
    assert!(fake_vmms(id).is_empty(), "{:?}", fake_vmms(id));

    // A VMM whose own seccomp filter kills it (exit 148) during PATCH /vm: the pause fails,
    // and the syscall lands in the sandbox's audit as a VMM fault.
    let faulty = fake_firecracker(tmp.path(), &[(FAULT_AT, "/vm")]);
    let id = "fc-fault";
    let out = fc_cmd(
        &faulty,
        &["sandbox", "create", "--id", id, "--backend", "firecracker"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let _cleanup = common::Sandbox { id: id.to_owned() };
    let out = fc_cmd(&faulty, &["sandbox", "pause", id]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let audit = fc_cmd(&faulty, &["sandbox", "audit", id, "--json"]);
    let report: serde_json::Value =
        serde_json::from_slice(&audit.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&audit)));
    // Recorded once, with the syscall number from Firecracker's log line, and the sandbox is
    // marked exited.
    let faults: Vec<&serde_json::Value> = report["recent"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r.to_string().contains("vmm_fault"))
        .collect();
    assert_eq!(faults.len(), 1, "{report}");
    assert!(
        faults[0].to_string().contains("\"syscall_nr\":41"),
        "{report}"
    );
    assert_eq!(report["status"], "exited", "{report}");
    // Removal works even where Firecracker is gone: nothing of the VM may outlive it.
    let out = run(&[
        "--firecracker-bin",
        "/nonexistent/firecracker",
        "sandbox",
        "rm",
        id,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(leftovers(id).is_empty(), "{:?}", leftovers(id));
    assert!(fake_vmms(id).is_empty(), "{:?}", fake_vmms(id));
}

#[test]
fn a_jailed_vm_is_reached_through_the_jails_vsock_socket_and_rm_removes_the_jail() {
    fake_images();
    let tmp = tempfile::tempdir().unwrap();
    let fc = fake_firecracker(tmp.path(), &[]);
    let jailer = fake_jailer(tmp.path(), JailerTrace::default());
    let id = "fcj";
    let with = |args: &[&str]| jailed_cmd(&fc, &jailer, args);
    ok_output(with(&[
        "sandbox",
        "create",
        "--id",
        id,
        "--backend",
        "firecracker",
    ]));
    let _cleanup = common::Sandbox { id: id.to_owned() };
    let root = env()
        .runtime_dir
        .join("jail/firecracker")
        .join(id)
        .join("root");
    // The relay found the guest through the socket inside the jail, not in vm/.
    assert!(root.join("vsock.sock").exists() && root.join("vmlinux").exists());
    let vm = env().runtime_dir.join("sandboxes").join(id).join("vm");
    assert!(!vm.join("vsock.sock").exists());
    let out = ok_output(with(&[
        "sandbox", "exec", id, "--cwd", "/", "--", "echo", "jailed",
    ]));
    assert_eq!(stdout(&out), "jailed\n");
    ok_output(with(&["sandbox", "rm", id]));
    assert!(!root.parent().unwrap().exists(), "the jail is removed");
    assert!(leftovers(id).is_empty(), "{:?}", leftovers(id));
    assert!(fake_vmms(id).is_empty(), "{:?}", fake_vmms(id));
}
