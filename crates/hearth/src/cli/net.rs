//! `hearth sandbox net ID`: the network policy in force for a sandbox and its rule counters.

use hearth_net::{NetPolicy, RuleCounter, SlotAddrs};
use hearth_sandbox::SandboxId;
use serde::Serialize;

use super::escape::field;
use super::output::{self, outln, OutputError};
use crate::sandboxes::SandboxManager;

#[derive(Debug, Serialize)]
struct NetReport {
    id: SandboxId,
    policy: NetPolicy,
    /// `None` for `--net none`: the sandbox has only loopback.
    link: Option<LinkReport>,
    rules: Vec<RuleCounter>,
}

#[derive(Debug, Serialize)]
struct LinkReport {
    slot: u32,
    subnet: String,
    host_interface: String,
    host_address: String,
    sandbox_address: String,
    gateway_ports: Vec<u16>,
    dns_port: u16,
    nft_table: String,
}

pub async fn show(manager: &SandboxManager, raw_id: &str, json: bool) -> anyhow::Result<u8> {
    let id = SandboxId::parse(raw_id)?;
    let record = manager.get(&id).await?;
    let config = manager.firewall.config().clone();
    let slot = manager.store.net_slot(&id).await?;
    let link = slot
        .and_then(|slot| config.pool.slot(slot))
        .map(|addrs: SlotAddrs| {
            let names = id.names();
            LinkReport {
                slot: addrs.index,
                subnet: addrs.subnet.to_string(),
                host_interface: names.veth_host,
                host_address: addrs.host.to_string(),
                sandbox_address: addrs.sandbox.to_string(),
                gateway_ports: config.gateway_ports.clone(),
                dns_port: config.dns_port,
                nft_table: names.nft_table,
            }
        });
    let rules = if link.is_some() {
        manager.firewall_counters(&id).await?
    } else {
        Vec::new()
    };
    let report = NetReport {
        id,
        policy: record.spec.net,
        link,
        rules,
    };
    if json {
        output::print_json(&report)?;
    } else {
        print_report(&report)?;
    }
    Ok(0)
}

fn print_report(report: &NetReport) -> Result<(), OutputError> {
    let policy = &report.policy;
    outln!("sandbox   {}", report.id)?;
    outln!("mode      {}", policy.mode)?;
    for rule in &policy.allow {
        outln!(
            "allow     {}",
            field(&serde_json::to_string(rule).unwrap_or_default())
        )?;
    }
    if policy.allow_private {
        outln!("private   allowed for allowlisted destinations")?;
    }
    if let Some(rate) = &policy.rate {
        outln!("rate      {} bit/s each way", rate.bits_per_sec())?;
    }
    match &report.link {
        None => outln!("link      none (loopback only)")?,
        Some(link) => {
            outln!(
                "link      {} {} -> host {} (table inet {})",
                link.host_interface,
                link.sandbox_address,
                link.host_address,
                link.nft_table
            )?;
            outln!(
                "gateway   {}:{:?}, resolver {}:{}",
                link.host_address,
                link.gateway_ports,
                link.host_address,
                link.dns_port
            )?;
        }
    }
    if !report.rules.is_empty() {
        outln!("\n{:<10} {:>10} {:>12}  RULE", "CHAIN", "PACKETS", "BYTES")?;
        // Chains and comments as nft listed them.
        for rule in &report.rules {
            outln!(
                "{:<10} {:>10} {:>12}  {}",
                field(&rule.chain),
                rule.packets,
                rule.bytes,
                field(&rule.comment)
            )?;
        }
    }
    Ok(())
}
