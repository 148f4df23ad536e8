//! BPF rendering, applied for real in child processes (a filter can never be removed, so the
//! test binary re-runs itself with `HEARTH_SECCOMP_CHILD` set and the child loads it).

use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Output};

use hearth_seccomp::{profile, render_bpf, Action, Rule, SeccompPolicy};

const CHILD_ENV: &str = "HEARTH_SECCOMP_CHILD";

fn run_child(mode: &str) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, mode)
        .output()
        .unwrap()
}

fn errno_of(rc: libc::c_long) -> Option<i32> {
    (rc == -1).then(|| io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

/// Calls the issue names; returns each result as the errno it failed with (or None).
fn denied_calls() -> Vec<(&'static str, Option<i32>)> {
    // SAFETY: unshare takes a flag word; in this throwaway child any outcome is harmless.
    let unshare = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
    // SAFETY: all pointers are NUL-terminated literals; the target does not exist, so even an
    // unfiltered call could not mount anything.
    let mount = unsafe {
        libc::mount(
            c"none".as_ptr(),
            c"/nonexistent-hearth-seccomp".as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    // SAFETY: PTRACE_TRACEME takes no pointers.
    let ptrace = unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
    // SAFETY: KEYCTL_GET_KEYRING_ID (0) with KEY_SPEC_SESSION_KEYRING (-3) reads no memory.
    let keyctl = unsafe { libc::syscall(libc::SYS_keyctl, 0, -3, 0) };
    // SAFETY: an invalid bpf command with a null attribute pointer is rejected before any access.
    let bpf = unsafe { libc::syscall(libc::SYS_bpf, 0xffff, std::ptr::null::<u8>(), 0) };
    vec![
        ("unshare", errno_of(unshare.into())),
        ("mount", errno_of(mount.into())),
        ("ptrace", errno_of(ptrace)),
        ("keyctl", errno_of(keyctl)),
        ("bpf", errno_of(bpf)),
    ]
}

/// The default profile with `getppid` changed to kill the process: three programs (kill,
/// clone3's ENOSYS, the allowlist), which exercises installing several filters.
fn default_with_kill() -> SeccompPolicy {
    let mut p = profile("default").unwrap();
    p.rules.retain(|r| r.syscall != "getppid");
    p.rules.push(Rule::new("getppid", Action::KillProcess));
    p
}

#[test]
fn child_entry() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return; // only meaningful in the re-run child
    };
    let policy = match mode.as_str() {
        "default" => profile("default").unwrap(),
        "kill" => default_with_kill(),
        other => panic!("unknown child mode {other}"),
    };
    let filters = render_bpf(&policy).unwrap();
    filters.apply().unwrap();
    println!("programs={}", filters.programs().len());
    for (name, errno) in denied_calls() {
        println!("{name}={errno:?}");
    }
    println!("getpid={}", std::process::id() == std::process::id());
    if mode == "kill" {
        // SAFETY: getppid has no arguments; the filter should kill us right here.
        let parent = unsafe { libc::getppid() };
        println!("survived getppid={parent}");
    }
    std::process::exit(0);
}

#[test]
fn default_profile_refuses_with_eperm_and_keeps_running() {
    let out = run_child("default");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for name in ["unshare", "mount", "ptrace", "keyctl", "bpf"] {
        assert!(
            stdout.contains(&format!("{name}=Some({})", libc::EPERM)),
            "{name}: {stdout}"
        );
    }
    // Two programs: the allowlist and clone3's ENOSYS.
    assert!(stdout.contains("programs=2"), "{stdout}");
    assert!(stdout.contains("getpid=true"), "{stdout}");
}

#[test]
fn kill_process_rule_kills_with_sigsys() {
    let out = run_child("kill");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.signal(), Some(libc::SIGSYS), "{out:?}");
    assert!(stdout.contains("programs=3"), "{stdout}");
    assert!(
        stdout.contains(&format!("mount=Some({})", libc::EPERM)),
        "{stdout}"
    );
    assert!(!stdout.contains("survived"), "{stdout}");
}

fn run_under(profile_name: &str, script: &str) -> Output {
    let filters = render_bpf(&profile(profile_name).unwrap()).unwrap();
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", script]);
    // SAFETY: the hook only calls `apply_in_pre_exec`, which makes two kinds of system call and
    // allocates nothing; `filters` was built before the fork.
    unsafe {
        cmd.pre_exec(move || filters.apply_in_pre_exec());
    }
    cmd.output().unwrap()
}

#[test]
fn strict_profile_runs_a_shell_python_and_git() {
    let script = "echo hi | cat >/dev/null && ls / >/dev/null && mkdir -p /tmp/hs.$$ && \
        rm -r /tmp/hs.$$ && python3 -c 'import subprocess, json, socket; \
        subprocess.run([\"true\"], check=True); socket.socket().close()' && git --version";
    let out = run_under("strict", script);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("git version"),
        "{out:?}"
    );
    let out = run_under("strict", "unshare -U true");
    assert!(
        !out.status.success(),
        "unshare must fail under strict: {out:?}"
    );
}

#[test]
fn audit_profile_refuses_nothing() {
    let out = run_under("audit", "unshare -U true && echo ok");
    assert!(out.status.success(), "{out:?}");
}
