//! Records of saved microVM snapshots (the files are the snapshot module's business).

use std::fmt;

use hearth_sandbox::spec::SandboxSpec;
use hearth_sandbox::SandboxId;
use serde::Serialize;
use sqlx::Row;

use super::sandboxes::now_ms;
use super::{to_i64, to_u64, Store, StoreError};

/// A snapshot's name is a directory name under the state dir, so it is validated like a
/// sandbox id: ASCII `[a-z0-9-]`, 1 to 64 characters, not starting with `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub struct SnapshotName(String);

/// Why a string is not a snapshot name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid snapshot name {name:?}: {reason}")]
pub struct SnapshotNameError {
    pub name: String,
    pub reason: String,
}

impl SnapshotName {
    pub fn parse(raw: &str) -> Result<Self, SnapshotNameError> {
        // The same rules as ids: one plain path component, no '.', '/' or NUL.
        SandboxId::parse(raw)
            .map(|_| Self(raw.to_owned()))
            .map_err(|err| SnapshotNameError {
                name: raw.chars().take(80).collect(),
                reason: err.to_string().replace("sandbox id", "a snapshot name"),
            })
    }

    /// A fresh random name such as `snap-k3x9q2m7w1ab` (60 bits of randomness).
    pub fn generate() -> Self {
        Self(hearth_id::random_name("snap"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SnapshotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<SnapshotName> for String {
    fn from(name: SnapshotName) -> Self {
        name.0
    }
}

/// One row of the `snapshots` table.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotRecord {
    pub name: SnapshotName,
    /// The sandbox it was taken from (which may be gone by now).
    pub source_id: SandboxId,
    pub backend: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Bytes on disk (the memory image and the manifest).
    pub size_bytes: u64,
    pub hearth_version: String,
    /// The version of the VMM (QEMU or Firecracker) that took it; a restore needs the same.
    pub vmm_version: String,
    /// The source's spec: a restored sandbox keeps its limits and guest seccomp policy.
    #[serde(skip)]
    pub spec: SandboxSpec,
}

impl Store {
    /// Records a snapshot whose files are complete. Fails with `SnapshotExists` if the name
    /// is taken.
    pub async fn insert_snapshot(&self, record: &SnapshotRecord) -> Result<(), StoreError> {
        let spec = serde_json::to_string(&record.spec).map_err(|err| StoreError::Corrupt {
            id: record.name.to_string(),
            problem: err.to_string(),
        })?;
        let result = sqlx::query(
            "INSERT INTO snapshots (name, source_id, backend, created_at, size_bytes, \
             hearth_version, vmm_version, spec) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(record.name.as_str())
        .bind(record.source_id.as_str())
        .bind(&record.backend)
        .bind(record.created_at)
        .bind(to_i64(record.size_bytes))
        .bind(&record.hearth_version)
        .bind(&record.vmm_version)
        .bind(&spec)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                Err(StoreError::SnapshotExists(record.name.to_string()))
            }
            Err(err) => Err(err.into()),
        }
    }

    pub async fn get_snapshot(
        &self,
        name: &SnapshotName,
    ) -> Result<Option<SnapshotRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM snapshots WHERE name = ?")
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| snapshot_from_row(&row)).transpose()
    }

    pub async fn list_snapshots(&self) -> Result<Vec<SnapshotRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM snapshots ORDER BY created_at, name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(snapshot_from_row).collect()
    }

    pub async fn delete_snapshot(&self, name: &SnapshotName) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM snapshots WHERE name = ?")
            .bind(name.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// A new record stamped now.
pub fn new_snapshot_record(
    name: SnapshotName,
    spec: &SandboxSpec,
    size_bytes: u64,
    hearth_version: String,
    vmm_version: String,
) -> SnapshotRecord {
    SnapshotRecord {
        name,
        source_id: spec.id.clone(),
        backend: spec.backend.to_string(),
        created_at: now_ms(),
        size_bytes,
        hearth_version,
        vmm_version,
        spec: spec.clone(),
    }
}

fn snapshot_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<SnapshotRecord, StoreError> {
    let raw: String = row.try_get("name")?;
    let corrupt = |problem: String| StoreError::Corrupt {
        id: raw.clone(),
        problem,
    };
    let name = SnapshotName::parse(&raw).map_err(|err| corrupt(err.to_string()))?;
    let source: String = row.try_get("source_id")?;
    let spec: String = row.try_get("spec")?;
    let size: i64 = row.try_get("size_bytes")?;
    Ok(SnapshotRecord {
        name,
        source_id: SandboxId::parse(&source).map_err(|err| corrupt(err.to_string()))?,
        backend: row.try_get("backend")?,
        created_at: row.try_get("created_at")?,
        size_bytes: to_u64(size),
        hearth_version: row.try_get("hearth_version")?,
        vmm_version: row.try_get("vmm_version")?,
        spec: serde_json::from_str(&spec).map_err(|err| corrupt(err.to_string()))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_sandbox::backend::BackendKind;
    use hearth_sandbox::seccomp::SpecSeccomp;
    use hearth_sandbox::spec::{MemoryBytes, ResourceLimits};

    #[test]
    fn names_are_validated_like_ids() {
        assert_eq!(
            SnapshotName::parse("before-1").unwrap().as_str(),
            "before-1"
        );
        for bad in ["", "-x", "A", "a/b", "..", "a.b", "a\0b", &"a".repeat(65)] {
            let err = SnapshotName::parse(bad).unwrap_err();
            assert!(err.to_string().contains("snapshot name"), "{err}");
        }
        let generated = SnapshotName::generate();
        assert!(generated.as_str().starts_with("snap-"));
        assert_eq!(SnapshotName::parse(generated.as_str()).unwrap(), generated);
        assert_ne!(SnapshotName::generate(), generated);
    }

    #[tokio::test]
    async fn insert_get_list_delete() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("state")).await.unwrap();
        let spec = SandboxSpec {
            id: SandboxId::parse("src").unwrap(),
            limits: ResourceLimits {
                memory: MemoryBytes(256 << 20),
                ..ResourceLimits::default()
            },
            workspace: None,
            seccomp: Some(SpecSeccomp::Bpf(vec![1, 2, 3])),
            net: Default::default(),
            guest_seccomp: None,
            backend: BackendKind::Qemu,
            template: None,
        };
        let name = SnapshotName::parse("s1").unwrap();
        let record = new_snapshot_record(name.clone(), &spec, 42, "0.1.0".into(), "QEMU 7".into());
        store.insert_snapshot(&record).await.unwrap();
        assert!(matches!(
            store.insert_snapshot(&record).await,
            Err(StoreError::SnapshotExists(n)) if n == "s1"
        ));
        let got = store.get_snapshot(&name).await.unwrap().unwrap();
        assert_eq!(got.source_id.as_str(), "src");
        assert_eq!((got.backend.as_str(), got.size_bytes), ("qemu", 42));
        assert_eq!(got.spec.limits.memory, MemoryBytes(256 << 20));
        assert_eq!(got.spec.seccomp, Some(SpecSeccomp::Bpf(vec![1, 2, 3])));
        // The spec (with its seccomp program) stays out of the listing's JSON.
        let json = serde_json::to_value(&got).unwrap();
        assert_eq!(json["name"], "s1");
        assert!(json.get("spec").is_none());
        assert_eq!(store.list_snapshots().await.unwrap().len(), 1);
        store.delete_snapshot(&name).await.unwrap();
        assert!(store.get_snapshot(&name).await.unwrap().is_none());
        assert!(store.list_snapshots().await.unwrap().is_empty());
    }

    /// A snapshot of a microVM recorded before specs held typed policies: its guest's BPF
    /// program (what the restored guest must get) is the restored sandbox's workload filter.
    #[tokio::test]
    async fn an_old_snapshot_row_still_restores_its_guest_filter() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("state")).await.unwrap();
        let old = include_str!("../../tests/fixtures/old-records/sandbox-spec-qemu.json");
        let old_bytes: Vec<u8> = serde_json::from_value(
            serde_json::from_str::<serde_json::Value>(old).unwrap()["guest_seccomp"].clone(),
        )
        .unwrap();
        sqlx::query(
            "INSERT INTO snapshots (name, source_id, backend, size_bytes, created_at, \
             hearth_version, vmm_version, spec) VALUES ('old', 'old-qemu', 'qemu', 1, 0, '0.1.0', 'QEMU 7', ?)",
        )
        .bind(old)
        .execute(&store.pool)
        .await
        .unwrap();
        let name = SnapshotName::parse("old").unwrap();
        let got = store.get_snapshot(&name).await.unwrap().unwrap();
        assert_eq!(got.spec.backend, BackendKind::Qemu);
        assert_eq!(got.spec.seccomp, Some(SpecSeccomp::Bpf(old_bytes.clone())));
        assert!(got.spec.guest_seccomp.is_none());
        // What the VM backends put on the restored guest's config drive.
        let config = hearth_sandbox::backend::vm::spec_guest_config(&got.spec).unwrap();
        use base64::Engine as _;
        let carried = base64::engine::general_purpose::STANDARD
            .decode(config.seccomp_bpf_b64.unwrap())
            .unwrap();
        assert_eq!(carried, old_bytes);
        assert_eq!(store.list_snapshots().await.unwrap().len(), 1);
        store.delete_snapshot(&name).await.unwrap();
    }
}
