//! Hardened policies applied for real: the test binary re-runs itself with `HEARTH_HARDEN_CHILD`
//! set, the child loads the BPF rendering of a hardened profile and tries to plant setuid/setgid
//! files and open AF_VSOCK sockets in a temp dir the parent owns (and removes).
//!
//! A control child runs the same calls under the plain `audit` profile, where they all succeed:
//! so each refusal in the hardened runs comes from the hardening, not from the machine.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use hearth_seccomp::validate::sysno;
use hearth_seccomp::{harden_for_workload, profile, render_bpf};

const CHILD_ENV: &str = "HEARTH_HARDEN_CHILD";
const DIR_ENV: &str = "HEARTH_HARDEN_DIR";
const EPERM: Option<i32> = Some(libc::EPERM);
const ENOSYS: Option<i32> = Some(libc::ENOSYS);
const OK: Option<i32> = None;
/// Marks the child's result lines (the test harness prints on the same lines).
const RESULT: &str = "hearth-harden: ";

/// The errno a raw system call failed with, or None when it succeeded.
fn errno_of(rc: libc::c_long) -> Option<i32> {
    (rc < 0).then(|| io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

fn c_path(dir: &Path, name: &str) -> CString {
    CString::new(dir.join(name).as_os_str().as_bytes()).unwrap()
}

/// Runs the child in `mode` over a fresh temp dir; returns its `name=result` lines as a map
/// and the modes of the files it left behind.
fn run_child(mode: &str) -> (BTreeMap<String, String>, BTreeMap<String, u32>) {
    let dir = tempfile::Builder::new()
        .prefix("hearth-harden-")
        .tempdir()
        .unwrap();
    std::fs::write(dir.path().join("file"), b"#!/bin/sh\n").unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, mode)
        .env(DIR_ENV, dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{mode}: {out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let results = stdout
        .lines()
        .filter_map(|l| l.split_once(RESULT)?.1.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let modes = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let mode = std::os::unix::fs::MetadataExt::mode(&e.metadata().unwrap());
            (e.file_name().to_string_lossy().into_owned(), mode & 0o7777)
        })
        .collect();
    (results, modes)
}

#[test]
fn child_entry() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return; // only meaningful in the re-run child
    };
    let dir = std::path::PathBuf::from(std::env::var_os(DIR_ENV).unwrap());
    let plain = profile(mode.strip_prefix("plain-").unwrap_or(&mode)).unwrap();
    let policy = if mode.starts_with("plain-") {
        plain
    } else {
        harden_for_workload(&plain).unwrap()
    };
    let filters = render_bpf(&policy).unwrap();
    // Prepared before the filter, so nothing but the calls under test runs under it.
    let paths = Paths::new(&dir);
    filters.apply().unwrap();
    for (name, result) in mode_calls(&paths).into_iter().chain(other_calls(&paths)) {
        println!("{RESULT}{name}={result:?}");
    }
    std::process::exit(0);
}

/// The paths the child works on, as C strings, and open fds of the temp dir and its file.
struct Paths {
    dir_fd: libc::c_long,
    file: CString,
    file_fd: libc::c_long,
    names: BTreeMap<&'static str, CString>,
}

impl Paths {
    fn new(dir: &Path) -> Paths {
        let file = c_path(dir, "file");
        let dir_c = c_path(dir, "");
        // SAFETY: `dir_c` is a NUL-terminated path that outlives the call.
        let dir_fd = unsafe { libc::open(dir_c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
        // SAFETY: `file` is a NUL-terminated path that outlives the call.
        let file_fd = unsafe { libc::open(file.as_ptr(), libc::O_RDONLY) };
        assert!(
            dir_fd >= 0 && file_fd >= 0,
            "{}",
            io::Error::last_os_error()
        );
        let names = [
            "open",
            "openat",
            "creat",
            "mkdir",
            "mkdirat",
            "mknod",
            "mknodat",
            "open-plain",
            "mkdir-plain",
            "openat2",
        ];
        let names = names.into_iter().map(|n| (n, c_path(dir, n))).collect();
        Paths {
            dir_fd: dir_fd.into(),
            file,
            file_fd: file_fd.into(),
            names,
        }
    }

    fn name(&self, n: &str) -> &CStr {
        &self.names[n]
    }
}

// Raw system calls by shape, so each runs exactly the call under test (libc wrappers may pick
// another one: glibc's `open` is `openat`). Every call used here only reads the path.

fn call_path(nr: libc::c_long, path: &CStr, a: libc::c_long) -> Option<i32> {
    // SAFETY: `path` is NUL-terminated and outlives the call; the kernel only reads it.
    errno_of(unsafe { libc::syscall(nr, path.as_ptr(), a) })
}

fn call_path2(nr: libc::c_long, path: &CStr, a: libc::c_long, b: libc::c_long) -> Option<i32> {
    // SAFETY: `path` is NUL-terminated and outlives the call; the kernel only reads it.
    errno_of(unsafe { libc::syscall(nr, path.as_ptr(), a, b) })
}

fn call_at(nr: libc::c_long, fd: libc::c_long, path: &CStr, a: libc::c_long) -> Option<i32> {
    // SAFETY: `path` is NUL-terminated and outlives the call; the kernel only reads it.
    errno_of(unsafe { libc::syscall(nr, fd, path.as_ptr(), a) })
}

fn call_at2(nr: libc::c_long, fd: libc::c_long, path: &CStr, a: i64, b: i64) -> Option<i32> {
    // SAFETY: `path` is NUL-terminated and outlives the call; the kernel only reads it.
    errno_of(unsafe { libc::syscall(nr, fd, path.as_ptr(), a, b) })
}

fn call_ints(nr: libc::c_long, a: libc::c_long, b: libc::c_long, c: libc::c_long) -> Option<i32> {
    // SAFETY: the calls made through this (fchmod, socket) take integers only; a socket fd is
    // closed when the child exits.
    errno_of(unsafe { libc::syscall(nr, a, b, c) })
}

const CREATE: libc::c_long = (libc::O_CREAT | libc::O_WRONLY | libc::O_EXCL) as libc::c_long;
const S_IFREG: libc::c_long = libc::S_IFREG as libc::c_long;

/// The mode-taking calls, each with setuid or setgid bits (and a few plain ones that must work).
fn mode_calls(p: &Paths) -> Vec<(&'static str, Option<i32>)> {
    use libc::{SYS_chmod, SYS_creat, SYS_fchmod, SYS_fchmodat, SYS_mkdir, SYS_mkdirat, AT_FDCWD};
    use libc::{SYS_mknod, SYS_mknodat, SYS_open, SYS_openat};
    let (dir, file) = (p.dir_fd, p.file.as_c_str());
    vec![
        ("chmod_4755", call_path(SYS_chmod, file, 0o4755)),
        ("chmod_2755", call_path(SYS_chmod, file, 0o2755)),
        ("fchmod_2755", call_ints(SYS_fchmod, p.file_fd, 0o2755, 0)),
        (
            "fchmodat_4755",
            call_at(SYS_fchmodat, AT_FDCWD.into(), file, 0o4755),
        ),
        (
            "open_creat_4755",
            call_path2(SYS_open, p.name("open"), CREATE, 0o4755),
        ),
        (
            "openat_creat_2755",
            call_at2(SYS_openat, dir, p.name("openat"), CREATE, 0o2755),
        ),
        ("creat_4755", call_path(SYS_creat, p.name("creat"), 0o4755)),
        ("mkdir_2755", call_path(SYS_mkdir, p.name("mkdir"), 0o2755)),
        (
            "mkdirat_4755",
            call_at(SYS_mkdirat, dir, p.name("mkdirat"), 0o4755),
        ),
        (
            "mknod_4755",
            call_path2(SYS_mknod, p.name("mknod"), S_IFREG | 0o4755, 0),
        ),
        (
            "mknodat_2755",
            call_at2(SYS_mknodat, dir, p.name("mknodat"), S_IFREG | 0o2755, 0),
        ),
        ("chmod_755", call_path(SYS_chmod, file, 0o755)),
        (
            "open_creat_644",
            call_path2(SYS_open, p.name("open-plain"), CREATE, 0o644),
        ),
        (
            "mkdir_755",
            call_path(SYS_mkdir, p.name("mkdir-plain"), 0o755),
        ),
    ]
}

/// `struct open_how` of openat2(2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn openat2(p: &Paths, mode: u64) -> Option<i32> {
    let nr = libc::c_long::from(sysno("openat2").unwrap().id());
    let how = OpenHow {
        flags: u64::try_from(CREATE).unwrap(),
        mode,
        resolve: 0,
    };
    let size = std::mem::size_of::<OpenHow>();
    let (path, how) = (p.name("openat2").as_ptr(), &how as *const OpenHow);
    // SAFETY: `path` is NUL-terminated and `how` a live open_how of the size passed with it;
    // both outlive the call, which only reads them.
    errno_of(unsafe { libc::syscall(nr, p.dir_fd, path, how, size) })
}

fn io_uring_setup() -> Option<i32> {
    // io_uring_params is 120 bytes; the kernel writes at most that into this 128-byte buffer.
    let mut params = [0u64; 16];
    // SAFETY: `params` is a writable, zeroed buffer larger than struct io_uring_params.
    errno_of(unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, params.as_mut_ptr()) })
}

/// The calls refused outright or by family: openat2, fchmodat2, io_uring_setup and sockets.
fn other_calls(p: &Paths) -> Vec<(&'static str, Option<i32>)> {
    let fchmodat2 = libc::c_long::from(sysno("fchmodat2").unwrap().id());
    let at_cwd = libc::AT_FDCWD.into();
    let socket = |family| call_ints(libc::SYS_socket, family, libc::SOCK_STREAM.into(), 0);
    let vsock = libc::c_long::from(libc::AF_VSOCK);
    vec![
        ("openat2_4755", openat2(p, 0o4755)),
        (
            "fchmodat2_4755",
            call_at2(fchmodat2, at_cwd, &p.file, 0o4755, 0),
        ),
        ("io_uring_setup", io_uring_setup()),
        ("socket_vsock", socket(vsock)),
        // The kernel reads an int: the upper half must not hide the family.
        ("socket_vsock_high", socket(vsock | 1 << 32)),
        ("socket_unix", socket(libc::AF_UNIX.into())),
        ("socket_inet", socket(libc::AF_INET.into())),
    ]
}

/// What a hardened policy must give each call.
fn hardened_expectations() -> Vec<(&'static str, Option<i32>)> {
    vec![
        ("chmod_4755", EPERM),
        ("chmod_2755", EPERM),
        ("fchmod_2755", EPERM),
        ("fchmodat_4755", EPERM),
        ("open_creat_4755", EPERM),
        ("openat_creat_2755", EPERM),
        ("creat_4755", EPERM),
        ("mkdir_2755", EPERM),
        ("mkdirat_4755", EPERM),
        ("mknod_4755", EPERM),
        ("mknodat_2755", EPERM),
        ("chmod_755", OK),
        ("open_creat_644", OK),
        ("mkdir_755", OK),
        ("openat2_4755", ENOSYS),
        ("fchmodat2_4755", ENOSYS),
        ("io_uring_setup", EPERM),
        ("socket_vsock", EPERM),
        ("socket_vsock_high", EPERM),
        ("socket_unix", OK),
        ("socket_inet", OK),
    ]
}

fn assert_results(
    mode: &str,
    results: &BTreeMap<String, String>,
    expected: &[(&str, Option<i32>)],
) {
    for (name, want) in expected {
        let got = results.get(*name).map(String::as_str);
        assert_eq!(
            got,
            Some(format!("{want:?}").as_str()),
            "{mode}: {name} in {results:?}"
        );
    }
}

fn assert_hardened(mode: &str) {
    let (results, modes) = run_child(mode);
    assert_results(mode, &results, &hardened_expectations());
    // Nothing with a setuid/setgid bit was left behind, and the plain calls did their work.
    assert!(modes.values().all(|m| m & 0o6000 == 0), "{mode}: {modes:?}");
    let created: Vec<&str> = modes.keys().map(String::as_str).collect();
    assert_eq!(created, ["file", "mkdir-plain", "open-plain"], "{mode}");
    assert_eq!(modes["file"], 0o755, "{mode}");
}

#[test]
fn hardened_default_refuses_setuid_files_and_vsock() {
    assert_hardened("default");
}

#[test]
fn hardened_strict_refuses_setuid_files_and_vsock() {
    assert_hardened("strict");
}

#[test]
fn hardened_audit_refuses_setuid_files_and_vsock() {
    assert_hardened("audit");
}

#[test]
fn plain_audit_lets_every_call_through() {
    let (results, modes) = run_child("plain-audit");
    let everything_ok: Vec<_> = hardened_expectations()
        .into_iter()
        .map(|(name, _)| (name, OK))
        .collect();
    assert_results("plain-audit", &results, &everything_ok);
    assert!(modes.values().any(|m| m & 0o4000 != 0), "{modes:?}");
}

/// Ordinary tool work in `$1` (a temp dir): files, modes, archives, python, git; then the plant
/// attempts, which must fail.
const TOOL_SCRIPT: &str = r#"
set -e
cd "$1"
mkdir -p a/b && echo hi > a/b/f && chmod 755 a/b/f && cp -a a c && install -m 644 a/b/f g
tar cf t.tar a && mkdir x && tar xf t.tar -C x && test -x x/a/b/f
python3 -c 'import os, tempfile, subprocess; os.chmod("g", 0o600); tempfile.mkdtemp(dir=".");
subprocess.run(["true"], check=True)'
git init -q r && git -C r -c user.name=h -c user.email=h@h commit -q --allow-empty -m m
if chmod u+s g 2>/dev/null; then echo planted-setuid; fi
if chmod g+s a 2>/dev/null; then echo planted-setgid; fi
echo done
"#;

/// Runs [`TOOL_SCRIPT`] under `policy` in a fresh temp dir; returns its output.
fn run_tools(policy: &hearth_seccomp::SeccompPolicy) -> std::process::Output {
    let filters = render_bpf(policy).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("hearth-harden-")
        .tempdir()
        .unwrap();
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", TOOL_SCRIPT, "sh"]).arg(dir.path());
    cmd.env("HOME", dir.path()).env("GIT_CONFIG_NOSYSTEM", "1");
    // SAFETY: the hook only calls `apply_in_pre_exec`, which makes two kinds of system call and
    // allocates nothing; `filters` was built before the fork.
    unsafe {
        cmd.pre_exec(move || filters.apply_in_pre_exec());
    }
    cmd.output().unwrap()
}

#[test]
fn hardened_profiles_still_run_a_shell_python_tar_and_git() {
    for name in ["strict", "default", "audit"] {
        let out = run_tools(&harden_for_workload(&profile(name).unwrap()).unwrap());
        assert!(out.status.success(), "{name}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "done\n",
            "{name}: {out:?}"
        );
    }
    // The control: the same script plants both bits under `default` as written.
    let out = run_tools(&profile("default").unwrap());
    let planted = "planted-setuid\nplanted-setgid\ndone\n";
    assert_eq!(String::from_utf8_lossy(&out.stdout), planted, "{out:?}");
}
