//! The bounded audit of refused system calls.
//!
//! Every sandbox owns one [`SeccompAuditLog`]: a ring of the most recent entries, exact counters per
//! system call and an aggregator that buckets counts per (syscall, action, source, time window) for
//! the store. Memory is bounded whatever the workload does: the ring holds at most `capacity`
//! entries, the counters hold at most [`MAX_DISTINCT_SYSCALLS`] keys (the rest are summed in
//! `other_syscalls`) and the aggregator at most [`window::MAX_PENDING_BUCKETS`] buckets between two
//! drains.

mod entry;
mod vmm;
pub mod window;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use entry::{
    native_arch, now_unix_ms, syscall_name, AuditAction, AuditEntry, AuditSource, SyscallKey,
    AUDIT_ARCH_AARCH64, AUDIT_ARCH_I386, AUDIT_ARCH_X86_64,
};
pub use vmm::{parse_bad_syscall, VmmFault, FIRECRACKER_BAD_SYSCALL_EXIT};
pub use window::{AuditWindow, WindowAggregator};

/// How many recent entries a log keeps unless configured otherwise.
pub const DEFAULT_CAPACITY: usize = 1024;
/// The bound on distinct (arch, number) counter keys. Real syscall tables have fewer than 500
/// entries per architecture; anything past this comes from made-up numbers and is only summed.
pub const MAX_DISTINCT_SYSCALLS: usize = 1024;
/// The default width of the persistence windows.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// Errors of the audit module.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A ring that can hold nothing would make the audit silently useless.
    #[error("audit ring capacity must be at least 1")]
    ZeroCapacity,
    /// A zero-width window would divide by zero when bucketing.
    #[error("audit window must be at least 1 ms, got {0:?}")]
    ZeroWindow(Duration),
}

/// The size knobs of a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditConfig {
    /// How many recent entries the ring keeps.
    pub capacity: usize,
    /// The width of the windows [`SeccompAuditLog::drain_windows`] reports.
    pub window: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_CAPACITY,
            window: DEFAULT_WINDOW,
        }
    }
}

/// One line of the per-syscall summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyscallCount {
    /// The syscall's name on its architecture, when the table knows it.
    pub name: Option<String>,
    /// The syscall number as the filter saw it.
    pub nr: i64,
    /// The `AUDIT_ARCH_*` value the call was made with.
    pub arch: u32,
    /// Exact number of recorded calls.
    pub count: u64,
}

/// What the CLI and the API show: summary first, then the recent entries (oldest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditSnapshot {
    /// Per-syscall counts, highest first.
    pub counts_by_syscall: Vec<SyscallCount>,
    /// The ring's content, oldest first.
    pub recent: Vec<AuditEntry>,
    /// Every record ever made, including those no longer in the ring.
    pub total: u64,
    /// Records that fell out of the ring.
    pub evicted: u64,
    /// Records whose syscall key arrived after [`MAX_DISTINCT_SYSCALLS`] keys were taken.
    pub other_syscalls: u64,
    /// Firecracker exits with status 148 whose log did not name the syscall.
    pub unidentified_vmm_faults: u64,
    /// The ring's capacity, so a reader can tell whether `recent` is complete.
    pub capacity: usize,
}

/// One page of a log's entries from a given `seq` on: what `hearth-guest` answers on
/// `GET /v1/audit?since=SEQ` and its host-side supervisor copies into the sandbox's audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPage {
    /// Every record the log ever made; the reader is caught up when it has seen `total`.
    pub total: u64,
    /// Entries with `seq >= since`, oldest first, at most the requested limit. When the first
    /// one's `seq` is past `since`, the ones between fell out of the ring unread.
    pub entries: Vec<AuditEntry>,
}

impl AuditPage {
    /// How many records between `since` and this page were evicted before they were read.
    pub fn missed_since(&self, since: u64) -> u64 {
        let first = self.entries.first().map_or(self.total, |e| e.seq);
        first.saturating_sub(since)
    }

    /// The `since` to ask for next.
    pub fn next_since(&self, since: u64) -> u64 {
        self.entries
            .last()
            .map_or(self.total.max(since), |e| e.seq + 1)
    }
}

/// The audit of one sandbox. Not thread-safe by itself; share it as [`SharedAuditLog`].
#[derive(Debug)]
pub struct SeccompAuditLog {
    capacity: usize,
    ring: VecDeque<AuditEntry>,
    counts: BTreeMap<SyscallKey, u64>,
    other_syscalls: u64,
    unidentified_vmm_faults: u64,
    total: u64,
    evicted: u64,
    windows: WindowAggregator,
}

impl SeccompAuditLog {
    /// A log with the given bounds.
    pub fn new(config: AuditConfig) -> Result<Self, AuditError> {
        if config.capacity == 0 {
            return Err(AuditError::ZeroCapacity);
        }
        Ok(Self {
            capacity: config.capacity,
            // Allocated once so a flood never reallocates.
            ring: VecDeque::with_capacity(config.capacity),
            counts: BTreeMap::new(),
            other_syscalls: 0,
            unidentified_vmm_faults: 0,
            total: 0,
            evicted: 0,
            windows: WindowAggregator::new(config.window)?,
        })
    }

    /// Records one refused call. The entry's `seq` is overwritten with its position in the log.
    pub fn record(&mut self, mut entry: AuditEntry) {
        entry.seq = self.total;
        self.total = self.total.saturating_add(1);
        let counted = self.count_key(entry.key());
        self.windows.add(&entry, counted);
        if self.ring.len() == self.capacity {
            self.ring.pop_front();
            self.evicted = self.evicted.saturating_add(1);
        }
        self.ring.push_back(entry);
    }

    /// Bumps the key's counter; false when the key bound was hit and only `other_syscalls` grew.
    fn count_key(&mut self, key: SyscallKey) -> bool {
        if let Some(count) = self.counts.get_mut(&key) {
            *count = count.saturating_add(1);
        } else if self.counts.len() < MAX_DISTINCT_SYSCALLS {
            self.counts.insert(key, 1);
        } else {
            self.other_syscalls = self.other_syscalls.saturating_add(1);
            return false;
        }
        true
    }

    /// Records what a Firecracker VMM's exit says about a seccomp fault; see [`vmm`].
    pub fn record_vmm_fault(&mut self, exit_status: i32, log: &str) -> VmmFault {
        let fault = VmmFault::from_exit(exit_status, log);
        match fault {
            VmmFault::Syscall(nr) => self.record(AuditEntry::vmm_fault(nr)),
            VmmFault::Unidentified => {
                // Not a ring entry (no syscall to show), but it is persisted and counted so the
                // windows still sum to `total`.
                self.total = self.total.saturating_add(1);
                self.unidentified_vmm_faults = self.unidentified_vmm_faults.saturating_add(1);
                self.windows.add_unidentified_vmm_fault(now_unix_ms());
            }
            VmmFault::None => {}
        }
        fault
    }

    /// The exact count for one syscall key (0 if never seen or past the key bound).
    pub fn count(&self, key: SyscallKey) -> u64 {
        self.counts.get(&key).copied().unwrap_or(0)
    }

    /// The count for a native-architecture syscall number.
    pub fn count_native(&self, nr: i64) -> u64 {
        self.count(SyscallKey::native(nr))
    }

    /// Every record ever made.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Records that fell out of the ring.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// How many entries the ring holds now (never more than the capacity).
    pub fn ring_len(&self) -> usize {
        self.ring.len()
    }

    /// The ring's capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Entries still in the ring whose `seq` is at least `seq`, oldest first: `--follow` polls
    /// this with the last seq it printed plus one.
    pub fn recent_since(&self, seq: u64) -> Vec<AuditEntry> {
        self.ring.iter().filter(|e| e.seq >= seq).cloned().collect()
    }

    /// At most `limit` entries with `seq >= since`, oldest first, and the total.
    pub fn page_since(&self, since: u64, limit: usize) -> AuditPage {
        // The ring is in seq order (not always consecutive: VMM faults without a syscall take a
        // seq but no entry), so the start is a binary search.
        let skip = self.ring.partition_point(|e| e.seq < since);
        AuditPage {
            total: self.total,
            entries: self.ring.iter().skip(skip).take(limit).cloned().collect(),
        }
    }

    /// The summary and the ring.
    pub fn snapshot(&self) -> AuditSnapshot {
        let mut counts_by_syscall: Vec<SyscallCount> = self
            .counts
            .iter()
            .map(|(key, &count)| SyscallCount {
                name: syscall_name(key.arch, key.nr).map(str::to_owned),
                nr: key.nr,
                arch: key.arch,
                count,
            })
            .collect();
        counts_by_syscall.sort_by(|a, b| b.count.cmp(&a.count).then(a.nr.cmp(&b.nr)));
        AuditSnapshot {
            counts_by_syscall,
            recent: self.ring.iter().cloned().collect(),
            total: self.total,
            evicted: self.evicted,
            other_syscalls: self.other_syscalls,
            unidentified_vmm_faults: self.unidentified_vmm_faults,
            capacity: self.capacity,
        }
    }

    /// Takes the per-window counts accumulated since the previous drain, for the store.
    pub fn drain_windows(&mut self) -> Vec<AuditWindow> {
        self.windows.drain()
    }
}

/// A [`SeccompAuditLog`] shared between the listener thread that writes it and the readers.
#[derive(Debug, Clone)]
pub struct SharedAuditLog(Arc<Mutex<SeccompAuditLog>>);

impl SharedAuditLog {
    /// A shared log with the given bounds.
    pub fn new(config: AuditConfig) -> Result<Self, AuditError> {
        Ok(Self(Arc::new(Mutex::new(SeccompAuditLog::new(config)?))))
    }

    /// Locks the log. A writer that panicked mid-record leaves at worst one counter short, which
    /// beats losing the whole audit, so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, SeccompAuditLog> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// See [`SeccompAuditLog::record`].
    pub fn record(&self, entry: AuditEntry) {
        self.lock().record(entry);
    }

    /// See [`SeccompAuditLog::record_vmm_fault`].
    pub fn record_vmm_fault(&self, exit_status: i32, log: &str) -> VmmFault {
        self.lock().record_vmm_fault(exit_status, log)
    }

    /// See [`SeccompAuditLog::snapshot`].
    pub fn snapshot(&self) -> AuditSnapshot {
        self.lock().snapshot()
    }

    /// See [`SeccompAuditLog::drain_windows`].
    pub fn drain_windows(&self) -> Vec<AuditWindow> {
        self.lock().drain_windows()
    }
}

#[cfg(test)]
mod tests;
