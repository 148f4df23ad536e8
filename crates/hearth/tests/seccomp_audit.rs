//! Seccomp end to end: the `hearth` binary, real runc, the per-sandbox supervisor answering
//! audited calls, `hearth sandbox audit`, kills, the guest's own BPF, and bad input.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{leftovers, ok, run, stderr, stdout, Sandbox};
use serde_json::Value;

/// Calls each denied syscall a known number of times through libc's `syscall`, printing
/// `name rc errno` per call, then `done`: the program must carry on after every refusal.
const DENIED_CALLS: &str = r#"
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
calls = [("unshare", 3, 272, (0x10000000,)), ("mount", 2, 165, (0, 0, 0, 0, 0)),
         ("ptrace", 4, 101, (0, 0, 0, 0)), ("keyctl", 5, 250, (0, 0, 0, 0, 0)),
         ("bpf", 1, 321, (0, 0, 0))]
for name, times, nr, args in calls:
    for _ in range(times):
        rc = libc.syscall(nr, *args)
        print(name, rc, ctypes.get_errno(), flush=True)
print("done", flush=True)
"#;

fn audit_json(id: &str) -> Value {
    let out = ok(&["sandbox", "audit", id, "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("audit JSON: {e}\n{out}"))
}

fn count(report: &Value, syscall: &str, action: &str) -> u64 {
    report["counts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["syscall"] == syscall && c["action"] == action)
        .map(|c| c["count"].as_u64().unwrap())
        .sum()
}

fn python(sb: &Sandbox, script: &str) -> std::process::Output {
    run(&["sandbox", "exec", &sb.id, "--", "python3", "-c", script])
}

#[test]
fn denied_calls_get_eperm_and_the_audit_has_exact_counts() {
    let sb = Sandbox::create("sa-denials", &["--seccomp", "default"]);
    let out = python(&sb, DENIED_CALLS);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 16, "{text}");
    for line in &lines[..15] {
        assert!(line.ends_with(" -1 1"), "not EPERM: {line}");
    }
    assert_eq!(lines[15], "done");

    let report = audit_json(&sb.id);
    for (name, times) in [
        ("unshare", 3),
        ("mount", 2),
        ("ptrace", 4),
        ("keyctl", 5),
        ("bpf", 1),
    ] {
        assert_eq!(
            count(&report, name, "denied_eperm"),
            times,
            "{name}: {report}"
        );
    }
    let recent = report["recent"].as_array().unwrap();
    let first = recent
        .iter()
        .find(|e| e["syscall_name"] == "unshare")
        .expect("an unshare entry");
    assert_eq!(first["comm"], "python3");
    assert_eq!(first["args"][0], 0x1000_0000);
    assert_eq!(first["source"], "oci_notify");
    assert!(first["pid"].as_u64().is_some());
    assert_eq!(report["supervisor"]["running"], true);
    // The sandbox has a link, so a (here empty) drop log beside the denials.
    assert_eq!(report["network_drops"]["total"], 0, "{report}");

    // The text form names each syscall with its count.
    let table = ok(&["sandbox", "audit", &sb.id]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("keyctl") && l.trim_end().ends_with(" 5")),
        "{table}"
    );
}

#[test]
fn a_kill_action_kills_with_sigsys_and_is_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = tmp.path().join("kill.toml");
    std::fs::write(
        &policy,
        "default_action = \"allow\"\n\
         [[rules]]\nsyscall = \"acct\"\naction = \"kill_process\"\n\
         [[rules]]\nsyscall = \"unshare\"\naction = \"audit_deny\"\n",
    )
    .unwrap();
    let sb = Sandbox::create("sa-kill", &["--seccomp", policy.to_str().unwrap()]);
    let script = "import ctypes\nl = ctypes.CDLL(None, use_errno=True)\n\
                  print(l.unshare(0x10000000), ctypes.get_errno(), flush=True)\n\
                  l.syscall(163, 0)\nprint('survived')";
    let out = python(&sb, script);
    assert_eq!(out.status.code(), Some(159), "{}", stderr(&out));
    assert_eq!(stdout(&out), "-1 1\n");

    let report = audit_json(&sb.id);
    assert_eq!(count(&report, "unshare", "denied_eperm"), 1, "{report}");
    let kills: Vec<&Value> = report["counts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"] == "killed_process")
        .collect();
    assert_eq!(kills.len(), 1, "{report}");
    assert_eq!(kills[0]["count"], 1);
    let entry = report["recent"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "killed_process")
        .expect("a kill entry");
    assert_eq!(entry["comm"], "python3");
    // The sandbox survives its workload's death.
    assert_eq!(sb.sh_ok("echo alive"), "alive\n");
}

#[test]
fn supervisor_lives_and_dies_with_its_sandbox() {
    let sb = Sandbox::create("sa-life", &[]);
    let pid_file = common::env()
        .runtime_dir
        .join("sandboxes/sa-life/supervisor.pid");
    let text = std::fs::read_to_string(&pid_file).unwrap();
    let pid: i32 = text.split_whitespace().next().unwrap().parse().unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    // Its own session, so a Ctrl-C at the terminal that ran `create` can't reach it.
    assert_eq!(
        nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid)))
            .unwrap()
            .as_raw(),
        pid
    );

    // If it dies, audited calls are still refused (ENOSYS), never allowed.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let out = python(
        &sb,
        "import ctypes\nl = ctypes.CDLL(None, use_errno=True)\n\
         print(l.unshare(0x10000000), ctypes.get_errno())",
    );
    assert_eq!(stdout(&out), "-1 38\n", "{}", stderr(&out));
    let report = audit_json(&sb.id);
    assert_eq!(report["supervisor"]["running"], false, "{report}");
    drop(sb);
    assert!(
        leftovers("sa-life").is_empty(),
        "{:?}",
        leftovers("sa-life")
    );
}

#[test]
fn removing_a_sandbox_stops_its_supervisor() {
    let sb = Sandbox::create("sa-stop", &[]);
    let pid_file = common::env()
        .runtime_dir
        .join("sandboxes/sa-stop/supervisor.pid");
    let text = std::fs::read_to_string(&pid_file).unwrap();
    let pid: u32 = text.split_whitespace().next().unwrap().parse().unwrap();
    ok(&["sandbox", "rm", &sb.id]);
    assert!(!Path::new(&format!("/proc/{pid}/stat")).exists() || zombie(pid));
    // The audit outlives the sandbox, and says why the supervisor ended.
    let report = audit_json(&sb.id);
    assert_eq!(report["status"], Value::Null);
    let ended = report["supervisor"]["ended"].as_str().unwrap_or_default();
    assert!(ended == "filter gone" || ended == "terminated", "{report}");
}

fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

/// A supervisor that can't start, or one the runtime can't reach, fails the create with one
/// line and leaves nothing behind.
#[test]
fn an_unreachable_listener_fails_the_create_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    // Says it is ready but never binds the socket: runc must refuse to start the container.
    let liar = tmp.path().join("liar.sh");
    std::fs::write(&liar, "#!/bin/sh\necho ready\nwhile :; do sleep 1; done\n").unwrap();
    std::fs::set_permissions(&liar, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (id, exe) in [
        ("sa-nolisten-false", Path::new("/bin/false")),
        ("sa-nolisten-liar", &liar),
    ] {
        let out = common::hearth()
            .env("HEARTH_SUPERVISOR_EXE", exe)
            .args(["sandbox", "create", "--id", id])
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(7), "{id}: {err}");
        assert_eq!(err.lines().count(), 1, "{id}: {err}");
        assert!(err.starts_with("hearth: "), "{err}");
        assert!(
            err.contains("seccomp") || err.contains("listener"),
            "{id}: {err}"
        );
        assert!(leftovers(id).is_empty(), "{id}: {:?}", leftovers(id));
        assert!(!process_mentions(id), "{id}: a supervisor process is left");
    }
}

fn process_mentions(id: &str) -> bool {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|arg| arg == id.as_bytes()))
        })
}

#[test]
fn the_guest_applies_its_own_bpf_to_what_it_starts() {
    // setuid(0) as root: allowed by `default` (the runtime's filter), refused by `strict`.
    let script = "import ctypes\nl = ctypes.CDLL(None, use_errno=True)\n\
                  print(l.syscall(105, 0), ctypes.get_errno())";
    let plain = Sandbox::create("sa-guest-plain", &[]);
    assert_eq!(stdout(&python(&plain, script)), "0 0\n");
    let guarded = Sandbox::create("sa-guest-bpf", &["--guest-seccomp", "strict"]);
    let out = python(&guarded, script);
    assert_eq!(stdout(&out), "-1 1\n", "{}", stderr(&out));
    // Ordinary work still runs under the guest's filter.
    assert_eq!(guarded.sh_ok("echo ok | cat"), "ok\n");
    // The guest's own filter answered, not the runtime's listener: nothing was audited.
    let report = audit_json(&guarded.id);
    assert_eq!(count(&report, "setuid", "denied_eperm"), 0, "{report}");
}

#[test]
fn a_malformed_policy_is_one_line_naming_file_rule_and_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = tmp.path().join("bad.toml");
    std::fs::write(
        &policy,
        "default_action = \"allow\"\n[[rules]]\nsyscall = \"getpid\"\naction = \"allow\"\n\
         [[rules]]\nsyscall = \"mountt\"\naction = \"audit_deny\"\n",
    )
    .unwrap();
    let out = run(&["seccomp", "check", policy.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("bad.toml") && err.contains("rule 1") && err.contains("mountt"),
        "{err}"
    );
    // The same file refused by create, before anything is made.
    let out = run(&[
        "sandbox",
        "create",
        "--id",
        "sa-badpolicy",
        "--seccomp",
        policy.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(leftovers("sa-badpolicy").is_empty());
}
