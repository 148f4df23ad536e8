//! Benchmark (ignored by default): 1,000,000 denied calls through the listener.
//!
//! `cargo test --release -p hearth-seccomp --test notify_bench -- --ignored --nocapture`
//! prints records/s, the listener process's RSS growth and, as the reference measured in the same
//! run, the same loop denied by the kernel alone (SCMP_ACT_ERRNO, no listener).

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use hearth_seccomp::audit::{AuditConfig, SharedAuditLog};
use hearth_seccomp::notify::{serve, NotifyListener, ServeEnd};
use serde_json::json;

use common::{notify_seccomp, rss_kib, Bundle};

/// `HEARTH_BENCH_CALLS` overrides the count for quicker looks.
fn calls() -> u64 {
    std::env::var("HEARTH_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn workload() -> String {
    let calls = calls();
    format!(
        r#"
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
unshare = libc.unshare
eperm = 0
for _ in range({calls}):
    if unshare(0x10000000) == -1 and ctypes.get_errno() == 1:
        eperm += 1
print(eperm)
"#
    )
}

/// The same loop with the kernel answering EPERM itself.
fn reference_run() -> Duration {
    let calls = calls();
    let bundle = Bundle::new("bench-ref");
    let seccomp = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["unshare"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    bundle.write_config(&["/usr/bin/python3", "-c", &workload()], seccomp);
    let start = Instant::now();
    let out = bundle.run();
    let elapsed = start.elapsed();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        calls.to_string()
    );
    elapsed
}

#[test]
#[ignore = "benchmark: a million notifications take a while"]
fn million_denied_calls_through_the_listener() {
    let calls = calls();
    let reference = reference_run();

    let bundle = Bundle::new("bench");
    let listener = NotifyListener::bind(&bundle.socket_path()).unwrap();
    bundle.write_config(
        &["/usr/bin/python3", "-c", &workload()],
        notify_seccomp(listener.path(), &["unshare"]),
    );
    let audit = SharedAuditLog::new(AuditConfig::default()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let rss_before = rss_kib();
    let server = {
        let (audit, stop) = (audit.clone(), Arc::clone(&stop));
        thread::spawn(move || {
            let accepted = listener.accept_one(Duration::from_secs(30)).unwrap();
            serve(&accepted.fd, &audit, &stop).unwrap()
        })
    };
    let start = Instant::now();
    let out = bundle.run();
    let elapsed = start.elapsed();
    let summary = server.join().unwrap();
    // Drained once, as the store would at the end of a window.
    let rows = audit.drain_windows();
    let rss_after = rss_kib();

    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        calls.to_string()
    );
    assert_eq!(summary.end, ServeEnd::FilterGone);
    assert_eq!(summary.handled, calls);
    let snap = audit.snapshot();
    assert_eq!(snap.total, calls);
    assert_eq!(snap.counts_by_syscall[0].name.as_deref(), Some("unshare"));
    assert_eq!(snap.counts_by_syscall[0].count, calls);
    assert_eq!(snap.evicted, calls - snap.recent.len() as u64);
    assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), calls);

    let growth_kib = rss_after.saturating_sub(rss_before);
    println!(
        "notify: {calls} denied calls in {:.2} s = {:.0} records/s ({} window rows); \
         reference (SCMP_ACT_ERRNO, no listener): {:.2} s = {:.0} calls/s",
        elapsed.as_secs_f64(),
        calls as f64 / elapsed.as_secs_f64(),
        rows.len(),
        reference.as_secs_f64(),
        calls as f64 / reference.as_secs_f64(),
    );
    println!("listener RSS: {rss_before} KiB -> {rss_after} KiB (growth {growth_kib} KiB, goal <= 4096 KiB)");
    assert!(growth_kib <= 4096, "RSS grew by {growth_kib} KiB");
}
