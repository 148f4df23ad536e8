//! `hearth bench seccomp`: one sandbox floods its supervisor with denied calls while a second
//! sandbox's exec latency is measured, next to that latency measured idle in the same run.
//!
//! Figures: the flooded sandbox's supervisor RSS before and after (goal: at most 4 MiB of
//! growth), the counts the audit stored against what the workload saw (goal: exact), and exec
//! p50 in the quiet sandbox during the flood against idle (goal: at most 1.2x).

use std::time::Duration;

use anyhow::{bail, Context};
use hearth_proto::ExecRequest;
use hearth_sandbox::guest_client::OutputChunk;
use hearth_sandbox::spec::SandboxSpec;
use hearth_sandbox::SandboxId;
use serde::Serialize;

use super::{progress, Percentiles};
use crate::cli::output::{self, outln, OutputError};
use crate::request::{RequestError, SandboxRequest};
use crate::sandboxes::SandboxManager;
use crate::supervisor::launch;

/// Time the workload gets to start Python before the "during" samples begin.
const FLOOD_WARMUP: Duration = Duration::from_millis(1500);

#[derive(Debug, Serialize)]
struct SeccompBench {
    calls: u64,
    eperm_seen_by_workload: u64,
    unshare_count_stored: u64,
    counts_exact: bool,
    flood_seconds: f64,
    supervisor_rss_before_kib: u64,
    supervisor_rss_after_kib: u64,
    supervisor_rss_growth_kib: u64,
    exec_idle: Percentiles,
    exec_during_flood: Percentiles,
    exec_ratio_p50: f64,
    flood_outlasted_samples: bool,
}

pub async fn run(
    manager: &SandboxManager,
    calls: u64,
    execs: usize,
    json: bool,
) -> anyhow::Result<u8> {
    let result = with_flood_and_quiet(manager, |flood, quiet| async move {
        measure(manager, &flood, &quiet, calls, execs, json).await
    })
    .await?;
    if json {
        output::print_json(&result)?;
    } else {
        print_table(&result)?;
    }
    Ok(0)
}

/// Runs `measure` with two fresh sandboxes (the one that floods, the one that stays quiet) and
/// removes both whatever it returns.
pub(super) async fn with_flood_and_quiet<T, F, Fut>(
    manager: &SandboxManager,
    measure: F,
) -> anyhow::Result<T>
where
    F: FnOnce(SandboxId, SandboxId) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    manager.reconcile().await?;
    let flood = sandbox_spec()?;
    let quiet = sandbox_spec()?;
    manager.create(&flood).await?;
    let outcome = match manager.create(&quiet).await {
        Ok(_) => measure(flood.id.clone(), quiet.id.clone()).await,
        Err(err) => Err(err.into()),
    };
    let _ = manager.remove(&quiet.id, true).await;
    manager.remove(&flood.id, false).await?;
    outcome
}

/// A sandbox under the `default` profile, its audited calls going to its supervisor.
pub(super) fn sandbox_spec() -> Result<SandboxSpec, RequestError> {
    SandboxRequest::default().validate()
}

async fn measure(
    manager: &SandboxManager,
    flood: &SandboxId,
    quiet: &SandboxId,
    calls: u64,
    execs: usize,
    json: bool,
) -> anyhow::Result<SeccompBench> {
    let supervisor = launch::running(&manager.dirs.sandbox(flood))?
        .context("the flooded sandbox has no running seccomp supervisor")?;
    let pid = supervisor.pid();
    let rss_before = vm_rss_kib(pid)?;
    progress(json, &format!("exec true x{execs} in an idle host"));
    let idle = exec_samples(manager, quiet, execs).await?;

    progress(
        json,
        &format!("{calls} denied unshare calls, execs alongside"),
    );
    let client = manager.guest(flood).await?;
    let started = std::time::Instant::now();
    let workload = tokio::spawn(async move {
        let mut stdout = Vec::new();
        let status = client
            .exec(&flood_request(calls), |chunk| {
                if let OutputChunk::Stdout(data) = chunk {
                    stdout.extend_from_slice(&data);
                }
            })
            .await;
        (status, stdout, started.elapsed())
    });
    tokio::time::sleep(FLOOD_WARMUP).await;
    let during = exec_samples(manager, quiet, execs).await?;
    let outlasted = !workload.is_finished();
    let (status, stdout, elapsed) = workload.await?;
    if !status?.success() {
        bail!(
            "the flood workload failed: {}",
            String::from_utf8_lossy(&stdout)
        );
    }
    let seen: u64 = String::from_utf8_lossy(&stdout).trim().parse().unwrap_or(0);

    let dirs = manager.dirs.sandbox(flood);
    launch::request_flush(&manager.store, &dirs, flood, Duration::from_secs(10)).await?;
    let stored = manager
        .store
        .seccomp_audit_counts(flood)
        .await?
        .into_iter()
        .filter(|c| c.syscall.as_deref() == Some("unshare"))
        .map(|c| c.count)
        .sum();
    let rss_after = vm_rss_kib(pid)?;
    Ok(SeccompBench {
        calls,
        eperm_seen_by_workload: seen,
        unshare_count_stored: stored,
        counts_exact: seen == calls && stored == calls,
        flood_seconds: elapsed.as_secs_f64(),
        supervisor_rss_before_kib: rss_before,
        supervisor_rss_after_kib: rss_after,
        supervisor_rss_growth_kib: rss_after.saturating_sub(rss_before),
        exec_ratio_p50: during.p50_ms / idle.p50_ms.max(f64::MIN_POSITIVE),
        exec_idle: idle,
        exec_during_flood: during,
        flood_outlasted_samples: outlasted,
    })
}

/// Python with ctypes: a tight loop of `unshare(CLONE_NEWUSER)`, each answered by the listener;
/// prints how many came back EPERM.
fn flood_request(calls: u64) -> ExecRequest {
    let script = format!(
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nunshare = libc.unshare\n\
         eperm = 0\nfor _ in range({calls}):\n    \
         if unshare(0x10000000) == -1 and ctypes.get_errno() == 1:\n        eperm += 1\n\
         print(eperm)\n"
    );
    ExecRequest {
        argv: vec!["/usr/bin/python3".into(), "-c".into(), script],
        ..ExecRequest::default()
    }
}

pub(super) async fn exec_samples(
    manager: &SandboxManager,
    id: &SandboxId,
    execs: usize,
) -> anyhow::Result<Percentiles> {
    let client = manager.guest(id).await?;
    let request = ExecRequest {
        argv: vec!["/usr/bin/true".to_owned()],
        ..ExecRequest::default()
    };
    let mut samples = Vec::with_capacity(execs);
    for _ in 0..execs {
        let start = std::time::Instant::now();
        client.exec(&request, |_| {}).await?;
        samples.push(start.elapsed());
    }
    Ok(Percentiles::of(samples))
}

fn vm_rss_kib(pid: i32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

fn print_table(r: &SeccompBench) -> Result<(), OutputError> {
    outln!(
        "denied calls: {} in {:.1} s ({:.0}/s); EPERM seen by the workload: {}; stored count: {} ({})",
        r.calls,
        r.flood_seconds,
        precision_loss(r.calls) / r.flood_seconds.max(f64::MIN_POSITIVE),
        r.eperm_seen_by_workload,
        r.unshare_count_stored,
        if r.counts_exact { "exact" } else { "MISMATCH" }
    )?;
    outln!(
        "supervisor RSS: {} KiB -> {} KiB (growth {} KiB, goal <= 4096 KiB)",
        r.supervisor_rss_before_kib,
        r.supervisor_rss_after_kib,
        r.supervisor_rss_growth_kib
    )?;
    outln!("{:<44} {:>9} {:>9}", "", "p50 ms", "p99 ms")?;
    let row =
        |name: &str, p: &Percentiles| outln!("{name:<44} {:>9.2} {:>9.2}", p.p50_ms, p.p99_ms);
    row(
        "exec true, second sandbox, during the flood",
        &r.exec_during_flood,
    )?;
    row("reference: same, idle (same run)", &r.exec_idle)?;
    outln!(
        "{:<44} {:>9.2}x (goal <= 1.2x){}",
        "exec ratio (p50)",
        r.exec_ratio_p50,
        if r.flood_outlasted_samples {
            ""
        } else {
            "; the flood ended before the samples did"
        }
    )
}

#[allow(clippy::cast_precision_loss)] // a rate for display
fn precision_loss(n: u64) -> f64 {
    n as f64
}
