use std::collections::BTreeMap;
use std::time::Duration;

use super::*;

const UNSHARE: i64 = libc::SYS_unshare;
const MOUNT: i64 = libc::SYS_mount;

fn entry(nr: i64, time_ms: u64) -> AuditEntry {
    let mut e = AuditEntry::new(
        native_arch(),
        nr,
        [1, 2, 3, 4, 5, 6],
        AuditAction::DeniedEperm,
        AuditSource::OciNotify,
    );
    e.time_ms = time_ms;
    e
}

fn log(capacity: usize, window_ms: u64) -> SeccompAuditLog {
    SeccompAuditLog::new(AuditConfig {
        capacity,
        window: Duration::from_millis(window_ms),
    })
    .unwrap()
}

fn window_sums(rows: &[AuditWindow]) -> BTreeMap<Option<i64>, u64> {
    let mut sums = BTreeMap::new();
    for row in rows {
        *sums.entry(row.syscall_nr).or_insert(0) += row.count;
    }
    sums
}

#[test]
fn ring_respects_capacity_and_counts_evictions() {
    let mut log = log(8, 1000);
    for i in 0..20 {
        log.record(entry(UNSHARE, i));
    }
    assert_eq!(log.ring_len(), 8);
    assert_eq!(log.total(), 20);
    assert_eq!(log.evicted(), 12);
    let snap = log.snapshot();
    let seqs: Vec<u64> = snap.recent.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (12..20).collect::<Vec<_>>());
    assert_eq!(snap.evicted + snap.recent.len() as u64, snap.total);
}

#[test]
fn zero_capacity_and_zero_window_are_rejected() {
    let zero_cap = AuditConfig {
        capacity: 0,
        ..AuditConfig::default()
    };
    assert!(matches!(
        SeccompAuditLog::new(zero_cap),
        Err(AuditError::ZeroCapacity)
    ));
    let zero_window = AuditConfig {
        window: Duration::from_micros(10),
        ..AuditConfig::default()
    };
    assert!(matches!(
        SeccompAuditLog::new(zero_window),
        Err(AuditError::ZeroWindow(_))
    ));
}

#[test]
fn million_records_keep_exact_counts_in_bounded_memory() {
    const N: u64 = 1_000_000;
    let nrs = [
        UNSHARE,
        MOUNT,
        libc::SYS_keyctl,
        libc::SYS_ptrace,
        libc::SYS_bpf,
    ];
    let mut log = log(DEFAULT_CAPACITY, 100);
    let mut expected = BTreeMap::new();
    for i in 0..N {
        // Uneven mix so a swapped counter would show.
        let nr = nrs[usize::try_from(i % 7).unwrap() % nrs.len()];
        *expected.entry(nr).or_insert(0u64) += 1;
        log.record(entry(nr, i / 10));
        assert!(log.ring_len() <= DEFAULT_CAPACITY);
        if i % 50_000 == 0 {
            // Drained like the store would, so the bucket map stays small too.
            let _ = log.drain_windows();
        }
    }
    assert_eq!(log.total(), N);
    assert_eq!(log.evicted(), N - DEFAULT_CAPACITY as u64);
    for (&nr, &count) in &expected {
        assert_eq!(log.count_native(nr), count, "syscall {nr}");
    }
    let snap = log.snapshot();
    assert_eq!(snap.counts_by_syscall.len(), nrs.len());
    assert_eq!(snap.recent.len(), DEFAULT_CAPACITY);
    assert_eq!(
        snap.counts_by_syscall.iter().map(|c| c.count).sum::<u64>(),
        N
    );
}

#[test]
fn distinct_syscall_keys_are_bounded() {
    let mut log = log(16, 1000);
    let extra = 500;
    let distinct = MAX_DISTINCT_SYSCALLS + extra;
    for i in 0..distinct {
        log.record(entry(100_000 + i64::try_from(i).unwrap(), 0));
    }
    let snap = log.snapshot();
    assert_eq!(snap.counts_by_syscall.len(), MAX_DISTINCT_SYSCALLS);
    assert_eq!(snap.other_syscalls, extra as u64);
    assert_eq!(snap.total, distinct as u64);
    // The windows don't name the syscalls past the bound either, and still sum to the total.
    let rows = log.drain_windows();
    assert_eq!(rows.len(), MAX_DISTINCT_SYSCALLS + 1);
    assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), distinct as u64);
}

#[test]
fn window_rows_sum_to_the_counters() {
    let mut log = log(4, 1000);
    let mut drained = Vec::new();
    for i in 0..10_000u64 {
        let nr = if i % 3 == 0 { MOUNT } else { UNSHARE };
        log.record(entry(nr, 1_700_000_000_000 + i * 7));
        if i == 5_000 {
            drained.extend(log.drain_windows());
        }
    }
    drained.extend(log.drain_windows());
    assert!(log.drain_windows().is_empty(), "a drain empties the buffer");
    let sums = window_sums(&drained);
    assert_eq!(sums[&Some(UNSHARE)], log.count_native(UNSHARE));
    assert_eq!(sums[&Some(MOUNT)], log.count_native(MOUNT));
    assert_eq!(sums.values().sum::<u64>(), log.total());
    for row in &drained {
        assert_eq!(row.window_start_ms % 1000, 0);
        assert_eq!(row.window_ms, 1000);
        assert_eq!(row.action, AuditAction::DeniedEperm);
    }
    // 70 s of events in 1 s windows, two syscalls, one drain splitting a window: at most 2*72 rows.
    assert!(drained.len() <= 2 * 72, "{} rows", drained.len());
    let unshare_row = drained
        .iter()
        .find(|r| r.syscall_nr == Some(UNSHARE))
        .unwrap();
    assert_eq!(unshare_row.syscall_name.as_deref(), Some("unshare"));
}

#[test]
fn pending_buckets_are_bounded_without_losing_counts() {
    let mut log = log(4, 1);
    let n = window::MAX_PENDING_BUCKETS as u64 * 3;
    for i in 0..n {
        log.record(entry(UNSHARE, i));
    }
    let rows = log.drain_windows();
    assert_eq!(rows.len(), window::MAX_PENDING_BUCKETS + 1);
    assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), n);
    let other = rows.iter().find(|r| r.syscall_nr.is_none()).unwrap();
    assert_eq!(other.count, n - window::MAX_PENDING_BUCKETS as u64);
}

#[test]
fn vmm_fault_lines_are_parsed() {
    let line = "2024-01-01T00:00:00.000000000 [anonymous-instance:fc_vcpu 0] \
                Shutting down VM after intercepting a bad syscall (41).";
    assert_eq!(parse_bad_syscall(line), Some(41));
    assert_eq!(parse_bad_syscall("bad syscall (272)"), Some(272));
    assert_eq!(parse_bad_syscall("bad syscall (x)"), None);
    assert_eq!(parse_bad_syscall("bad syscall (12"), None);
    assert_eq!(parse_bad_syscall("all good"), None);

    let mut log = log(8, 1000);
    let fc_log = format!("starting\n{line}\n");
    assert_eq!(log.record_vmm_fault(148, &fc_log), VmmFault::Syscall(41));
    assert_eq!(log.record_vmm_fault(0, "clean exit"), VmmFault::None);
    assert_eq!(log.record_vmm_fault(148, ""), VmmFault::Unidentified);
    let snap = log.snapshot();
    assert_eq!(snap.total, 2);
    assert_eq!(snap.unidentified_vmm_faults, 1);
    let fault = &snap.recent[0];
    assert_eq!(fault.syscall_name.as_deref(), Some("socket"));
    assert_eq!(fault.source, AuditSource::VmmFault);
    assert_eq!(fault.action, AuditAction::VmmShutdown);
    let rows = log.drain_windows();
    assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), snap.total);
}

#[test]
fn snapshot_serializes_with_names_and_follow_resumes() {
    let shared = SharedAuditLog::new(AuditConfig::default()).unwrap();
    shared.record(entry(UNSHARE, 1));
    shared.record(entry(UNSHARE, 2));
    shared.record(entry(MOUNT, 3));
    let json = serde_json::to_value(shared.snapshot()).unwrap();
    assert_eq!(json["total"], 3);
    assert_eq!(json["counts_by_syscall"][0]["name"], "unshare");
    assert_eq!(json["counts_by_syscall"][0]["count"], 2);
    assert_eq!(json["recent"][2]["action"], "denied_eperm");
    assert_eq!(json["recent"][2]["source"], "oci_notify");
    let back: AuditSnapshot = serde_json::from_value(json).unwrap();
    assert_eq!(back, shared.snapshot());
    let tail = shared.lock().recent_since(2);
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].syscall_nr, MOUNT);
}

#[test]
fn other_architectures_are_counted_apart_and_not_misnamed() {
    let mut log = log(8, 1000);
    let mut compat = entry(UNSHARE, 0);
    compat.arch = AUDIT_ARCH_I386;
    compat.syscall_name = syscall_name(compat.arch, compat.syscall_nr).map(str::to_owned);
    log.record(compat);
    log.record(entry(UNSHARE, 0));
    assert_eq!(log.count_native(UNSHARE), 1);
    assert_eq!(
        log.count(SyscallKey {
            arch: AUDIT_ARCH_I386,
            nr: UNSHARE
        }),
        1
    );
    assert_eq!(log.snapshot().recent[0].syscall_name, None);
}

#[test]
fn pages_resume_and_report_what_fell_out_of_the_ring() {
    let mut log = log(4, 1000);
    for nr in 0..6 {
        log.record(entry(nr, 10));
    }
    // seqs 0..6 were recorded; the ring keeps 2..6.
    let page = log.page_since(0, 3);
    assert_eq!(page.total, 6);
    assert_eq!(
        page.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [2, 3, 4]
    );
    assert_eq!(page.missed_since(0), 2);
    assert_eq!(page.next_since(0), 5);
    let rest = log.page_since(5, 3);
    assert_eq!(rest.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [5]);
    assert_eq!(rest.missed_since(5), 0);
    assert_eq!(rest.next_since(5), 6);
    let empty = log.page_since(6, 3);
    assert!(empty.entries.is_empty());
    assert_eq!((empty.missed_since(6), empty.next_since(6)), (0, 6));
}
