//! `FirewallManager`: gives each sandbox its namespace, veth pair, addresses, routes and nft
//! table, and takes them all away again.
//!
//! Links, addresses and routes go through netlink in-process ([`super::rtnl`]); the ruleset is one
//! nft transaction ([`super::ruleset`], run through libnftables when it loads). Every object is
//! named by [`SandboxId::names`], so teardown and reconciliation find them from the id alone.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::Ipv4Net;
use nix::errno::Errno;
use serde::{Deserialize, Serialize};

use super::netns::{self, NetError};
use super::nft::{Nft, NftBackend, NftError};
use super::policy::{NetMode, NetPolicy, PolicyError, Rate};
use super::pool::{AddressPool, PoolError, SlotAddrs, SlotStore, SlotStoreError};
use super::rtnl::{LinkError, Rtnl};
use super::ruleset::{self, DropReason, RulesetSpec};
use hearth_id::{SandboxId, SandboxNames};

/// The name of the sandbox's side of its veth pair, inside its namespace.
pub const SANDBOX_IF: &str = "eth0";

/// The first nflog group: the sandbox in pool slot N logs its drops to group `base + N`, so each
/// sandbox's supervisor reads its own group (the kernel lets one socket bind a group, and hearth
/// has no daemon to share one reader). 20000 leaves room for the 16384 slots of the default pool.
pub const DEFAULT_LOG_GROUP: u16 = 20000;

/// The port hearth's LLM gateway listens on at each sandbox's host-side address (the daemon
/// should set [`FirewallConfig::gateway_ports`] to what it really uses). Below 1024 on
/// purpose: a local user without privileges cannot take it (or squat on it with a wildcard
/// listener and be what gateway-only sandboxes reach), unless the host lowered
/// `net.ipv4.ip_unprivileged_port_start`, which `hearth doctor` checks.
pub const DEFAULT_GATEWAY_PORT: u16 = 418;

/// Prefix of the alias hearth puts on its host-side links: `hearth:<sandbox id>`.
pub const LINK_ALIAS_PREFIX: &str = "hearth:";

/// Host-wide firewall settings.
#[derive(Debug, Clone)]
pub struct FirewallConfig {
    pub pool: AddressPool,
    /// TCP ports of hearth's gateway on each sandbox's host-side address; always allowed.
    pub gateway_ports: Vec<u16>,
    /// Port of hearth's DNS resolver on the host-side address (TCP and UDP); always allowed.
    pub dns_port: u16,
    /// The nflog group of slot 0; see [`DEFAULT_LOG_GROUP`].
    pub log_group: u16,
    pub nft: NftBackend,
}

impl FirewallConfig {
    /// The nflog group of the sandbox in `slot` ([`FirewallManager::new`] checked they all fit).
    pub fn log_group_of(&self, slot: u32) -> u16 {
        u16::try_from(u32::from(self.log_group) + slot).unwrap_or(u16::MAX)
    }
}

impl Default for FirewallConfig {
    fn default() -> Self {
        Self {
            pool: AddressPool::default(),
            gateway_ports: vec![DEFAULT_GATEWAY_PORT],
            dns_port: 53,
            log_group: DEFAULT_LOG_GROUP,
            nft: NftBackend::Auto,
        }
    }
}

/// Why setting up, tearing down or reconciling sandbox networking failed.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Netns(#[from] NetError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error(transparent)]
    SlotStore(#[from] SlotStoreError),
    #[error("address pool {pool} is exhausted: all {capacity} slots are in use")]
    PoolExhausted { pool: Ipv4Net, capacity: u32 },
    #[error("slot {slot} of sandbox {id} lies outside the address pool {pool}")]
    SlotOutOfRange {
        id: SandboxId,
        slot: u32,
        pool: Ipv4Net,
    },
    #[error(
        "nflog groups {base}..{base}+{capacity} do not fit in 16 bits: lower the log group or \
         use a smaller address pool"
    )]
    LogGroupRange { base: u16, capacity: u32 },
    #[error("{SANDBOX_IF} of sandbox {id} vanished from {} during setup", path.display())]
    PeerMissing { id: SandboxId, path: PathBuf },
    #[error("cannot write {}: {source}", path.display())]
    Sysctl { path: PathBuf, source: io::Error },
    #[error("tearing down the network of sandbox {id} failed: {}", join(errors))]
    Teardown {
        id: SandboxId,
        errors: Vec<FirewallError>,
    },
    #[error("reconciling sandbox networking failed: {}", join(errors))]
    Reconcile { errors: Vec<FirewallError> },
}

fn join(errors: &[FirewallError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// What a sandbox got: hand `netns` to the runtime; `link` tells the sandbox its addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SandboxNetwork {
    pub netns: PathBuf,
    pub mode: NetMode,
    /// `None` with [`NetMode::None`]: the namespace has only `lo`.
    pub link: Option<SandboxLink>,
}

/// The veth link of a sandbox and the addresses on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxLink {
    pub slot: u32,
    /// The nflog group this sandbox's drop rules log to.
    pub log_group: u16,
    pub host_if: String,
    pub sandbox_if: String,
    pub subnet: Ipv4Net,
    /// The sandbox's default gateway, where hearth's gateway and resolver answer it.
    pub host_addr: Ipv4Addr,
    pub sandbox_addr: Ipv4Addr,
    pub nft_table: String,
    pub gateway_ports: Vec<u16>,
    pub dns_port: u16,
}

impl SandboxLink {
    /// What the sandbox's `/etc/resolv.conf` should name.
    pub fn resolver(&self) -> SocketAddr {
        SocketAddr::from((self.host_addr, self.dns_port))
    }
}

/// One rule of a sandbox's table with its counter, as `nft list table` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleCounter {
    pub chain: String,
    pub comment: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Sets up and tears down sandbox networking. Cheap to share: every method takes `&self`.
#[derive(Debug)]
pub struct FirewallManager {
    config: FirewallConfig,
    store: Arc<dyn SlotStore>,
    pub(super) nft: Nft,
}

impl FirewallManager {
    pub fn new(config: FirewallConfig, store: Arc<dyn SlotStore>) -> Result<Self, FirewallError> {
        // Checked once here so no slot can ever get a group that wraps into another's.
        let capacity = config.pool.capacity();
        if u32::from(config.log_group) + capacity > u32::from(u16::MAX) + 1 {
            return Err(FirewallError::LogGroupRange {
                base: config.log_group,
                capacity,
            });
        }
        let nft = Nft::new(&config.nft)?;
        Ok(Self { config, store, nft })
    }

    pub fn config(&self) -> &FirewallConfig {
        &self.config
    }

    /// Whether nft batches run in-process (libnftables) rather than through the `nft` command.
    pub fn nft_in_process(&self) -> bool {
        self.nft.is_library()
    }

    /// Gives sandbox `id` its network as `policy` says. Idempotent: a second call converges on the
    /// same objects (the ruleset is replaced atomically). On failure everything of `id` is removed
    /// again, so there is never a half-made namespace, veth or table.
    pub fn setup(
        &self,
        id: &SandboxId,
        policy: &NetPolicy,
    ) -> Result<SandboxNetwork, FirewallError> {
        policy.validate()?;
        let names = id.names();
        match self.try_setup(id, &names, policy) {
            Ok(network) => Ok(network),
            Err(err) => {
                if let Err(cleanup) = self.teardown(id) {
                    tracing::warn!(sandbox = %id, error = %cleanup, "cleanup after a failed network setup failed");
                }
                Err(err)
            }
        }
    }

    fn try_setup(
        &self,
        id: &SandboxId,
        names: &SandboxNames,
        policy: &NetPolicy,
    ) -> Result<SandboxNetwork, FirewallError> {
        let (ns_path, inside) = netns::create_with(&names.netns, |path| {
            if policy.mode == NetMode::None {
                return Ok(None);
            }
            // No IPv6 inside at all: no link-local address, no router solicitations.
            write_sysctl_if_present(Path::new("/proc/sys/net/ipv6/conf/all/disable_ipv6"), "1")?;
            write_sysctl_if_present(
                Path::new("/proc/sys/net/ipv6/conf/default/disable_ipv6"),
                "1",
            )?;
            Ok::<_, FirewallError>(Some(Rtnl::open(&path.display().to_string())?))
        })?;
        let Some(mut inside) = inside else {
            // A previous setup with another mode may have left a link; `none` means none.
            let mut errors = Vec::new();
            self.remove_link_and_table(names, LinkRemoval::Delete, &mut errors);
            if !errors.is_empty() {
                return Err(FirewallError::Teardown {
                    id: id.clone(),
                    errors,
                });
            }
            self.store.release(id)?;
            return Ok(SandboxNetwork {
                netns: ns_path,
                mode: policy.mode,
                link: None,
            });
        };
        let mut host = Rtnl::open("host")?;
        let addrs = self.claim_slot(id, names, &mut host)?;
        let link = self.make_link(id, names, &ns_path, &mut host, &mut inside, &addrs)?;
        set_rate(&mut host, &mut inside, names, &link, policy.rate)?;
        if policy.needs_forwarding() {
            enable_ip_forward()?;
        }
        let spec = RulesetSpec {
            table: &names.nft_table,
            veth_host: &names.veth_host,
            id: id.as_str(),
            host: addrs.host,
            sandbox: addrs.sandbox,
            pool: self.config.pool.net(),
            gateway_ports: &self.config.gateway_ports,
            dns_port: self.config.dns_port,
            log_group: self.config.log_group_of(addrs.index),
            policy,
        };
        self.nft.apply(
            &ruleset::install(&spec),
            &format!("installing table inet {}", names.nft_table),
        )?;
        let link = SandboxLink {
            slot: addrs.index,
            log_group: self.config.log_group_of(addrs.index),
            host_if: names.veth_host.clone(),
            sandbox_if: SANDBOX_IF.to_owned(),
            subnet: addrs.subnet,
            host_addr: addrs.host,
            sandbox_addr: addrs.sandbox,
            nft_table: names.nft_table.clone(),
            gateway_ports: self.config.gateway_ports.clone(),
            dns_port: self.config.dns_port,
        };
        Ok(SandboxNetwork {
            netns: ns_path,
            mode: policy.mode,
            link: Some(link),
        })
    }

    /// The slot of `id`; slots whose addresses are still on some host link (a sandbox the store
    /// has forgotten, say) are skipped as busy.
    fn claim_slot(
        &self,
        id: &SandboxId,
        names: &SandboxNames,
        host: &mut Rtnl,
    ) -> Result<SlotAddrs, FirewallError> {
        let pool = &self.config.pool;
        let own = host.link_index(&names.veth_host)?;
        let busy: BTreeSet<u32> = host
            .ipv4_addresses()?
            .into_iter()
            .filter(|(index, _)| Some(*index) != own)
            .filter_map(|(_, addr)| pool.slot_of(addr))
            .collect();
        let capacity = pool.capacity();
        let slot = self
            .store
            .claim(id, capacity, &busy)?
            .ok_or(FirewallError::PoolExhausted {
                pool: pool.net(),
                capacity,
            })?;
        pool.slot(slot)
            .ok_or_else(|| FirewallError::SlotOutOfRange {
                id: id.clone(),
                slot,
                pool: pool.net(),
            })
    }

    /// The veth pair, its addresses and the sandbox's default route.
    fn make_link(
        &self,
        id: &SandboxId,
        names: &SandboxNames,
        ns_path: &Path,
        host: &mut Rtnl,
        inside: &mut Rtnl,
        addrs: &SlotAddrs,
    ) -> Result<MadeLink, FirewallError> {
        let ns_fd = netns::open_ns(ns_path)?;
        let mut reused = false;
        match host.create_veth(&names.veth_host, SANDBOX_IF, ns_fd.as_fd()) {
            Ok(()) => {}
            Err(err) if err.errno() == Some(Errno::EEXIST) => {
                // An earlier setup's pair is reused; anything else by these names is replaced.
                reused = inside.link_index(SANDBOX_IF)?.is_some()
                    && host.link_index(&names.veth_host)?.is_some();
                if !reused {
                    host.delete_link(&names.veth_host)?;
                    inside.delete_link(SANDBOX_IF)?;
                    host.create_veth(&names.veth_host, SANDBOX_IF, ns_fd.as_fd())?;
                }
            }
            Err(err) => return Err(err.into()),
        }
        let missing = || FirewallError::PeerMissing {
            id: id.clone(),
            path: ns_path.to_owned(),
        };
        let host_index = host.link_index(&names.veth_host)?.ok_or_else(missing)?;
        if !reused {
            // Before the link comes up, so the host side never sends IPv6 neighbour discovery
            // into the sandbox (its drops would only be noise in the drop log).
            let knob = PathBuf::from(format!(
                "/proc/sys/net/ipv6/conf/{}/disable_ipv6",
                names.veth_host
            ));
            write_sysctl_if_present(&knob, "1")?;
        }
        let alias = format!("{LINK_ALIAS_PREFIX}{id}");
        host.set_up(host_index, &names.veth_host, Some(&alias))?;
        let prefix = addrs.subnet.prefix_len();
        host.replace_address(host_index, &names.veth_host, addrs.host, prefix)?;
        let eth0 = inside.link_index(SANDBOX_IF)?.ok_or_else(missing)?;
        inside.set_up(eth0, SANDBOX_IF, None)?;
        inside.replace_address(eth0, SANDBOX_IF, addrs.sandbox, prefix)?;
        inside.replace_default_route(eth0, addrs.host)?;
        Ok(MadeLink {
            host_index,
            eth0,
            reused,
        })
    }

    /// Removes everything sandbox `id` owns: table, veth, namespace and slot. Missing objects are
    /// fine; every step runs even if an earlier one failed, and all failures are reported.
    ///
    /// The veth pair is taken down (a down veth passes nothing either way) and then goes with the
    /// namespace: the kernel deletes it when the namespace's last user is gone, in the background
    /// (10-30 ms here). Deleting it here instead would wait out the kernel's RCU barrier for
    /// device removal, 20-30 ms here, and dominate the whole setup + teardown. The host side
    /// keeps its address until then, so its slot counts as busy and is not handed out early. If
    /// a process still holds the namespace, the pair stays, down, until [`Self::reconcile`].
    pub fn teardown(&self, id: &SandboxId) -> Result<(), FirewallError> {
        let names = id.names();
        let mut errors = Vec::new();
        self.remove_link_and_table(&names, LinkRemoval::TakeDown, &mut errors);
        if let Err(err) = netns::remove(&names.netns) {
            errors.push(err.into());
        }
        if let Err(err) = self.store.release(id) {
            errors.push(err.into());
        }
        match errors.len() {
            0 => Ok(()),
            _ => Err(FirewallError::Teardown {
                id: id.clone(),
                errors,
            }),
        }
    }

    /// Disables or deletes the veth, then deletes the table (in that order, so the link is never
    /// up without its rules), adding failures to `errors`.
    fn remove_link_and_table(
        &self,
        names: &SandboxNames,
        how: LinkRemoval,
        errors: &mut Vec<FirewallError>,
    ) {
        let link = Rtnl::open("host").and_then(|mut host| match how {
            LinkRemoval::Delete => host.delete_link(&names.veth_host).map(drop),
            LinkRemoval::TakeDown => match host.link_index(&names.veth_host)? {
                Some(index) => host.set_down(index, &names.veth_host),
                None => Ok(()),
            },
        });
        if let Err(err) = link {
            errors.push(err.into());
        }
        let what = format!("deleting table inet {}", names.nft_table);
        if let Err(err) = self.nft.apply(&ruleset::remove(&names.nft_table), &what) {
            errors.push(err.into());
        }
    }

    /// The rules of sandbox `id`'s table with their counters.
    pub fn counters(&self, id: &SandboxId) -> Result<Vec<RuleCounter>, FirewallError> {
        let table = id.names().nft_table;
        let listing = self.nft.query(
            &format!("list table inet {table}"),
            &format!("listing table inet {table}"),
        )?;
        let rules = super::nft::objects(&listing, "rule").map(|rule| {
            let counter = rule["expr"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|stmt| stmt.get("counter"));
            RuleCounter {
                chain: rule["chain"].as_str().unwrap_or_default().to_owned(),
                comment: rule["comment"].as_str().unwrap_or_default().to_owned(),
                packets: counter.and_then(|c| c["packets"].as_u64()).unwrap_or(0),
                bytes: counter.and_then(|c| c["bytes"].as_u64()).unwrap_or(0),
            }
        });
        Ok(rules.collect())
    }

    /// Packets of sandbox `id` dropped for `reason` so far.
    pub fn dropped(&self, id: &SandboxId, reason: DropReason) -> Result<u64, FirewallError> {
        let comment = reason.comment();
        Ok(self
            .counters(id)?
            .iter()
            .filter(|c| c.comment == comment)
            .map(|c| c.packets)
            .sum())
    }

    pub(super) fn store(&self) -> &dyn SlotStore {
        self.store.as_ref()
    }
}

/// The two ends of a sandbox's veth pair, by index.
#[derive(Debug, Clone, Copy)]
struct MadeLink {
    host_index: u32,
    eth0: u32,
    /// An earlier setup's pair was kept.
    reused: bool,
}

/// Shapes both directions to `rate`: the host side's egress is what the sandbox receives, `eth0`'s
/// egress what it sends. Without a rate, a reused pair loses any earlier limit.
fn set_rate(
    host: &mut Rtnl,
    inside: &mut Rtnl,
    names: &SandboxNames,
    link: &MadeLink,
    rate: Option<Rate>,
) -> Result<(), FirewallError> {
    match rate {
        Some(rate) => {
            host.replace_tbf(link.host_index, &names.veth_host, rate)?;
            inside.replace_tbf(link.eth0, SANDBOX_IF, rate)?;
        }
        None if link.reused => {
            host.delete_root_qdisc(link.host_index, &names.veth_host)?;
            inside.delete_root_qdisc(link.eth0, SANDBOX_IF)?;
        }
        None => {}
    }
    Ok(())
}

/// How teardown gets rid of a veth pair.
#[derive(Debug, Clone, Copy)]
enum LinkRemoval {
    /// Delete it now (the namespace stays, as with a switch to [`NetMode::None`]).
    Delete,
    /// Take it down; it goes with its namespace.
    TakeDown,
}

/// Turns on IPv4 forwarding, which sandbox egress past the host needs. It is host-wide and left
/// on at teardown: other sandboxes (or other software) may rely on it by then.
fn enable_ip_forward() -> Result<(), FirewallError> {
    let path = Path::new("/proc/sys/net/ipv4/ip_forward");
    let current = fs::read_to_string(path).map_err(|source| FirewallError::Sysctl {
        path: path.to_owned(),
        source,
    })?;
    if current.trim() != "1" {
        fs::write(path, "1").map_err(|source| FirewallError::Sysctl {
            path: path.to_owned(),
            source,
        })?;
        tracing::info!("enabled net.ipv4.ip_forward for sandbox egress");
    }
    Ok(())
}

/// Writes a sysctl; a kernel without that knob (no IPv6 support) is not an error.
fn write_sysctl_if_present(path: &Path, value: &str) -> Result<(), FirewallError> {
    match fs::write(path, value) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(FirewallError::Sysctl {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manager_can_be_shared_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<FirewallManager>();
    }

    #[test]
    fn teardown_error_lists_every_failure() {
        let id = SandboxId::parse("sb-x").unwrap();
        let errors = vec![
            FirewallError::PoolExhausted {
                pool: "10.0.0.0/30".parse().unwrap(),
                capacity: 1,
            },
            FirewallError::Sysctl {
                path: "/proc/x".into(),
                source: io::Error::from(io::ErrorKind::PermissionDenied),
            },
        ];
        let msg = FirewallError::Teardown { id, errors }.to_string();
        assert!(
            msg.contains("sb-x") && msg.contains("exhausted") && msg.contains("/proc/x"),
            "{msg}"
        );
    }
}
