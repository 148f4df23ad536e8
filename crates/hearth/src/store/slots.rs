//! The firewall's address-pool slots, kept in SQLite so a restart never hands out a live one.
//!
//! `SlotStore` is synchronous (the firewall runs on blocking threads); each call runs its query
//! on the tokio runtime through a handle. Call it only from a blocking thread
//! (`spawn_blocking`), never from an async task.

use std::collections::BTreeSet;

use hearth_net::{SlotStore, SlotStoreError};
use hearth_sandbox::SandboxId;
use sqlx::Row;
use tokio::runtime::Handle;

use super::Store;

/// A [`SlotStore`] backed by hearth's database.
#[derive(Debug, Clone)]
pub struct SqliteSlotStore {
    store: Store,
    runtime: Handle,
}

impl SqliteSlotStore {
    pub fn new(store: Store, runtime: Handle) -> Self {
        Self { store, runtime }
    }
}

fn failed(op: &'static str) -> impl FnOnce(sqlx::Error) -> SlotStoreError {
    move |err| SlotStoreError {
        op,
        source: Box::new(err),
    }
}

impl SlotStore for SqliteSlotStore {
    fn claim(
        &self,
        id: &SandboxId,
        capacity: u32,
        busy: &BTreeSet<u32>,
    ) -> Result<Option<u32>, SlotStoreError> {
        self.runtime.block_on(async {
            // A unique violation means another process took the slot between our read and our
            // insert: read again and take the next one.
            loop {
                let rows = sqlx::query("SELECT sandbox_id, slot FROM net_slots")
                    .fetch_all(&self.store.pool)
                    .await
                    .map_err(failed("read slots"))?;
                let mut taken = busy.clone();
                for row in &rows {
                    let owner: String = row.get("sandbox_id");
                    let slot: i64 = row.get("slot");
                    let slot = u32::try_from(slot).unwrap_or(u32::MAX);
                    if owner == id.as_str() {
                        return Ok(Some(slot));
                    }
                    taken.insert(slot);
                }
                let Some(free) = (0..capacity).find(|slot| !taken.contains(slot)) else {
                    return Ok(None);
                };
                let inserted =
                    sqlx::query("INSERT INTO net_slots (sandbox_id, slot) VALUES (?, ?)")
                        .bind(id.as_str())
                        .bind(i64::from(free))
                        .execute(&self.store.pool)
                        .await;
                match inserted {
                    Ok(_) => return Ok(Some(free)),
                    Err(sqlx::Error::Database(db)) if db.is_unique_violation() => continue,
                    Err(err) => return Err(failed("claim a slot")(err)),
                }
            }
        })
    }

    fn release(&self, id: &SandboxId) -> Result<(), SlotStoreError> {
        self.runtime.block_on(async {
            sqlx::query("DELETE FROM net_slots WHERE sandbox_id = ?")
                .bind(id.as_str())
                .execute(&self.store.pool)
                .await
                .map_err(failed("release a slot"))?;
            Ok(())
        })
    }

    fn list(&self) -> Result<Vec<(SandboxId, u32)>, SlotStoreError> {
        self.runtime.block_on(async {
            let rows = sqlx::query("SELECT sandbox_id, slot FROM net_slots ORDER BY slot")
                .fetch_all(&self.store.pool)
                .await
                .map_err(failed("list slots"))?;
            let mut slots = Vec::with_capacity(rows.len());
            for row in rows {
                let raw: String = row.get("sandbox_id");
                let slot: i64 = row.get("slot");
                // A row that does not parse was not written by hearth; skip it rather than fail
                // every network operation.
                if let (Ok(id), Ok(slot)) = (SandboxId::parse(&raw), u32::try_from(slot)) {
                    slots.push((id, slot));
                }
            }
            Ok(slots)
        })
    }
}

impl Store {
    /// The address-pool slot a sandbox's network holds, if any.
    pub async fn net_slot(&self, id: &SandboxId) -> Result<Option<u32>, super::StoreError> {
        let slot: Option<i64> =
            sqlx::query_scalar("SELECT slot FROM net_slots WHERE sandbox_id = ?")
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?;
        Ok(slot.and_then(|slot| u32::try_from(slot).ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_stable_unique_and_skip_busy_slots() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let store = runtime.block_on(Store::open(tmp.path())).unwrap();
        let slots = SqliteSlotStore::new(store, runtime.handle().clone());
        let a = SandboxId::parse("slot-a").unwrap();
        let b = SandboxId::parse("slot-b").unwrap();
        let busy: BTreeSet<u32> = [0].into();
        assert_eq!(slots.claim(&a, 4, &busy).unwrap(), Some(1));
        assert_eq!(
            slots.claim(&a, 4, &busy).unwrap(),
            Some(1),
            "same id keeps its slot"
        );
        assert_eq!(slots.claim(&b, 4, &busy).unwrap(), Some(2));
        assert_eq!(
            slots
                .claim(&SandboxId::parse("slot-c").unwrap(), 3, &busy)
                .unwrap(),
            None,
            "pool of 3 exhausted"
        );
        assert_eq!(slots.list().unwrap(), vec![(a.clone(), 1), (b.clone(), 2)]);
        slots.release(&a).unwrap();
        slots.release(&a).unwrap();
        assert_eq!(slots.list().unwrap(), vec![(b, 2)]);
    }
}
