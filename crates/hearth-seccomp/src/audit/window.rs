//! Counts per (time window, syscall, action, source) since the last drain, for the store.
//!
//! The store persists one row per bucket rather than one per event, so a flood of a million
//! denials of one syscall costs one row per window, not a million.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::entry::{native_arch, syscall_name, AuditAction, AuditEntry, AuditSource};
use super::AuditError;

/// The bound on buckets held between two drains. Past it, new buckets fold into one "other"
/// bucket per (action, source): detail is lost, totals stay exact. A store that drains every
/// window never gets near it.
pub const MAX_PENDING_BUCKETS: usize = 4096;

/// One persisted row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditWindow {
    /// Start of the window, in ms since the Unix epoch (a multiple of `window_ms`).
    pub window_start_ms: u64,
    /// Width of the window.
    pub window_ms: u64,
    /// The `AUDIT_ARCH_*` value.
    pub arch: u32,
    /// The syscall number; `None` for counts past the syscall-key bound, the bucket bound, or a
    /// VMM fault whose syscall is unknown.
    pub syscall_nr: Option<i64>,
    /// The syscall name, when known.
    pub syscall_name: Option<String>,
    /// What was done to the calls.
    pub action: AuditAction,
    /// Which layer reported them.
    pub source: AuditSource,
    /// How many calls.
    pub count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct BucketKey {
    window_start_ms: u64,
    arch: u32,
    nr: Option<i64>,
    action: AuditAction,
    source: AuditSource,
}

/// The incremental aggregator behind [`super::SeccompAuditLog::drain_windows`].
#[derive(Debug)]
pub struct WindowAggregator {
    window_ms: u64,
    pending: BTreeMap<BucketKey, u64>,
    /// "Other" buckets once `pending` is full, keyed by action and source only.
    overflow: BTreeMap<(AuditAction, AuditSource), (u64, u64)>,
}

impl WindowAggregator {
    /// An aggregator with windows of the given width (at least 1 ms).
    pub fn new(window: Duration) -> Result<Self, AuditError> {
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        if window_ms == 0 {
            return Err(AuditError::ZeroWindow(window));
        }
        Ok(Self {
            window_ms,
            pending: BTreeMap::new(),
            overflow: BTreeMap::new(),
        })
    }

    /// Counts one entry. `counted` is false when the log's syscall-key bound was hit, in which
    /// case the row must not name the syscall either (it would grow without bound across drains).
    pub fn add(&mut self, entry: &AuditEntry, counted: bool) {
        let key = BucketKey {
            window_start_ms: self.window_start(entry.time_ms),
            arch: entry.arch,
            nr: counted.then_some(entry.syscall_nr),
            action: entry.action,
            source: entry.source,
        };
        self.bump(key);
    }

    /// Counts a VMM fault whose syscall is unknown.
    pub fn add_unidentified_vmm_fault(&mut self, time_ms: u64) {
        let key = BucketKey {
            window_start_ms: self.window_start(time_ms),
            arch: native_arch(),
            nr: None,
            action: AuditAction::VmmShutdown,
            source: AuditSource::VmmFault,
        };
        self.bump(key);
    }

    /// Takes every bucket accumulated since the previous drain, oldest window first.
    pub fn drain(&mut self) -> Vec<AuditWindow> {
        let window_ms = self.window_ms;
        let pending = std::mem::take(&mut self.pending);
        let overflow = std::mem::take(&mut self.overflow);
        let rows = pending.into_iter().map(|(key, count)| AuditWindow {
            window_start_ms: key.window_start_ms,
            window_ms,
            arch: key.arch,
            syscall_nr: key.nr,
            syscall_name: key
                .nr
                .and_then(|nr| syscall_name(key.arch, nr))
                .map(str::to_owned),
            action: key.action,
            source: key.source,
            count,
        });
        let other = overflow
            .into_iter()
            .map(|((action, source), (start, count))| AuditWindow {
                window_start_ms: start,
                window_ms,
                arch: native_arch(),
                syscall_nr: None,
                syscall_name: None,
                action,
                source,
                count,
            });
        rows.chain(other).collect()
    }

    /// Buckets currently held (never more than [`MAX_PENDING_BUCKETS`] plus one per
    /// action and source).
    pub fn pending_len(&self) -> usize {
        self.pending.len() + self.overflow.len()
    }

    fn window_start(&self, time_ms: u64) -> u64 {
        time_ms - time_ms % self.window_ms
    }

    fn bump(&mut self, key: BucketKey) {
        if let Some(count) = self.pending.get_mut(&key) {
            *count = count.saturating_add(1);
        } else if self.pending.len() < MAX_PENDING_BUCKETS {
            self.pending.insert(key, 1);
        } else {
            // The row carries the window where overflow began for this action and source.
            let slot = self
                .overflow
                .entry((key.action, key.source))
                .or_insert((key.window_start_ms, 0));
            slot.1 = slot.1.saturating_add(1);
        }
    }
}
