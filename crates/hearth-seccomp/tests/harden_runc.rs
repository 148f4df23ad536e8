//! The hardened `default` profile under the real runc and libseccomp: the OCI rendering loads,
//! setuid/setgid modes and AF_VSOCK reach hearth's listener and fail with EPERM, the same calls
//! without the bits (or with another family) still work, and i386's `socketcall`, which can't be
//! filtered by family, can't open AF_VSOCK either. Uses the runc bundle helper the notify tests
//! share (tests/common).

mod common;

use std::collections::BTreeMap;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use hearth_seccomp::audit::{AuditConfig, SharedAuditLog};
use hearth_seccomp::notify::{serve, NotifyListener, ServeSummary};
use hearth_seccomp::{load_policy, load_workload_policy, render_oci, SeccompPolicy};

use common::Bundle;

/// Tries each call and prints `name ok` or `name <errno>`, then runs the i386 probe in a child
/// and prints how it ended (a negative return code is the signal that killed it).
const WORKLOAD: &str = r#"
import os, socket, subprocess, sys
def attempt(name, call):
    try:
        call()
        print(name, "ok", flush=True)
    except OSError as e:
        print(name, e.errno, flush=True)
open("/tmp/f", "w").close()
attempt("chmod_4755", lambda: os.chmod("/tmp/f", 0o4755))
attempt("chmod_755", lambda: os.chmod("/tmp/f", 0o755))
attempt("mkdir_2755", lambda: os.mkdir("/tmp/d", 0o2755))
attempt("vsock", lambda: socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM))
attempt("unix", lambda: socket.socket(socket.AF_UNIX).close())
print("mode", oct(os.stat("/tmp/f").st_mode & 0o7777), flush=True)
probe = subprocess.run([sys.executable, "-c", I386_PROBE], capture_output=True, text=True)
print("i386", probe.stdout.strip() or probe.returncode, flush=True)
"#;

/// `socketcall(SYS_SOCKET, [AF_VSOCK, SOCK_STREAM, 0])` through `int 0x80`: the i386 entry a
/// 64-bit process can still use, where the family is in memory. Prints the result.
const I386_PROBE: &str = r#"
import ctypes, mmap, struct
MAP_32BIT = 0x40
m = mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_32BIT,
              prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
base = ctypes.addressof(ctypes.c_char.from_buffer(m))
m[64:76] = struct.pack("<iii", 40, 1, 0)
# push rbx; mov eax, 102; mov ebx, 1; mov ecx, base+64; int 0x80; pop rbx; ret
code = (b"\x53\xb8" + struct.pack("<I", 102) + b"\xbb" + struct.pack("<I", 1)
        + b"\xb9" + struct.pack("<I", base + 64) + b"\xcd\x80\x5b\xc3")
m[0:len(code)] = code
print("fd" if ctypes.CFUNCTYPE(ctypes.c_int)(base)() >= 0 else "refused", flush=True)
"#;

/// Runs the workload under `policy` with hearth's listener; returns runc's output and what the
/// listener served.
fn run(policy: &SeccompPolicy, audit: &SharedAuditLog) -> (Output, ServeSummary) {
    let bundle = Bundle::new("harden");
    let listener = NotifyListener::bind(&bundle.socket_path()).unwrap();
    let seccomp = render_oci(policy, Some(listener.path())).unwrap();
    let script = format!("I386_PROBE = {I386_PROBE:?}\n{WORKLOAD}");
    bundle.write_config(&["/usr/bin/python3", "-c", &script], seccomp);
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (audit, stop) = (audit.clone(), Arc::clone(&stop));
        thread::spawn(move || {
            let accepted = listener.accept_one(Duration::from_secs(20))?;
            serve(&accepted.fd, &audit, &stop)
        })
    };
    let out = bundle.run();
    // Only a failed runc leaves the server waiting; stop it so the join below can't hang.
    if !out.status.success() {
        stop.store(true, Ordering::Relaxed);
    }
    let summary = server.join().expect("server thread");
    assert!(out.status.success(), "{out:?}");
    (out, summary.expect("listener"))
}

#[test]
fn hardened_default_under_runc_notifies_and_refuses_setuid_and_vsock() {
    let audit = SharedAuditLog::new(AuditConfig::default()).unwrap();
    let (out, summary) = run(&load_workload_policy("default").unwrap(), &audit);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let eperm = libc::EPERM;
    let sigsys = -libc::SIGSYS;
    let expected = [
        format!("chmod_4755 {eperm}"),
        "chmod_755 ok".into(),
        format!("mkdir_2755 {eperm}"),
        format!("vsock {eperm}"),
        "unix ok".into(),
        "mode 0o755".into(),
        format!("i386 {sigsys}"),
    ];
    assert_eq!(lines, expected, "{out:?}");
    assert_eq!(summary.handled, 3);
    let counts: BTreeMap<String, u64> = audit
        .snapshot()
        .counts_by_syscall
        .into_iter()
        .map(|c| (c.name.unwrap_or_default(), c.count))
        .collect();
    assert_eq!(counts.values().sum::<u64>(), 3, "{counts:?}");
    assert_eq!(counts.get("socket"), Some(&1), "{counts:?}");
}

/// The control: under `default` as written, every one of those calls goes through, so the
/// refusals above come from the hardening.
#[test]
fn default_as_written_under_runc_lets_them_through() {
    let audit = SharedAuditLog::new(AuditConfig::default()).unwrap();
    let (out, summary) = run(&load_policy("default").unwrap(), &audit);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let expected = [
        "chmod_4755 ok",
        "chmod_755 ok",
        "mkdir_2755 ok",
        "vsock ok",
        "unix ok",
        "mode 0o755",
        "i386 fd",
    ];
    assert_eq!(lines, expected, "{out:?}");
    assert_eq!(summary.handled, 0);
}
