//! The bounded per-sandbox log of firewall drops, the same shape as the seccomp audit: a ring of
//! the most recent drops, exact counters per reason, and counters per destination up to a bound
//! (the rest summed), so memory stays fixed whatever a sandbox sends.
//!
//! The nft rule counters stay the authority for totals (nflog may lose messages under a flood,
//! see [`super::nflog`]); this log adds the who-and-where of recent drops.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;

use serde::Serialize;

use super::nflog::DropEvent;
use super::ruleset::DropReason;

/// Recent drops kept unless configured otherwise.
pub const DEFAULT_CAPACITY: usize = 256;
/// Distinct (protocol, destination, port) counters kept; further destinations are only summed.
pub const MAX_DESTINATIONS: usize = 512;

/// Why a drop log cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DropLogError {
    #[error("drop log capacity must be at least 1")]
    ZeroCapacity,
}

/// One recorded drop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DropEntry {
    /// Position in the log (0 for the first drop ever recorded).
    pub seq: u64,
    pub at_unix_ms: u64,
    pub event: DropEvent,
}

/// A destination as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Destination {
    pub protocol: u8,
    pub addr: IpAddr,
    pub port: Option<u16>,
}

/// What `hearth sandbox audit` shows of the network side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DropSnapshot {
    pub by_reason: Vec<(DropReason, u64)>,
    /// Highest count first.
    pub by_destination: Vec<(Destination, u64)>,
    /// Oldest first.
    pub recent: Vec<DropEntry>,
    pub total: u64,
    pub evicted: u64,
    pub other_destinations: u64,
    pub capacity: usize,
}

/// The drop log of one sandbox.
#[derive(Debug)]
pub struct DropLog {
    capacity: usize,
    ring: VecDeque<DropEntry>,
    by_reason: BTreeMap<DropReason, u64>,
    by_destination: BTreeMap<Destination, u64>,
    other_destinations: u64,
    total: u64,
    evicted: u64,
}

impl DropLog {
    pub fn new(capacity: usize) -> Result<Self, DropLogError> {
        if capacity == 0 {
            return Err(DropLogError::ZeroCapacity);
        }
        Ok(Self {
            capacity,
            // Allocated once so a flood never reallocates.
            ring: VecDeque::with_capacity(capacity),
            by_reason: BTreeMap::new(),
            by_destination: BTreeMap::new(),
            other_destinations: 0,
            total: 0,
            evicted: 0,
        })
    }

    pub fn record(&mut self, event: DropEvent, at_unix_ms: u64) {
        let reason = self.by_reason.entry(event.reason).or_insert(0);
        *reason = reason.saturating_add(1);
        let dest = Destination {
            protocol: event.protocol,
            addr: event.dst,
            port: event.dst_port,
        };
        if let Some(count) = self.by_destination.get_mut(&dest) {
            *count = count.saturating_add(1);
        } else if self.by_destination.len() < MAX_DESTINATIONS {
            self.by_destination.insert(dest, 1);
        } else {
            self.other_destinations = self.other_destinations.saturating_add(1);
        }
        if self.ring.len() == self.capacity {
            self.ring.pop_front();
            self.evicted = self.evicted.saturating_add(1);
        }
        self.ring.push_back(DropEntry {
            seq: self.total,
            at_unix_ms,
            event,
        });
        self.total = self.total.saturating_add(1);
    }

    pub fn snapshot(&self) -> DropSnapshot {
        let mut by_destination: Vec<_> =
            self.by_destination.iter().map(|(d, n)| (*d, *n)).collect();
        by_destination.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        DropSnapshot {
            by_reason: self.by_reason.iter().map(|(r, n)| (*r, *n)).collect(),
            by_destination,
            recent: self.ring.iter().cloned().collect(),
            total: self.total,
            evicted: self.evicted,
            other_destinations: self.other_destinations,
            capacity: self.capacity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_id::SandboxId;
    use std::net::Ipv4Addr;

    fn event(last: u8, reason: DropReason) -> DropEvent {
        DropEvent {
            sandbox: SandboxId::parse("sb").unwrap(),
            reason,
            protocol: 6,
            src: IpAddr::from(Ipv4Addr::new(10, 231, 0, 2)),
            dst: IpAddr::from(Ipv4Addr::new(203, 0, 113, last)),
            src_port: Some(40000),
            dst_port: Some(443),
        }
    }

    #[test]
    fn ring_is_bounded_and_counters_stay_exact() {
        let mut log = DropLog::new(3).unwrap();
        for i in 0..10 {
            log.record(event(i % 2, DropReason::Egress), u64::from(i));
        }
        log.record(event(9, DropReason::Private), 10);
        let snap = log.snapshot();
        assert_eq!((snap.total, snap.evicted, snap.recent.len()), (11, 8, 3));
        assert_eq!(snap.recent.first().unwrap().seq, 8);
        assert_eq!(
            snap.by_reason,
            vec![(DropReason::Private, 1), (DropReason::Egress, 10)]
        );
        assert_eq!(snap.by_destination[0].1, 5);
        assert_eq!(snap.by_destination.len(), 3);
    }

    #[test]
    fn destinations_past_the_bound_are_summed() {
        let mut log = DropLog::new(1).unwrap();
        for i in 0..(MAX_DESTINATIONS + 10) {
            let mut e = event(0, DropReason::Egress);
            e.dst_port = Some(u16::try_from(i).unwrap());
            log.record(e, 0);
        }
        let snap = log.snapshot();
        assert_eq!(
            (snap.by_destination.len(), snap.other_destinations),
            (MAX_DESTINATIONS, 10)
        );
        assert!(DropLog::new(0).is_err());
    }
}
