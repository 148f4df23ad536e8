//! Setup + teardown timing of sandbox networking, next to the same objects made with the `ip` and
//! `nft` commands in the same run (the shell-script way, and the reference the goal is set by).

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::firewall::{FirewallError, FirewallManager, LINK_ALIAS_PREFIX, SANDBOX_IF};
use super::policy::NetPolicy;
use super::ruleset::{self, RulesetSpec};
use hearth_id::SandboxId;

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    #[error("benchmark sandbox id {0:?} is invalid")]
    Id(String),
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("the address pool has no free slot for the command-line reference")]
    NoSlot,
}

/// Latency figures of one way of doing setup + teardown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BenchStats {
    pub samples: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub mean: Duration,
}

impl BenchStats {
    fn from_samples(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let n = samples.len().max(1);
        let pick = |q: usize| {
            samples
                .get(((n * q).div_ceil(100)).saturating_sub(1))
                .copied()
                .unwrap_or_default()
        };
        let total: Duration = samples.iter().sum();
        let mean = total / u32::try_from(n).unwrap_or(u32::MAX);
        Self {
            samples: samples.len(),
            p50: pick(50),
            p99: pick(99),
            mean,
        }
    }
}

/// hearth's figure next to the command-line reference measured in the same run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BenchReport {
    pub hearth: BenchStats,
    pub commands: BenchStats,
    /// Whether hearth ran nft batches in-process (libnftables) in this run.
    pub nft_in_process: bool,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let row = |f: &mut std::fmt::Formatter<'_>, name: &str, s: &BenchStats| {
            writeln!(
                f,
                "{name:<34} n={:<4} p50={:>9.3?} p99={:>9.3?} mean={:>9.3?}",
                s.samples, s.p50, s.p99, s.mean
            )
        };
        row(f, "hearth FirewallManager setup+teardown", &self.hearth)?;
        row(f, "ip + nft commands (reference)", &self.commands)?;
        write!(f, "nft in-process: {}", self.nft_in_process)
    }
}

/// Runs `n` setup + teardown cycles of a gateway-mode sandbox through `manager`, then `n` cycles
/// of the same namespace + veth + addresses + route + table with `ip` and `nft`. Ids are
/// `<prefix>-h<i>` and `<prefix>-c<i>`; everything is removed again.
pub fn bench_setup_teardown(
    manager: &FirewallManager,
    n: usize,
    prefix: &str,
) -> Result<BenchReport, BenchError> {
    let policy = NetPolicy::default();
    let mut ours = Vec::with_capacity(n);
    for i in 0..n {
        let id = bench_id(prefix, "h", i)?;
        let start = Instant::now();
        let result = manager
            .setup(&id, &policy)
            .map(drop)
            .and_then(|()| manager.teardown(&id));
        ours.push(start.elapsed());
        if let Err(err) = result {
            let _ = manager.teardown(&id);
            return Err(err.into());
        }
    }
    let mut theirs = Vec::with_capacity(n);
    for i in 0..n {
        let id = bench_id(prefix, "c", i)?;
        let result = with_commands(manager, &id, &policy);
        let _ = manager.teardown(&id);
        theirs.push(result?);
    }
    Ok(BenchReport {
        hearth: BenchStats::from_samples(ours),
        commands: BenchStats::from_samples(theirs),
        nft_in_process: manager.nft_in_process(),
    })
}

fn bench_id(prefix: &str, kind: &str, i: usize) -> Result<SandboxId, BenchError> {
    let raw = format!("{prefix}-{kind}{i}");
    SandboxId::parse(&raw).map_err(|_| BenchError::Id(raw))
}

/// One setup + teardown with the commands; returns its duration.
fn with_commands(
    manager: &FirewallManager,
    id: &SandboxId,
    policy: &NetPolicy,
) -> Result<std::time::Duration, BenchError> {
    let config = manager.config();
    let names = id.names();
    let slot = manager
        .store()
        .claim(id, config.pool.capacity(), &BTreeSet::new())
        .map_err(FirewallError::from)?;
    let addrs = slot
        .and_then(|s| config.pool.slot(s))
        .ok_or(BenchError::NoSlot)?;
    let spec = RulesetSpec {
        table: &names.nft_table,
        veth_host: &names.veth_host,
        id: id.as_str(),
        host: addrs.host,
        sandbox: addrs.sandbox,
        pool: config.pool.net(),
        gateway_ports: &config.gateway_ports,
        dns_port: config.dns_port,
        log_group: config.log_group,
        policy,
    };
    let rules = serde_json::to_string(&ruleset::install(&spec)).unwrap_or_default();
    let (ns, veth, len) = (
        names.netns.as_str(),
        names.veth_host.as_str(),
        addrs.subnet.prefix_len(),
    );
    let host_cidr = format!("{}/{len}", addrs.host);
    let sandbox_cidr = format!("{}/{len}", addrs.sandbox);
    let alias = format!("{LINK_ALIAS_PREFIX}{id}");
    let host_addr = addrs.host.to_string();
    let start = Instant::now();
    run("ip", &["netns", "add", ns], None)?;
    run("ip", &["-n", ns, "link", "set", "lo", "up"], None)?;
    run(
        "ip",
        &[
            "link", "add", veth, "type", "veth", "peer", "name", SANDBOX_IF, "netns", ns,
        ],
        None,
    )?;
    run("ip", &["link", "set", veth, "alias", &alias, "up"], None)?;
    run("ip", &["addr", "add", &host_cidr, "dev", veth], None)?;
    run("ip", &["-n", ns, "link", "set", SANDBOX_IF, "up"], None)?;
    run(
        "ip",
        &["-n", ns, "addr", "add", &sandbox_cidr, "dev", SANDBOX_IF],
        None,
    )?;
    run(
        "ip",
        &["-n", ns, "route", "add", "default", "via", &host_addr],
        None,
    )?;
    run("nft", &["-j", "-f", "-"], Some(&rules))?;
    run("nft", &["delete", "table", "inet", &names.nft_table], None)?;
    run("ip", &["link", "del", veth], None)?;
    run("ip", &["netns", "del", ns], None)?;
    Ok(start.elapsed())
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<(), BenchError> {
    let command = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| BenchError::Spawn {
            command: command.clone(),
            source,
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|source| BenchError::Spawn {
                command: command.clone(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| BenchError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        return Err(BenchError::Command {
            command,
            status: out.status,
            stderr,
        });
    }
    Ok(())
}
