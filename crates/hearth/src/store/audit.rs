//! The persisted seccomp audit (tables in `migrations/0002_seccomp_audit.sql`).
//!
//! Writers: a sandbox's supervisor (every flush: window counts upserted, new ring entries
//! appended, the state row bumped) and `hearth sandbox exec` (kills, which the notify path never
//! sees). Readers: `hearth sandbox audit`. Everything stays bounded: window rows are per
//! (window, syscall, action, source), recent rows are trimmed to the ring's capacity.

use hearth_sandbox::SandboxId;
use hearth_seccomp::audit::{AuditAction, AuditEntry, AuditSource, AuditWindow};
use serde::Serialize;
use sqlx::{Row, Sqlite, Transaction};

use super::sandboxes::now_ms;
use super::{forget_sandbox_rows, to_i64, to_u64, Store, StoreError};

/// Stored in `syscall_nr` when the syscall is unknown (see the migration).
const UNKNOWN_NR: i64 = -1;

/// One line of the summary: exact count of one syscall under one action, over all windows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditCount {
    pub syscall: Option<String>,
    pub nr: Option<i64>,
    pub action: String,
    pub source: String,
    pub count: u64,
}

/// The supervisor's bookkeeping row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditState {
    pub supervisor_pid: u32,
    pub total: u64,
    pub evicted: u64,
    pub capacity: u64,
    pub flush_seq: u64,
    pub updated_at_ms: i64,
    /// Why the supervisor stopped, once it has.
    pub ended: Option<String>,
}

/// A recent entry with its row id (what `--follow` resumes from).
#[derive(Debug, Clone, Serialize)]
pub struct StoredEntry {
    pub id: i64,
    #[serde(flatten)]
    pub entry: AuditEntry,
}

/// Totals the supervisor reports with each flush.
#[derive(Debug, Clone, Copy)]
pub struct FlushTotals {
    pub total: u64,
    pub evicted: u64,
    pub capacity: u64,
}

impl Store {
    /// Forgets every audit row of `id` (a new sandbox reusing an old id starts clean) and
    /// writes the state row of its new supervisor.
    pub async fn begin_seccomp_audit(
        &self,
        id: &SandboxId,
        supervisor_pid: u32,
        capacity: u64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        forget_sandbox_rows(
            &mut tx,
            id,
            &[
                "seccomp_audit_windows",
                "seccomp_audit_recent",
                "seccomp_audit_state",
            ],
        )
        .await?;
        sqlx::query(
            "INSERT INTO seccomp_audit_state \
             (sandbox_id, supervisor_pid, total, evicted, capacity, flush_seq, updated_at_ms) \
             VALUES (?, ?, 0, 0, ?, 0, ?)",
        )
        .bind(id.as_str())
        .bind(i64::from(supervisor_pid))
        .bind(to_i64(capacity))
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// One supervisor flush, atomically: windows added to their rows, new entries appended and
    /// the oldest beyond `capacity` dropped, the state row's `flush_seq` bumped. Returns the new
    /// `flush_seq`.
    pub async fn flush_seccomp_audit(
        &self,
        id: &SandboxId,
        windows: &[AuditWindow],
        recent: &[AuditEntry],
        totals: FlushTotals,
        ended: Option<&str>,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        for window in windows {
            upsert_window(&mut tx, id, window).await?;
        }
        let skip = recent
            .len()
            .saturating_sub(usize::try_from(totals.capacity).unwrap_or(usize::MAX));
        for entry in &recent[skip..] {
            insert_entry(&mut tx, id, entry).await?;
        }
        trim_recent(&mut tx, id, totals.capacity).await?;
        let row = sqlx::query(
            "UPDATE seccomp_audit_state SET total = ?, evicted = ?, capacity = ?, \
             flush_seq = flush_seq + 1, updated_at_ms = ?, ended = ? WHERE sandbox_id = ? \
             RETURNING flush_seq",
        )
        .bind(to_i64(totals.total))
        .bind(to_i64(totals.evicted))
        .bind(to_i64(totals.capacity))
        .bind(now_ms())
        .bind(ended)
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row.map_or(0, |r| to_u64(r.get::<i64, _>(0))))
    }

    /// Records one call outside the supervisor (a process killed by its filter): a window row
    /// and a recent entry, trimmed to `capacity` like the supervisor's.
    pub async fn record_seccomp_entry(
        &self,
        id: &SandboxId,
        entry: &AuditEntry,
        window_ms: u64,
        capacity: u64,
    ) -> Result<(), StoreError> {
        let window = AuditWindow {
            window_start_ms: entry.time_ms - entry.time_ms % window_ms.max(1),
            window_ms,
            arch: entry.arch,
            syscall_nr: (entry.syscall_nr != UNKNOWN_NR).then_some(entry.syscall_nr),
            syscall_name: entry.syscall_name.clone(),
            action: entry.action,
            source: entry.source,
            count: 1,
        };
        let mut tx = self.pool.begin().await?;
        upsert_window(&mut tx, id, &window).await?;
        insert_entry(&mut tx, id, entry).await?;
        trim_recent(&mut tx, id, capacity).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Exact counts per syscall, action and source over every window, highest first.
    pub async fn seccomp_audit_counts(
        &self,
        id: &SandboxId,
    ) -> Result<Vec<AuditCount>, StoreError> {
        let rows = sqlx::query(
            "SELECT syscall_nr, MAX(syscall_name) AS name, action, source, SUM(count) AS total \
             FROM seccomp_audit_windows WHERE sandbox_id = ? \
             GROUP BY syscall_nr, action, source ORDER BY total DESC, syscall_nr",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let nr: i64 = row.try_get("syscall_nr")?;
                Ok(AuditCount {
                    syscall: row.try_get("name")?,
                    nr: (nr != UNKNOWN_NR).then_some(nr),
                    action: row.try_get("action")?,
                    source: row.try_get("source")?,
                    count: to_u64(row.try_get("total")?),
                })
            })
            .collect()
    }

    /// Recent entries after row `after` (0 for all), oldest first.
    pub async fn seccomp_audit_recent(
        &self,
        id: &SandboxId,
        after: i64,
    ) -> Result<Vec<StoredEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM seccomp_audit_recent WHERE sandbox_id = ? AND id > ? ORDER BY id",
        )
        .bind(id.as_str())
        .bind(after)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| entry_from_row(id, row)).collect()
    }

    /// The supervisor's state row, if the sandbox ever had one.
    pub async fn seccomp_audit_state(
        &self,
        id: &SandboxId,
    ) -> Result<Option<AuditState>, StoreError> {
        let row = sqlx::query("SELECT * FROM seccomp_audit_state WHERE sandbox_id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            let pid: i64 = row.try_get("supervisor_pid")?;
            Ok(AuditState {
                supervisor_pid: u32::try_from(pid).unwrap_or(0),
                total: to_u64(row.try_get("total")?),
                evicted: to_u64(row.try_get("evicted")?),
                capacity: to_u64(row.try_get("capacity")?),
                flush_seq: to_u64(row.try_get("flush_seq")?),
                updated_at_ms: row.try_get("updated_at_ms")?,
                ended: row.try_get("ended")?,
            })
        })
        .transpose()
    }
}

async fn upsert_window(
    tx: &mut Transaction<'_, Sqlite>,
    id: &SandboxId,
    w: &AuditWindow,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO seccomp_audit_windows (sandbox_id, window_start_ms, window_ms, arch, \
         syscall_nr, syscall_name, action, source, count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (sandbox_id, window_start_ms, arch, syscall_nr, action, source) \
         DO UPDATE SET count = count + excluded.count",
    )
    .bind(id.as_str())
    .bind(to_i64(w.window_start_ms))
    .bind(to_i64(w.window_ms))
    .bind(i64::from(w.arch))
    .bind(w.syscall_nr.unwrap_or(UNKNOWN_NR))
    .bind(w.syscall_name.as_deref())
    .bind(w.action.as_str())
    .bind(w.source.as_str())
    .bind(to_i64(w.count))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_entry(
    tx: &mut Transaction<'_, Sqlite>,
    id: &SandboxId,
    e: &AuditEntry,
) -> Result<(), StoreError> {
    let args = serde_json::to_string(&e.args).unwrap_or_else(|_| "[]".to_owned());
    sqlx::query(
        "INSERT INTO seccomp_audit_recent (sandbox_id, time_ms, pid, comm, exe, arch, \
         syscall_nr, syscall_name, args, action, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(id.as_str())
    .bind(to_i64(e.time_ms))
    .bind(e.pid.map(i64::from))
    .bind(e.comm.as_deref())
    .bind(e.exe.as_deref())
    .bind(i64::from(e.arch))
    .bind(e.syscall_nr)
    .bind(e.syscall_name.as_deref())
    .bind(args)
    .bind(e.action.as_str())
    .bind(e.source.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Keeps the newest `capacity` entries of the sandbox.
async fn trim_recent(
    tx: &mut Transaction<'_, Sqlite>,
    id: &SandboxId,
    capacity: u64,
) -> Result<(), StoreError> {
    sqlx::query(
        "DELETE FROM seccomp_audit_recent WHERE sandbox_id = ?1 AND id <= \
         (SELECT id FROM seccomp_audit_recent WHERE sandbox_id = ?1 ORDER BY id DESC \
          LIMIT 1 OFFSET ?2)",
    )
    .bind(id.as_str())
    .bind(to_i64(capacity))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn entry_from_row(
    id: &SandboxId,
    row: &sqlx::sqlite::SqliteRow,
) -> Result<StoredEntry, StoreError> {
    let corrupt = |problem: String| StoreError::Corrupt {
        id: id.to_string(),
        problem,
    };
    let word = |column: &str| -> Result<serde_json::Value, StoreError> {
        Ok(serde_json::Value::String(row.try_get(column)?))
    };
    let action: AuditAction =
        serde_json::from_value(word("action")?).map_err(|e| corrupt(e.to_string()))?;
    let source: AuditSource =
        serde_json::from_value(word("source")?).map_err(|e| corrupt(e.to_string()))?;
    let args: String = row.try_get("args")?;
    let pid: Option<i64> = row.try_get("pid")?;
    let arch: i64 = row.try_get("arch")?;
    Ok(StoredEntry {
        id: row.try_get("id")?,
        entry: AuditEntry {
            seq: 0,
            time_ms: to_u64(row.try_get("time_ms")?),
            pid: pid.and_then(|p| u32::try_from(p).ok()),
            comm: row.try_get("comm")?,
            exe: row.try_get("exe")?,
            arch: u32::try_from(arch).map_err(|e| corrupt(e.to_string()))?,
            syscall_nr: row.try_get("syscall_nr")?,
            syscall_name: row.try_get("syscall_name")?,
            args: serde_json::from_str(&args).map_err(|e| corrupt(e.to_string()))?,
            action,
            source,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_seccomp::audit::{native_arch, AuditConfig, SeccompAuditLog};

    fn entry(nr: i64) -> AuditEntry {
        AuditEntry::new(
            native_arch(),
            nr,
            [1, 2, 3, 4, 5, 6],
            AuditAction::DeniedEperm,
            AuditSource::OciNotify,
        )
    }

    #[tokio::test]
    async fn flushes_add_up_and_the_recent_rows_stay_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).await.unwrap();
        let id = SandboxId::parse("audit-store").unwrap();
        store.begin_seccomp_audit(&id, 42, 4).await.unwrap();
        let mut log = SeccompAuditLog::new(AuditConfig {
            capacity: 4,
            ..AuditConfig::default()
        })
        .unwrap();
        for round in 0..3u64 {
            for _ in 0..5 {
                log.record(entry(272)); // unshare
            }
            log.record(entry(165)); // mount
            let totals = FlushTotals {
                total: log.total(),
                evicted: log.evicted(),
                capacity: 4,
            };
            let recent = log.recent_since(round * 6);
            let seq = store
                .flush_seccomp_audit(&id, &log.drain_windows(), &recent, totals, None)
                .await
                .unwrap();
            assert_eq!(seq, round + 1);
        }
        let counts = store.seccomp_audit_counts(&id).await.unwrap();
        assert_eq!(counts[0].syscall.as_deref(), Some("unshare"));
        assert_eq!(counts[0].count, 15);
        assert_eq!(counts[1].syscall.as_deref(), Some("mount"));
        assert_eq!(counts[1].count, 3);
        let recent = store.seccomp_audit_recent(&id, 0).await.unwrap();
        assert_eq!(recent.len(), 4);
        assert_eq!(recent[3].entry.syscall_name.as_deref(), Some("mount"));
        assert_eq!(recent[3].entry.args, [1, 2, 3, 4, 5, 6]);
        let state = store.seccomp_audit_state(&id).await.unwrap().unwrap();
        assert_eq!((state.total, state.flush_seq), (18, 3));

        // A kill recorded by the CLI lands beside them; a new supervisor starts clean.
        let mut kill = entry(UNKNOWN_NR);
        kill.action = AuditAction::KilledProcess;
        kill.syscall_name = None;
        store
            .record_seccomp_entry(&id, &kill, 60_000, 4)
            .await
            .unwrap();
        let counts = store.seccomp_audit_counts(&id).await.unwrap();
        assert!(counts
            .iter()
            .any(|c| c.action == "killed_process" && c.nr.is_none() && c.count == 1));
        store.begin_seccomp_audit(&id, 43, 4).await.unwrap();
        assert!(store.seccomp_audit_counts(&id).await.unwrap().is_empty());
        assert!(store.seccomp_audit_recent(&id, 0).await.unwrap().is_empty());
    }
}
