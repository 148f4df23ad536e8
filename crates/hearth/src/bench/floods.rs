//! `hearth bench floods`: the host-side work one sandbox can cause, and what it costs a
//! neighbour. One sandbox floods its supervisor three ways in turn (denied system calls, DNS
//! queries, packets its firewall drops and logs) while a second sandbox's `exec true` latency
//! is timed, next to that latency idle in the same run (goal: at most 1.5x during each flood).
//! Also shown: the CPU the flooded sandbox's supervisor used, which its cgroup caps at a quarter
//! of a CPU, next to the wall time of the flood.

use std::time::{Duration, Instant};

use anyhow::Context;
use hearth_proto::ExecRequest;
use hearth_sandbox::guest_client::OutputChunk;
use hearth_sandbox::SandboxId;
use serde::Serialize;

use super::seccomp::{exec_samples, with_flood_and_quiet};
use super::{progress, Percentiles};
use crate::cli::output::{self, outln, OutputError};
use crate::sandboxes::SandboxManager;
use crate::supervisor::launch;

/// Time the flood gets to start Python before the samples begin.
const WARMUP: Duration = Duration::from_millis(1500);
/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Serialize)]
struct FloodResult {
    kind: &'static str,
    /// What the flood did, as the workload counted it.
    operations: u64,
    seconds: f64,
    supervisor_cpu_seconds: f64,
    exec_during: Percentiles,
    exec_ratio_p50: f64,
}

#[derive(Debug, Serialize)]
struct FloodsBench {
    exec_idle: Percentiles,
    floods: Vec<FloodResult>,
}

pub async fn run(
    manager: &SandboxManager,
    seconds: u64,
    execs: usize,
    json: bool,
) -> anyhow::Result<u8> {
    let result = with_flood_and_quiet(manager, |flood, quiet| async move {
        measure(manager, &flood, &quiet, seconds, execs, json).await
    })
    .await?;
    if json {
        output::print_json(&result)?;
    } else {
        print_table(&result)?;
    }
    Ok(0)
}

async fn measure(
    manager: &SandboxManager,
    flood: &SandboxId,
    quiet: &SandboxId,
    seconds: u64,
    execs: usize,
    json: bool,
) -> anyhow::Result<FloodsBench> {
    let supervisor = launch::running(&manager.dirs.sandbox(flood))?
        .context("the flooding sandbox has no running supervisor")?;
    progress(json, &format!("exec true x{execs} with everything idle"));
    let exec_idle = exec_samples(manager, quiet, execs).await?;
    let mut floods = Vec::new();
    for kind in ["seccomp", "dns", "drops"] {
        progress(
            json,
            &format!("{kind} flood for {seconds} s, execs alongside"),
        );
        let cpu_before = cpu_seconds(supervisor.pid())?;
        let client = manager.guest(flood).await?;
        let started = Instant::now();
        let request = flood_request(kind, seconds);
        let workload = tokio::spawn(async move {
            let mut stdout = Vec::new();
            let status = client
                .exec(&request, |chunk| {
                    if let OutputChunk::Stdout(data) = chunk {
                        stdout.extend_from_slice(&data);
                    }
                })
                .await;
            (status, stdout)
        });
        tokio::time::sleep(WARMUP).await;
        let exec_during = exec_samples(manager, quiet, execs).await?;
        let (status, stdout) = workload.await?;
        let text = String::from_utf8_lossy(&stdout);
        if !status?.success() {
            anyhow::bail!("the {kind} flood failed: {text}");
        }
        floods.push(FloodResult {
            kind,
            operations: text.trim().parse().unwrap_or(0),
            seconds: started.elapsed().as_secs_f64(),
            supervisor_cpu_seconds: cpu_seconds(supervisor.pid())? - cpu_before,
            exec_ratio_p50: exec_during.p50_ms / exec_idle.p50_ms.max(f64::MIN_POSITIVE),
            exec_during,
        });
    }
    Ok(FloodsBench { exec_idle, floods })
}

/// Python, standard library only, flooding for `seconds` and printing how much it did:
/// denied `unshare` calls, DNS queries for a name the resolver refuses, or UDP packets to a
/// port of the host side that the firewall drops and logs.
fn flood_request(kind: &str, seconds: u64) -> ExecRequest {
    let setup = "import ctypes, socket, time\n\
        end = time.time() + SECONDS\nn = 0\n\
        resolver = [l.split()[1] for l in open('/etc/resolv.conf') if l.startswith('nameserver')][0]\n";
    let body = match kind {
        "seccomp" => {
            "libc = ctypes.CDLL(None)\n\
             while time.time() < end:\n    for _ in range(1000):\n        libc.unshare(0x10000000)\n    n += 1000\n"
        }
        "dns" => {
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setblocking(False)\n\
             q = b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x05flood\\x07invalid\\x00\\x00\\x01\\x00\\x01'\n\
             while time.time() < end:\n    for _ in range(100):\n        try:\n            s.sendto(q, (resolver, 53)); n += 1\n        except OSError:\n            pass\n    try:\n        while True: s.recv(512)\n    except OSError:\n        pass\n"
        }
        _ => {
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setblocking(False)\n\
             while time.time() < end:\n    for _ in range(100):\n        try:\n            s.sendto(b'x', (resolver, 9)); n += 1\n        except OSError:\n            pass\n"
        }
    };
    let script = format!(
        "{}{}print(n)\n",
        setup.replace("SECONDS", &seconds.to_string()),
        body
    );
    ExecRequest {
        argv: vec!["/usr/bin/python3".into(), "-c".into(), script],
        ..ExecRequest::default()
    }
}

/// User plus system CPU time of process `pid`, in seconds.
fn cpu_seconds(pid: i32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // Fields after the parenthesised command name: state is the first, utime the 12th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    };
    Ok(f64::from(ticks(11) + ticks(12)) / TICKS_PER_SECOND)
}

fn print_table(r: &FloodsBench) -> Result<(), OutputError> {
    outln!(
        "{:<10} {:>12} {:>8} {:>14} {:>9} {:>9} {:>8}",
        "flood",
        "operations",
        "wall s",
        "supervisor cpu",
        "p50 ms",
        "p99 ms",
        "ratio"
    )?;
    outln!(
        "{:<10} {:>12} {:>8} {:>14} {:>9.2} {:>9.2} {:>8}",
        "(idle)",
        "-",
        "-",
        "-",
        r.exec_idle.p50_ms,
        r.exec_idle.p99_ms,
        "1.00x"
    )?;
    for f in &r.floods {
        outln!(
            "{:<10} {:>12} {:>8.1} {:>13.1}s {:>9.2} {:>9.2} {:>7.2}x",
            f.kind,
            f.operations,
            f.seconds,
            f.supervisor_cpu_seconds,
            f.exec_during.p50_ms,
            f.exec_during.p99_ms,
            f.exec_ratio_p50
        )?;
    }
    outln!("exec true in a second sandbox during each flood; goal: ratio <= 1.5x p50")?;
    outln!("the supervisor's cgroup caps it at 0.25 CPU (at most 0.25 s per wall second)")
}
