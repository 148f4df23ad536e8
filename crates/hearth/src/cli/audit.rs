//! `hearth sandbox audit ID [--json] [--follow]`.
//!
//! Counts come from the store, where the sandbox's supervisor flushes every second; before
//! reading, `audit` sends the supervisor SIGUSR1 and waits for that flush, so the counts include
//! every call the workload has already seen refused (the supervisor records a call before it
//! answers it).

use std::time::Duration;

use clap::Args;
use hearth_sandbox::SandboxId;
use hearth_seccomp::audit::AuditEntry;
use serde::Serialize;

use super::escape::field;
use super::output::{self, outln, OutputError};
use crate::sandboxes::{SandboxError, SandboxManager};
use crate::store::{AuditCount, AuditState, NetworkDrops, StoredDrop, StoredEntry};
use crate::supervisor;

/// How long `audit` waits for the supervisor's flush before showing what is stored.
const FLUSH_WAIT: Duration = Duration::from_secs(3);
/// How often `--follow` looks for new entries.
const FOLLOW_POLL: Duration = Duration::from_millis(500);

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Sandbox id.
    id: String,
    /// Print JSON (with --follow: the summary, then one JSON entry per line).
    #[arg(long)]
    json: bool,
    /// Keep printing new entries until Ctrl-C or until the sandbox is gone.
    #[arg(long, short)]
    follow: bool,
}

/// What `audit --json` prints.
#[derive(Debug, Serialize)]
struct Report {
    sandbox: String,
    /// The sandbox's status, or null once it is removed (the audit outlives it).
    status: Option<String>,
    supervisor: Option<SupervisorInfo>,
    counts: Vec<AuditCount>,
    recent: Vec<StoredEntry>,
    /// The firewall's drop log, or null for a sandbox without a network link.
    network_drops: Option<NetworkDrops>,
}

#[derive(Debug, Serialize)]
struct SupervisorInfo {
    running: bool,
    #[serde(flatten)]
    state: AuditState,
}

pub async fn audit(manager: &SandboxManager, args: AuditArgs) -> anyhow::Result<u8> {
    let id = SandboxId::parse(&args.id)?;
    let report = report(manager, &id).await?;
    if args.json {
        output::print_json(&report)?;
    } else {
        print_report(&report)?;
    }
    if args.follow {
        let last = Last {
            entry: report.recent.last().map_or(0, |e| e.id),
            drop: report
                .network_drops
                .as_ref()
                .and_then(|d| d.recent.last())
                .map_or(0, |d| d.id),
        };
        follow(manager, &id, last, args.json).await?;
    }
    Ok(0)
}

async fn report(manager: &SandboxManager, id: &SandboxId) -> anyhow::Result<Report> {
    let record = manager.store.get_sandbox(id).await?;
    if record.is_none() && manager.store.seccomp_audit_state(id).await?.is_none() {
        return Err(SandboxError::NotFound(id.clone()).into());
    }
    let dirs = manager.dirs.sandbox(id);
    let running = supervisor::launch::request_flush(&manager.store, &dirs, id, FLUSH_WAIT).await?;
    let state = manager.store.seccomp_audit_state(id).await?;
    Ok(Report {
        sandbox: id.to_string(),
        status: record.map(|r| r.status.to_string()),
        supervisor: state.map(|state| SupervisorInfo { running, state }),
        counts: manager.store.seccomp_audit_counts(id).await?,
        recent: manager.store.seccomp_audit_recent(id, 0).await?,
        network_drops: manager.store.network_drops(id).await?,
    })
}

/// The newest stored rows already shown.
#[derive(Debug, Clone, Copy)]
struct Last {
    entry: i64,
    drop: i64,
}

async fn follow(
    manager: &SandboxManager,
    id: &SandboxId,
    mut last: Last,
    json: bool,
) -> anyhow::Result<()> {
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            () = tokio::time::sleep(FOLLOW_POLL) => {}
        }
        for stored in manager.store.seccomp_audit_recent(id, last.entry).await? {
            last.entry = stored.id;
            if json {
                output::print_json_line(&stored)?;
            } else {
                outln!("{}", entry_line(&stored.entry))?;
            }
        }
        for stored in manager.store.network_drops_recent(id, last.drop).await? {
            last.drop = stored.id;
            if json {
                output::print_json_line(&serde_json::json!({ "network_drop": stored }))?;
            } else {
                outln!("{}", drop_line(&stored))?;
            }
        }
        let supervised = supervisor::launch::running(&manager.dirs.sandbox(id))?.is_some();
        if !supervised && manager.store.get_sandbox(id).await?.is_none() {
            return Ok(());
        }
        if !supervised && !json {
            // Nothing more will come unless a kill is recorded by `exec`; keep watching those.
            tracing::debug!(%id, "supervisor gone; following kills only");
        }
    }
}

/// The report for people. Names a workload chose (its processes' `comm`) and strings parsed
/// from logs go through [`field`], so they can neither drive the terminal nor forge rows.
fn print_report(r: &Report) -> Result<(), OutputError> {
    let total: u64 = r.counts.iter().map(|c| c.count).sum();
    let supervisor = match &r.supervisor {
        Some(s) if s.running => format!("supervisor pid {} running", s.state.supervisor_pid),
        Some(s) => format!(
            "supervisor ended: {}",
            field(
                s.state
                    .ended
                    .as_deref()
                    .unwrap_or("exited without a reason (crashed?)")
            )
        ),
        None => "no supervisor: this sandbox's policy audits nothing".to_owned(),
    };
    let status = r.status.as_deref().unwrap_or("removed");
    outln!(
        "sandbox {} ({status}): {total} refused calls; {supervisor}",
        r.sandbox
    )?;
    outln!(
        "{:<20} {:>5} {:<16} {:<11} {:>10}",
        "SYSCALL",
        "NR",
        "ACTION",
        "SOURCE",
        "COUNT"
    )?;
    for c in &r.counts {
        let nr = c.nr.map_or_else(|| "?".to_owned(), |n| n.to_string());
        let name = field(c.syscall.as_deref().unwrap_or("(unknown)"));
        outln!(
            "{name:<20} {nr:>5} {:<16} {:<11} {:>10}",
            c.action,
            c.source,
            c.count
        )?;
    }
    let capacity = r.supervisor.as_ref().map_or(0, |s| s.state.capacity);
    outln!("recent entries (oldest first, at most {capacity} kept):")?;
    outln!(
        "{:<12} {:>7} {:<16} {:<16} {:<16} ARGS",
        "TIME (UTC)",
        "PID",
        "COMM",
        "SYSCALL",
        "ACTION"
    )?;
    for stored in &r.recent {
        outln!("{}", entry_line(&stored.entry))?;
    }
    print_drops(r.network_drops.as_ref())
}

fn print_drops(drops: Option<&NetworkDrops>) -> Result<(), OutputError> {
    let Some(d) = drops else {
        return outln!("network drops: none recorded (no network link)");
    };
    let reasons: Vec<String> = d
        .by_reason
        .iter()
        .map(|r| format!("{} {}", field(&r.reason), r.count))
        .collect();
    outln!(
        "network drops: {} logged ({}); exact per-rule counters: hearth sandbox net ID",
        d.total,
        if reasons.is_empty() {
            "none".to_owned()
        } else {
            reasons.join(", ")
        }
    )?;
    if d.by_destination.is_empty() {
        return Ok(());
    }
    outln!("{:<6} {:<40} {:>10}", "PROTO", "DESTINATION", "COUNT")?;
    for dest in &d.by_destination {
        let to = destination(&dest.address, dest.port);
        outln!("{:<6} {to:<40} {:>10}", protocol(dest.protocol), dest.count)?;
    }
    if d.other_destinations > 0 {
        outln!(
            "{:<6} {:<40} {:>10}",
            "",
            "(other destinations)",
            d.other_destinations
        )?;
    }
    outln!(
        "recent drops (oldest first, {} older ones evicted):",
        d.evicted
    )?;
    outln!(
        "{:<12} {:<8} {:<6} {:<22} DESTINATION",
        "TIME (UTC)",
        "REASON",
        "PROTO",
        "SOURCE"
    )?;
    for stored in &d.recent {
        outln!("{}", drop_line(stored))?;
    }
    Ok(())
}

fn drop_line(d: &StoredDrop) -> String {
    format!(
        "{:<12} {:<8} {:<6} {:<22} {}",
        clock(u64::try_from(d.time_ms).unwrap_or(0)),
        field(&d.reason),
        protocol(d.protocol),
        destination(&d.source, d.source_port),
        destination(&d.destination, d.port)
    )
}

fn destination(addr: &str, port: Option<u16>) -> String {
    let addr = field(addr);
    match port {
        Some(port) if addr.contains(':') => format!("[{addr}]:{port}"),
        Some(port) => format!("{addr}:{port}"),
        None => addr.into_owned(),
    }
}

fn protocol(nr: u8) -> String {
    match nr {
        1 => "icmp".to_owned(),
        6 => "tcp".to_owned(),
        17 => "udp".to_owned(),
        58 => "icmpv6".to_owned(),
        n => n.to_string(),
    }
}

fn entry_line(e: &AuditEntry) -> String {
    let pid = e.pid.map_or_else(|| "-".to_owned(), |p| p.to_string());
    let args: Vec<String> = e.args.iter().map(|a| format!("{a:#x}")).collect();
    format!(
        "{:<12} {pid:>7} {:<16} {:<16} {:<16} {}",
        clock(e.time_ms),
        field(e.comm.as_deref().unwrap_or("-")),
        field(e.syscall_name.as_deref().unwrap_or("(unknown)")),
        e.action.as_str(),
        args.join(",")
    )
}

/// `HH:MM:SS.mmm` of a Unix time in ms (UTC; the date is in the JSON).
fn clock(ms: u64) -> String {
    let secs = ms / 1000 % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use hearth_seccomp::audit::{AuditAction, AuditSource};

    use super::*;

    #[test]
    fn clock_formats_utc_time_of_day() {
        assert_eq!(super::clock(86_400_000 + 3_723_004), "01:02:03.004");
    }

    #[test]
    fn a_workloads_names_cannot_drive_the_terminal_or_forge_rows() {
        let mut entry = AuditEntry::new(
            hearth_seccomp::audit::native_arch(),
            272,
            [0; 6],
            AuditAction::DeniedEperm,
            AuditSource::OciNotify,
        );
        entry.comm = Some("\x1b[2J\u{9b}x\nfake row".to_owned());
        let line = entry_line(&entry);
        assert!(line.contains("\\x1b[2J\\u{9b}x\\nfake row"), "{line}");
        assert!(!line.chars().any(char::is_control), "{line:?}");

        let drop = StoredDrop {
            id: 1,
            time_ms: 0,
            reason: "bad\x1b]0;t\x07".to_owned(),
            protocol: 6,
            source: "10.0.0.2".to_owned(),
            source_port: Some(1),
            destination: "fe80::1\r".to_owned(),
            port: Some(80),
        };
        let line = drop_line(&drop);
        assert!(line.contains("bad\\x1b]0;t\\x07"), "{line}");
        assert!(line.contains("[fe80::1\\r]:80"), "{line}");
        assert!(!line.chars().any(char::is_control), "{line:?}");
    }
}
