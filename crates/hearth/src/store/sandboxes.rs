//! Sandbox records and their lifecycle.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use hearth_sandbox::spec::SandboxSpec;
use hearth_sandbox::userns::{HostIds, MAX_SANDBOX_BLOCKS};
use hearth_sandbox::SandboxId;
use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError};

/// Where a sandbox is in its life.
///
/// ```text
/// creating -> running -> removing -> (row deleted)
///     |          |
///     v          v
///   failed     exited (PID 1 died; only removal is left)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxStatus {
    Creating,
    Running,
    Exited,
    Removing,
    Failed,
}

/// A transition the lifecycle does not allow.
#[derive(Debug, Clone, thiserror::Error)]
#[error("sandbox is {status}; cannot {action}")]
pub struct StatusError {
    pub status: SandboxStatus,
    pub action: &'static str,
}

impl SandboxStatus {
    const ALL: [Self; 5] = [
        Self::Creating,
        Self::Running,
        Self::Exited,
        Self::Removing,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Running => "running",
            Self::Exited => "exited",
            Self::Removing => "removing",
            Self::Failed => "failed",
        }
    }

    /// Only a running sandbox has a guest to run commands or move files.
    pub fn can_exec(self) -> bool {
        self == Self::Running
    }

    /// Creation finishes only from `creating`.
    pub fn can_mark_running(self) -> bool {
        self == Self::Creating
    }

    /// A sandbox being created belongs to its creator until it is running or failed; removing
    /// it from under the creator would race. (Crashed creators are handled by reconciliation.)
    pub fn can_remove(self) -> bool {
        self != Self::Creating
    }

    pub fn check(self, allowed: bool, action: &'static str) -> Result<(), StatusError> {
        if allowed {
            Ok(())
        } else {
            Err(StatusError {
                status: self,
                action,
            })
        }
    }
}

impl fmt::Display for SandboxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SandboxStatus {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == raw)
            .ok_or_else(|| format!("unknown status {raw:?}"))
    }
}

/// One row of the `sandboxes` table.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxRecord {
    pub id: SandboxId,
    pub status: SandboxStatus,
    pub backend: String,
    pub runtime: String,
    pub spec: SandboxSpec,
    /// The hearth process that created the sandbox (to detect a creator that crashed).
    pub owner_pid: u32,
    /// The host ids the sandbox's root runs as; `None` for sandboxes from before hearth had
    /// user namespaces.
    pub host_ids: Option<HostIds>,
    /// Unix milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
    pub error: Option<String>,
}

pub(crate) fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// Inserts a new `creating` record. Fails if the id is taken: this is what makes two
    /// concurrent creates of one id safe.
    pub async fn insert_sandbox(
        &self,
        spec: &SandboxSpec,
        backend: &str,
        runtime: &str,
    ) -> Result<SandboxRecord, StoreError> {
        let now = now_ms();
        let spec_json = serde_json::to_string(spec).map_err(|err| StoreError::Corrupt {
            id: spec.id.to_string(),
            problem: err.to_string(),
        })?;
        let owner_pid = std::process::id();
        // The lowest free id block, chosen inside the INSERT: SQLite runs it as one write, so
        // two creates can never take the same block (the unique index says so too).
        let result = sqlx::query(
            "INSERT INTO sandboxes (id, status, backend, runtime, spec, owner_pid, created_at, updated_at, id_block) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, \
               (SELECT MIN(candidate) FROM \
                  (SELECT 0 AS candidate UNION ALL \
                   SELECT id_block + 1 FROM sandboxes WHERE id_block IS NOT NULL) \
                WHERE candidate NOT IN (SELECT id_block FROM sandboxes WHERE id_block IS NOT NULL))) \
             RETURNING id_block",
        )
        .bind(spec.id.as_str())
        .bind(SandboxStatus::Creating.as_str())
        .bind(backend)
        .bind(runtime)
        .bind(&spec_json)
        .bind(i64::from(owner_pid))
        .bind(now)
        .bind(now)
        .fetch_one(&self.pool)
        .await;
        let block: i64 = match result {
            Ok(row) => row.try_get("id_block")?,
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                return Err(StoreError::SandboxExists(spec.id.to_string()));
            }
            Err(err) => return Err(err.into()),
        };
        let host_ids = match u32::try_from(block).map(HostIds::block) {
            Ok(Ok(ids)) => ids,
            _ => {
                self.delete_sandbox(&spec.id).await?;
                return Err(StoreError::IdBlocksExhausted {
                    max: MAX_SANDBOX_BLOCKS,
                });
            }
        };
        Ok(SandboxRecord {
            id: spec.id.clone(),
            status: SandboxStatus::Creating,
            backend: backend.to_owned(),
            runtime: runtime.to_owned(),
            spec: spec.clone(),
            owner_pid,
            host_ids: Some(host_ids),
            created_at: now,
            updated_at: now,
            error: None,
        })
    }

    /// Sets the status; the calling process becomes the record's owner, so a crash during the
    /// work this status announces (creating, removing) can be recognised later.
    pub async fn set_sandbox_status(
        &self,
        id: &SandboxId,
        status: SandboxStatus,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE sandboxes SET status = ?, error = ?, owner_pid = ?, updated_at = ? WHERE id = ?")
            .bind(status.as_str())
            .bind(error)
            .bind(i64::from(std::process::id()))
            .bind(now_ms())
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn get_sandbox(&self, id: &SandboxId) -> Result<Option<SandboxRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM sandboxes WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| record_from_row(&row)).transpose()
    }

    pub async fn list_sandboxes(&self) -> Result<Vec<SandboxRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM sandboxes ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(record_from_row).collect()
    }

    pub async fn delete_sandbox(&self, id: &SandboxId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sandboxes WHERE id = ?")
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

fn record_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<SandboxRecord, StoreError> {
    let raw_id: String = row.try_get("id")?;
    let corrupt = |problem: String| StoreError::Corrupt {
        id: raw_id.clone(),
        problem,
    };
    let id = SandboxId::parse(&raw_id).map_err(|err| corrupt(err.to_string()))?;
    let status: String = row.try_get("status")?;
    let spec: String = row.try_get("spec")?;
    let owner_pid: i64 = row.try_get("owner_pid")?;
    let block: Option<i64> = row.try_get("id_block")?;
    let host_ids = block
        .map(|block| {
            u32::try_from(block)
                .ok()
                .and_then(|block| HostIds::block(block).ok())
                .ok_or_else(|| corrupt(format!("id block {block} is out of range")))
        })
        .transpose()?;
    Ok(SandboxRecord {
        id,
        status: status.parse().map_err(corrupt)?,
        backend: row.try_get("backend")?,
        runtime: row.try_get("runtime")?,
        spec: serde_json::from_str(&spec).map_err(|err| corrupt(err.to_string()))?,
        owner_pid: u32::try_from(owner_pid).map_err(|err| corrupt(err.to_string()))?,
        host_ids,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        error: row.try_get("error")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_sandbox::spec::ResourceLimits;

    fn spec(id: &str) -> SandboxSpec {
        SandboxSpec {
            id: SandboxId::parse(id).unwrap(),
            limits: ResourceLimits::default(),
            workspace: None,
            seccomp: None,
            net: Default::default(),
            guest_seccomp: None,
            backend: hearth_sandbox::backend::BackendKind::Oci,
            template: None,
        }
    }

    #[test]
    fn guards_per_state() {
        use SandboxStatus::*;
        let exec: Vec<_> = SandboxStatus::ALL
            .into_iter()
            .filter(|s| s.can_exec())
            .collect();
        assert_eq!(exec, vec![Running]);
        let remove: Vec<_> = SandboxStatus::ALL
            .into_iter()
            .filter(|s| s.can_remove())
            .collect();
        assert_eq!(remove, vec![Running, Exited, Removing, Failed]);
        let mark: Vec<_> = SandboxStatus::ALL
            .into_iter()
            .filter(|s| s.can_mark_running())
            .collect();
        assert_eq!(mark, vec![Creating]);
        let err = Exited.check(Exited.can_exec(), "exec").unwrap_err();
        assert_eq!(err.to_string(), "sandbox is exited; cannot exec");
        for status in SandboxStatus::ALL {
            assert_eq!(status.as_str().parse::<SandboxStatus>().unwrap(), status);
        }
    }

    #[tokio::test]
    async fn insert_get_update_delete() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("state")).await.unwrap();
        let rec = store
            .insert_sandbox(&spec("one"), "oci", "runc")
            .await
            .unwrap();
        assert_eq!(rec.status, SandboxStatus::Creating);
        assert!(matches!(
            store.insert_sandbox(&spec("one"), "oci", "runc").await,
            Err(StoreError::SandboxExists(_))
        ));
        store
            .set_sandbox_status(&rec.id, SandboxStatus::Running, None)
            .await
            .unwrap();
        let got = store.get_sandbox(&rec.id).await.unwrap().unwrap();
        assert_eq!(got.status, SandboxStatus::Running);
        assert_eq!(got.owner_pid, std::process::id());
        assert_eq!(store.list_sandboxes().await.unwrap().len(), 1);
        store.delete_sandbox(&rec.id).await.unwrap();
        assert!(store.get_sandbox(&rec.id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn every_sandbox_gets_its_own_id_block_and_frees_it() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("state")).await.unwrap();
        let mut blocks = Vec::new();
        for id in ["a", "b", "c"] {
            let rec = store
                .insert_sandbox(&spec(id), "oci", "runc")
                .await
                .unwrap();
            blocks.push(rec.host_ids.unwrap().index());
        }
        assert_eq!(blocks, vec![0, 1, 2]);
        store
            .delete_sandbox(&SandboxId::parse("b").unwrap())
            .await
            .unwrap();
        let again = store
            .insert_sandbox(&spec("d"), "oci", "runc")
            .await
            .unwrap();
        assert_eq!(again.host_ids.unwrap().index(), 1, "the lowest free block");
        let read = store.get_sandbox(&again.id).await.unwrap().unwrap();
        assert_eq!(read.host_ids, again.host_ids);
    }

    #[tokio::test]
    async fn database_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        Store::open(&dir).await.unwrap();
        let mode = std::fs::metadata(dir.join("hearth.db"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
    }

    /// Rows written before specs held typed policies (rendered OCI JSON with its
    /// `listenerPath`, guest BPF bytes) still list, read and delete.
    #[tokio::test]
    async fn old_rows_with_rendered_seccomp_still_load() {
        use hearth_sandbox::backend::BackendKind;
        use hearth_sandbox::seccomp::SpecSeccomp;
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("state")).await.unwrap();
        let fixtures = [
            (
                "old-oci",
                include_str!("../../tests/fixtures/old-records/sandbox-spec-oci.json"),
            ),
            (
                "old-qemu",
                include_str!("../../tests/fixtures/old-records/sandbox-spec-qemu.json"),
            ),
        ];
        for (id, old) in fixtures {
            let rec = store
                .insert_sandbox(&spec(id), "oci", "runc")
                .await
                .unwrap();
            sqlx::query("UPDATE sandboxes SET spec = ? WHERE id = ?")
                .bind(old)
                .bind(rec.id.as_str())
                .execute(&store.pool)
                .await
                .unwrap();
        }
        let listed = store.list_sandboxes().await.unwrap();
        assert_eq!(listed.len(), 2);
        let oci = store
            .get_sandbox(&SandboxId::parse("old-oci").unwrap())
            .await
            .unwrap()
            .unwrap();
        let Some(SpecSeccomp::Oci(section)) = &oci.spec.seccomp else {
            panic!("{:?}", oci.spec.seccomp)
        };
        assert!(section["listenerPath"].is_string());
        assert!(oci.spec.seccomp_listener());
        assert!(matches!(oci.spec.guest_seccomp, Some(SpecSeccomp::Bpf(_))));
        assert_eq!(oci.spec.net.allow.len(), 1);
        let vm = store
            .get_sandbox(&SandboxId::parse("old-qemu").unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(vm.spec.backend, BackendKind::Qemu);
        assert!(matches!(vm.spec.seccomp, Some(SpecSeccomp::Bpf(_))));
        // `sandbox ls --json` and the API print records: they still serialize.
        assert!(serde_json::to_string(&listed).is_ok());
        for rec in listed {
            store.delete_sandbox(&rec.id).await.unwrap();
        }
        assert!(store.list_sandboxes().await.unwrap().is_empty());
    }
}
