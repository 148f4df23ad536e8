//! Sandbox addresses: a pool (default `10.231.0.0/16`) cut into equal slots, one per sandbox, and
//! the store that records which sandbox holds which slot.
//!
//! Slot `i` is the `i`-th subnet of the pool; its first usable address is the host side of the
//! veth (the sandbox's gateway and resolver) and its second the sandbox's `eth0`. The store is a
//! trait so the daemon can keep slots in its database, where they survive a restart; a slot held by
//! a sandbox that is still alive is never handed out again.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use ipnet::Ipv4Net;

use hearth_id::SandboxId;

/// The default pool.
pub const DEFAULT_POOL: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 231, 0, 0), 16);

/// The default slot size: a /30 holds the network address, the host side, the sandbox and the
/// broadcast address.
pub const DEFAULT_SLOT_PREFIX: u8 = 30;

/// Why a pool cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("address pool {pool} has host bits set; did you mean {}?", pool.trunc())]
    HostBits { pool: Ipv4Net },
    #[error("slot prefix /{slot} must be from /{} (the pool's own size) to /30 (two usable addresses)", pool.prefix_len())]
    SlotSize { pool: Ipv4Net, slot: u8 },
    #[error("address pool {pool} overlaps {denied}, which is always denied; pick a private range such as 10.231.0.0/16")]
    Reserved { pool: Ipv4Net, denied: Ipv4Net },
}

/// A pool of sandbox subnets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressPool {
    net: Ipv4Net,
    slot_prefix: u8,
}

/// The addresses of one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotAddrs {
    pub index: u32,
    pub subnet: Ipv4Net,
    /// Host side of the veth: the sandbox's default gateway, and where hearth's gateway and DNS
    /// resolver answer it.
    pub host: Ipv4Addr,
    /// The sandbox's own address (on `eth0`).
    pub sandbox: Ipv4Addr,
}

impl AddressPool {
    pub fn new(net: Ipv4Net, slot_prefix: u8) -> Result<Self, PoolError> {
        if net.trunc() != net {
            return Err(PoolError::HostBits { pool: net });
        }
        if slot_prefix < net.prefix_len() || slot_prefix > 30 {
            return Err(PoolError::SlotSize {
                pool: net,
                slot: slot_prefix,
            });
        }
        let overlap = super::policy::ALWAYS_DENIED_V4
            .iter()
            .find(|denied| denied.contains(&net) || net.contains(*denied));
        if let Some(denied) = overlap {
            return Err(PoolError::Reserved {
                pool: net,
                denied: *denied,
            });
        }
        Ok(Self { net, slot_prefix })
    }

    pub fn net(&self) -> Ipv4Net {
        self.net
    }

    pub fn slot_prefix(&self) -> u8 {
        self.slot_prefix
    }

    /// How many slots the pool holds.
    pub fn capacity(&self) -> u32 {
        let bits = u32::from(self.slot_prefix - self.net.prefix_len());
        // A /0 pool of /32s would need 2^32; /30 slots cap it at 2^30.
        1u32.checked_shl(bits).unwrap_or(u32::MAX)
    }

    /// The addresses of slot `index`, or `None` past the end of the pool.
    pub fn slot(&self, index: u32) -> Option<SlotAddrs> {
        if index >= self.capacity() {
            return None;
        }
        let size = 1u32 << (32 - u32::from(self.slot_prefix));
        let base = u32::from(self.net.network()) + index * size;
        let subnet = Ipv4Net::new(Ipv4Addr::from(base), self.slot_prefix).ok()?;
        Some(SlotAddrs {
            index,
            subnet,
            host: Ipv4Addr::from(base + 1),
            sandbox: Ipv4Addr::from(base + 2),
        })
    }

    /// The slot an address of the pool belongs to.
    pub fn slot_of(&self, addr: Ipv4Addr) -> Option<u32> {
        if !self.net.contains(&addr) {
            return None;
        }
        let offset = u32::from(addr) - u32::from(self.net.network());
        Some(offset >> (32 - u32::from(self.slot_prefix)))
    }
}

impl Default for AddressPool {
    fn default() -> Self {
        Self {
            net: DEFAULT_POOL,
            slot_prefix: DEFAULT_SLOT_PREFIX,
        }
    }
}

/// A failure of the slot store's backing storage (a database, usually), kept with its cause.
#[derive(Debug, thiserror::Error)]
#[error("slot store: cannot {op}: {source}")]
pub struct SlotStoreError {
    pub op: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Records which sandbox holds which slot. Implementations must make `claim` atomic (one
/// transaction), since several sandboxes may be set up at once.
pub trait SlotStore: Send + Sync + fmt::Debug {
    /// The slot of `id`: the one already recorded for it, else the lowest index below `capacity`
    /// that is neither recorded for another sandbox nor in `busy` (slots seen in use on the host),
    /// now recorded for `id`. `None` when every slot is taken.
    fn claim(
        &self,
        id: &SandboxId,
        capacity: u32,
        busy: &BTreeSet<u32>,
    ) -> Result<Option<u32>, SlotStoreError>;

    /// Forgets the slot of `id`; a sandbox without one is not an error.
    fn release(&self, id: &SandboxId) -> Result<(), SlotStoreError>;

    /// Every recorded slot.
    fn list(&self) -> Result<Vec<(SandboxId, u32)>, SlotStoreError>;
}

/// A [`SlotStore`] in memory: for tests, and for a daemon that reconciles every sandbox away at
/// start-up anyway.
#[derive(Debug, Default)]
pub struct MemorySlotStore {
    slots: Mutex<BTreeMap<SandboxId, u32>>,
}

impl MemorySlotStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<SandboxId, u32>> {
        // The map stays consistent even if a holder panicked: every update is a single insert.
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl SlotStore for MemorySlotStore {
    fn claim(
        &self,
        id: &SandboxId,
        capacity: u32,
        busy: &BTreeSet<u32>,
    ) -> Result<Option<u32>, SlotStoreError> {
        let mut slots = self.lock();
        if let Some(slot) = slots.get(id) {
            return Ok(Some(*slot));
        }
        let taken: BTreeSet<u32> = slots
            .values()
            .copied()
            .chain(busy.iter().copied())
            .collect();
        let free = (0..capacity).find(|slot| !taken.contains(slot));
        if let Some(slot) = free {
            slots.insert(id.clone(), slot);
        }
        Ok(free)
    }

    fn release(&self, id: &SandboxId) -> Result<(), SlotStoreError> {
        self.lock().remove(id);
        Ok(())
    }

    fn list(&self) -> Result<Vec<(SandboxId, u32)>, SlotStoreError> {
        Ok(self
            .lock()
            .iter()
            .map(|(id, slot)| (id.clone(), *slot))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SandboxId {
        SandboxId::parse(s).unwrap()
    }

    #[test]
    fn slots_cut_the_pool_into_equal_subnets() {
        let pool = AddressPool::default();
        assert_eq!(pool.capacity(), 16384);
        let first = pool.slot(0).unwrap();
        assert_eq!(first.subnet.to_string(), "10.231.0.0/30");
        assert_eq!(
            (first.host, first.sandbox),
            (Ipv4Addr::new(10, 231, 0, 1), Ipv4Addr::new(10, 231, 0, 2))
        );
        let last = pool.slot(16383).unwrap();
        assert_eq!(last.subnet.to_string(), "10.231.255.252/30");
        assert!(pool.slot(16384).is_none());
        assert_eq!(pool.slot_of(Ipv4Addr::new(10, 231, 1, 6)), Some(65));
        assert_eq!(pool.slot_of(Ipv4Addr::new(10, 232, 0, 1)), None);

        let wide = AddressPool::new("10.231.0.0/24".parse().unwrap(), 29).unwrap();
        assert_eq!(wide.capacity(), 32);
        assert_eq!(wide.slot(1).unwrap().sandbox, Ipv4Addr::new(10, 231, 0, 10));
    }

    #[test]
    fn bad_pools_are_rejected_with_the_reason() {
        let err = AddressPool::new("10.231.0.1/16".parse().unwrap(), 30).unwrap_err();
        assert!(
            err.to_string().contains("did you mean 10.231.0.0/16"),
            "{err}"
        );
        let err = AddressPool::new("10.231.0.0/16".parse().unwrap(), 31).unwrap_err();
        assert!(matches!(err, PoolError::SlotSize { .. }), "{err}");
        let err = AddressPool::new("169.254.0.0/16".parse().unwrap(), 30).unwrap_err();
        assert!(err.to_string().contains("always denied"), "{err}");
    }

    #[test]
    fn memory_store_keeps_slots_and_skips_busy_ones() {
        let store = MemorySlotStore::new();
        let busy = BTreeSet::from([0, 2]);
        assert_eq!(store.claim(&id("a"), 4, &busy).unwrap(), Some(1));
        assert_eq!(
            store.claim(&id("a"), 4, &busy).unwrap(),
            Some(1),
            "claim is idempotent"
        );
        assert_eq!(store.claim(&id("b"), 4, &busy).unwrap(), Some(3));
        assert_eq!(
            store.claim(&id("c"), 4, &busy).unwrap(),
            None,
            "pool exhausted"
        );
        store.release(&id("a")).unwrap();
        store.release(&id("a")).unwrap();
        assert_eq!(store.claim(&id("c"), 4, &busy).unwrap(), Some(1));
        assert_eq!(store.list().unwrap(), vec![(id("b"), 3), (id("c"), 1)]);
    }
}
