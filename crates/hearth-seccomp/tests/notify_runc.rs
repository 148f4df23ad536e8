//! The seccomp notify listener against the real runc: denied calls get EPERM, the workload keeps
//! running, and the audit has the exact counts.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use hearth_seccomp::audit::{AuditAction, AuditConfig, AuditSource, SharedAuditLog};
use hearth_seccomp::notify::{serve, NotifyListener, ServeEnd, ServeSummary};

use common::{notify_seccomp, Bundle};

const WORKLOAD: &str = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER = 0x10000000
for i in range(3):
    rc = libc.unshare(CLONE_NEWUSER)
    print("unshare", rc, ctypes.get_errno(), flush=True)
rc = libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)
print("mount", rc, ctypes.get_errno(), flush=True)
print("done", flush=True)
"#;

#[test]
fn runc_notifications_are_denied_with_eperm_and_counted() {
    let bundle = Bundle::new("notify");
    let listener = NotifyListener::bind(&bundle.socket_path()).unwrap();
    bundle.write_config(
        &["/usr/bin/python3", "-c", WORKLOAD],
        notify_seccomp(listener.path(), &["unshare", "mount", "keyctl"]),
    );
    let audit = SharedAuditLog::new(AuditConfig::default()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));

    let server = {
        let (audit, stop) = (audit.clone(), Arc::clone(&stop));
        thread::spawn(move || {
            let accepted = listener.accept_one(Duration::from_secs(20))?;
            let summary = serve(&accepted.fd, &audit, &stop)?;
            Ok::<_, hearth_seccomp::notify::NotifyError>((accepted.state, summary))
        })
    };
    let out = bundle.run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Only a failed runc leaves the server waiting; stop it so the join below can't hang.
    if !out.status.success() {
        stop.store(true, Ordering::Relaxed);
    }
    let served = server.join().expect("server thread");
    assert!(
        out.status.success(),
        "runc: {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let (state, summary) = served.expect("listener");

    // The workload saw EPERM (errno 1) every time and carried on to the end.
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "unshare -1 1",
            "unshare -1 1",
            "unshare -1 1",
            "mount -1 1",
            "done"
        ],
        "stderr: {stderr}"
    );
    assert_eq!(
        summary,
        ServeSummary {
            handled: 4,
            target_gone: 0,
            end: ServeEnd::FilterGone
        }
    );
    assert_eq!(state.state.id, bundle.id);
    assert_eq!(state.metadata, "hearth-test");
    assert_eq!(state.fds, ["seccompFd"]);

    let snap = audit.snapshot();
    assert_eq!(snap.total, 4);
    let count = |name: &str| {
        snap.counts_by_syscall
            .iter()
            .find(|c| c.name.as_deref() == Some(name))
            .map_or(0, |c| c.count)
    };
    assert_eq!(count("unshare"), 3);
    assert_eq!(count("mount"), 1);
    assert_eq!(count("keyctl"), 0);
    let first = &snap.recent[0];
    assert_eq!(first.syscall_name.as_deref(), Some("unshare"));
    assert_eq!(first.args[0], 0x1000_0000);
    assert_eq!(first.action, AuditAction::DeniedEperm);
    assert_eq!(first.source, AuditSource::OciNotify);
    assert_eq!(first.comm.as_deref(), Some("python3"));
    assert!(
        first.exe.as_deref().is_some_and(|e| e.contains("python3")),
        "exe: {:?}",
        first.exe
    );
}
