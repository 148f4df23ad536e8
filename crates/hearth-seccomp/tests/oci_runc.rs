//! The OCI rendering of the built-in `default` profile under the real runc: runc and libseccomp
//! accept it (including `clone`'s allow and notify rules side by side), audited calls reach the
//! listener and get EPERM, and ordinary process creation (clone3 -> ENOSYS -> clone) still works.
//! Uses the runc bundle helper the notify tests share (tests/common).

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use hearth_seccomp::audit::{AuditConfig, SharedAuditLog};
use hearth_seccomp::notify::{serve, NotifyListener};
use hearth_seccomp::{profile, render_oci};

use common::Bundle;

const WORKLOAD: &str = r#"
import ctypes, subprocess
libc = ctypes.CDLL(None, use_errno=True)
print("unshare", libc.unshare(0x10000000), ctypes.get_errno(), flush=True)
print("mount", libc.mount(b"none", b"/tmp", b"tmpfs", 0, None), ctypes.get_errno(), flush=True)
print("true", subprocess.run(["/bin/true"]).returncode, flush=True)
"#;

#[test]
fn default_profile_runs_under_runc_with_audited_denials() {
    let bundle = Bundle::new("ocidefault");
    let listener = NotifyListener::bind(&bundle.socket_path()).unwrap();
    let seccomp = render_oci(&profile("default").unwrap(), Some(listener.path())).unwrap();
    bundle.write_config(&["/usr/bin/python3", "-c", WORKLOAD], seccomp);
    let audit = SharedAuditLog::new(AuditConfig::default()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (audit, stop) = (audit.clone(), Arc::clone(&stop));
        thread::spawn(move || {
            let accepted = listener.accept_one(Duration::from_secs(20))?;
            serve(&accepted.fd, &audit, &stop)
        })
    };
    let out = bundle.run();
    if !out.status.success() {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let summary = server.join().expect("server thread");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, ["unshare -1 1", "mount -1 1", "true 0"], "{out:?}");
    assert_eq!(summary.expect("listener").handled, 2);
}
