//! Round-trip latency of `exec true` through hearth-guest, next to a direct fork+exec of `true`
//! measured in the same run: `cargo run --release -p hearth-guest --example exec_latency [N]`.
//! Set `HEARTH_GUEST_SECCOMP_BPF=FILE` to measure execs that install the guest's seccomp filter.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hearth_proto::ExecRequest;
use hearth_sandbox::guest_client::GuestClient;

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)];
    (at(50), at(99))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(500);
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("guest.sock");
    let guest_bin = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../")
        .join(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
        .join(if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        })
        .join("hearth-guest");
    let mut daemon = Command::new(&guest_bin);
    daemon
        .args(["serve", "--listen"])
        .arg(&socket)
        .env("HEARTH_GUEST_LOG", "warn");
    // With a filter file, every exec installs it in a pre_exec hook (fork instead of
    // posix_spawn): `hearth seccomp render --target bpf strict --output FILE` writes one.
    if let Some(bpf) = std::env::var_os("HEARTH_GUEST_SECCOMP_BPF") {
        daemon.arg("--seccomp-bpf").arg(bpf);
    }
    let mut daemon = daemon
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", guest_bin.display()));
    let client = GuestClient::new(socket);
    client
        .wait_ready(Duration::from_secs(10))
        .await
        .expect("guest ready");

    let req = ExecRequest {
        argv: vec!["true".into()],
        ..ExecRequest::default()
    };
    let mut guest = Vec::with_capacity(n);
    let mut direct = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let status = client.exec(&req, |_| {}).await.expect("exec");
        guest.push(start.elapsed());
        assert_eq!(status.code, Some(0));

        let start = Instant::now();
        let st = Command::new("true")
            .stdin(Stdio::null())
            .status()
            .expect("true");
        direct.push(start.elapsed());
        assert!(st.success());
    }
    let (g50, g99) = percentiles(guest);
    let (d50, d99) = percentiles(direct);
    println!("exec `true` via hearth-guest: p50 {g50:?} p99 {g99:?} (n={n})");
    println!("direct fork+exec of `true`:   p50 {d50:?} p99 {d99:?} (reference, same run)");
    let _ = daemon.kill();
    let _ = daemon.wait();
}
