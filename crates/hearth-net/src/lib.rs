//! Networking of a sandbox: its namespace, links, addresses and firewall.
//!
//! [`FirewallManager`] is the entry point: `setup` gives a sandbox a named network namespace
//! ([`netns`]), a veth pair with addresses from the pool ([`pool`]), an optional rate limit and a
//! default-deny nftables table built from its [`NetPolicy`] ([`ruleset`]); `teardown` and
//! `reconcile` take them away. Links, addresses, routes and qdiscs go through netlink in-process
//! ([`rtnl`]); nft batches through libnftables ([`nft`]). Drops are logged to nflog, read by
//! [`NflogReader`] into each sandbox's bounded [`DropLog`].

pub mod bench;
pub mod dns;
pub mod droplog;
pub mod firewall;
pub mod netns;
pub mod nflog;
pub mod nft;
pub mod policy;
pub mod pool;
mod reconcile;
pub mod rtnl;
pub mod ruleset;
pub mod tap;

pub use dns::{DnsError, ResolverConfig, ResolverHandle, SandboxResolver};
pub use droplog::{DropLog, DropSnapshot};
pub use firewall::{
    FirewallConfig, FirewallError, FirewallManager, RuleCounter, SandboxLink, SandboxNetwork,
};
pub use netns::NetError;
pub use nflog::{DropEvent, NflogError, NflogReader};
pub use nft::{NftBackend, NftError};
pub use policy::{AllowRule, NetMode, NetPolicy, PolicyError, Rate};
pub use pool::{AddressPool, MemorySlotStore, PoolError, SlotAddrs, SlotStore, SlotStoreError};
pub use reconcile::ReconcileReport;
pub use rtnl::LinkError;
pub use ruleset::DropReason;
pub use tap::TapError;
