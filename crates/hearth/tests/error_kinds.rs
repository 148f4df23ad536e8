//! One error, one kind, on both front ends: each kind of error is provoked through the CLI (the
//! real `hearth`, against real runc) and through the API (`hearth serve`), and the exit code and
//! the HTTP status must both be the mapping of that same kind. An internal error cannot be
//! provoked from outside on purpose; its mapping is unit-tested (`classify.rs`), as is every
//! row of the table below.

mod api_support;
mod common;

use api_support::{assert_error, Daemon};
use common::{leftovers, run, stderr, Sandbox};
use std::process::Output;

/// What both front ends promise for each kind: the exit code, and the HTTP status and error type.
#[derive(Debug, Clone, Copy)]
enum Kind {
    BadInput,
    NotFound,
    Exists,
    HostLacks,
    SandboxFailed,
    TooLarge,
    Conflict,
}

impl Kind {
    fn exit_code(self) -> i32 {
        match self {
            Kind::BadInput => 3,
            Kind::NotFound => 4,
            Kind::Exists => 5,
            Kind::HostLacks => 6,
            Kind::SandboxFailed => 7,
            Kind::TooLarge => 8,
            Kind::Conflict => 9,
        }
    }

    fn http(self) -> (u16, &'static str) {
        match self {
            Kind::BadInput => (422, "invalid_request"),
            Kind::NotFound => (404, "not_found"),
            Kind::Exists => (409, "already_exists"),
            Kind::HostLacks => (503, "unavailable"),
            Kind::SandboxFailed => (500, "sandbox_failed"),
            Kind::TooLarge => (413, "too_large"),
            Kind::Conflict => (409, "conflict"),
        }
    }
}

/// The CLI's answer: the kind's exit code and one `hearth:` line that says `mentions`.
fn assert_cli(kind: Kind, out: &Output, mentions: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(kind.exit_code()), "{kind:?}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(mentions),
        "{err:?} should mention {mentions:?}"
    );
}

/// The API's answer to the same request: the kind's status and type, saying `mentions` too.
fn assert_api(
    kind: Kind,
    daemon: &Daemon,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    mentions: &str,
) {
    let (status, kind_type) = kind.http();
    assert_error(daemon, method, path, body, status, kind_type, mentions);
}

#[test]
fn bad_input_an_invalid_id() {
    let daemon = Daemon::start(None, 1);
    let out = run(&["sandbox", "create", "--id", "Bad_Id"]);
    assert_cli(Kind::BadInput, &out, "'B' at position 0");
    assert_api(
        Kind::BadInput,
        &daemon,
        "POST",
        "/v1/sandboxes",
        Some(br#"{"id": "Bad_Id"}"#),
        "'B' at position 0",
    );
}

#[test]
fn not_found_exec_in_a_missing_sandbox() {
    let daemon = Daemon::start(None, 1);
    let out = run(&["sandbox", "exec", "ek-missing", "--", "true"]);
    assert_cli(Kind::NotFound, &out, "ek-missing");
    assert_api(
        Kind::NotFound,
        &daemon,
        "POST",
        "/v1/sandboxes/ek-missing/exec",
        Some(br#"{"argv": ["true"]}"#),
        "ek-missing",
    );
}

#[test]
fn exists_the_same_id_twice() {
    let daemon = Daemon::start(None, 1);
    let sb = Sandbox::create("ek-exists", &[]);
    let out = run(&["sandbox", "create", "--id", &sb.id]);
    assert_cli(Kind::Exists, &out, "already exists");
    assert_api(
        Kind::Exists,
        &daemon,
        "POST",
        "/v1/sandboxes",
        Some(br#"{"id": "ek-exists"}"#),
        "already exists",
    );
    assert_eq!(sb.sh_ok("echo still-here").trim(), "still-here");
}

#[test]
fn conflict_exec_in_a_sandbox_whose_init_died() {
    let daemon = Daemon::start(None, 1);
    let sb = Sandbox::create("ek-conflict", &[]);
    kill_container(&sb.id);
    let out = sb.sh("true");
    assert_cli(Kind::Conflict, &out, "exited");
    assert_api(
        Kind::Conflict,
        &daemon,
        "POST",
        "/v1/sandboxes/ek-conflict/exec",
        Some(br#"{"argv": ["true"]}"#),
        "exited",
    );
}

/// SIGKILLs the sandbox's PID 1 behind hearth's back, as a crash would, and waits until runc
/// sees the container stopped.
fn kill_container(id: &str) {
    let root = common::env().runtime_dir.join("runtime");
    let container = format!("hearth-{id}");
    let killed = std::process::Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["kill", &container, "KILL"])
        .status()
        .unwrap();
    assert!(killed.success(), "runc kill {container}");
    for _ in 0..100 {
        let state = std::process::Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["state", &container])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&state.stdout).contains("\"stopped\"") {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{container} still runs after SIGKILL");
}

#[test]
fn host_lacks_the_guest_binary() {
    const MISSING: &str = "/nonexistent/hearth-guest";
    let daemon = Daemon::start_with_env(&[("HEARTH_GUEST_BINARY", MISSING)]);
    let _cleanup = [
        Sandbox {
            id: "ek-host-cli".into(),
        },
        Sandbox {
            id: "ek-host-api".into(),
        },
    ];
    let out = common::hearth()
        .env("HEARTH_GUEST_BINARY", MISSING)
        .args(["sandbox", "create", "--id", "ek-host-cli"])
        .output()
        .unwrap();
    assert_cli(Kind::HostLacks, &out, MISSING);
    assert_api(
        Kind::HostLacks,
        &daemon,
        "POST",
        "/v1/sandboxes",
        Some(br#"{"id": "ek-host-api"}"#),
        MISSING,
    );
    assert!(leftovers("ek-host-api").is_empty());
}

#[test]
fn sandbox_failed_a_guest_that_exits() {
    // runc starts the container, then the guest never answers.
    const EXITS: &str = "/usr/bin/false";
    let daemon = Daemon::start_with_env(&[("HEARTH_GUEST_BINARY", EXITS)]);
    let _cleanup = [
        Sandbox {
            id: "ek-failed-cli".into(),
        },
        Sandbox {
            id: "ek-failed-api".into(),
        },
    ];
    let out = common::hearth()
        .env("HEARTH_GUEST_BINARY", EXITS)
        .args(["sandbox", "create", "--id", "ek-failed-cli"])
        .output()
        .unwrap();
    assert_cli(Kind::SandboxFailed, &out, "did not come up");
    assert_api(
        Kind::SandboxFailed,
        &daemon,
        "POST",
        "/v1/sandboxes",
        Some(br#"{"id": "ek-failed-api"}"#),
        "did not come up",
    );
    assert!(leftovers("ek-failed-api").is_empty());
}

#[test]
fn too_large_a_file_over_the_copy_limit() {
    let daemon = Daemon::start(None, 1);
    let sb = Sandbox::create("ek-large", &[]);
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big");
    let over = 65 << 20;
    std::fs::File::create(&big).unwrap().set_len(over).unwrap();
    let out = run(&[
        "sandbox",
        "cp",
        big.to_str().unwrap(),
        "ek-large:/workspace/big",
    ]);
    assert_cli(Kind::TooLarge, &out, "limit");
    let body = vec![0u8; usize::try_from(over).unwrap()];
    assert_api(
        Kind::TooLarge,
        &daemon,
        "PUT",
        "/v1/sandboxes/ek-large/files?path=/workspace/big",
        Some(&body),
        "limit",
    );
    assert!(!sb.sh("test -e /workspace/big").status.success());
}
