//! The persisted firewall drop log (tables in `migrations/0005_network_drops.sql`).
//!
//! Writer: a sandbox's supervisor, which reads its nflog group into a bounded
//! [`DropLog`](hearth_net::DropLog) and stores a snapshot every flush: the counters are
//! absolute values (replaced, not added), new ring entries are appended and the oldest beyond the
//! capacity trimmed. Readers: `hearth sandbox audit` and the task timeline.

use hearth_net::DropSnapshot;
use hearth_sandbox::SandboxId;
use serde::Serialize;
use sqlx::{Row, Sqlite, Transaction};

use super::sandboxes::now_ms;
use super::{forget_sandbox_rows, to_i64, to_u64, Store, StoreError};

/// Stored in `port` for protocols without ports (see the migration).
const NO_PORT: i64 = -1;

/// Drops of one reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DropReasonCount {
    pub reason: String,
    pub count: u64,
}

/// Drops towards one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DropDestinationCount {
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP).
    pub protocol: u8,
    pub address: String,
    pub port: Option<u16>,
    pub count: u64,
}

/// One recent drop as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredDrop {
    /// Row id: increases with every stored drop (what `--follow` and the timeline resume from).
    pub id: i64,
    pub time_ms: i64,
    pub reason: String,
    pub protocol: u8,
    pub source: String,
    pub source_port: Option<u16>,
    pub destination: String,
    pub port: Option<u16>,
}

/// Everything stored of one sandbox's drop log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NetworkDrops {
    /// Drops read from nflog (the nft counters of `hearth sandbox net` are exact even when
    /// nflog lost some under a flood).
    pub total: u64,
    /// Recent entries that fell out of the ring.
    pub evicted: u64,
    /// Drops to destinations past the per-destination bound, only summed.
    pub other_destinations: u64,
    pub by_reason: Vec<DropReasonCount>,
    /// Highest count first.
    pub by_destination: Vec<DropDestinationCount>,
    /// Oldest first.
    pub recent: Vec<StoredDrop>,
}

fn port_of(value: Option<i64>) -> Option<u16> {
    value.and_then(|p| u16::try_from(p).ok())
}

impl Store {
    /// Forgets the drop log of an earlier sandbox with the same id.
    pub async fn begin_network_drops(
        &self,
        id: &SandboxId,
        capacity: u64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        forget_sandbox_rows(
            &mut tx,
            id,
            &[
                "network_drop_reasons",
                "network_drop_destinations",
                "network_drop_recent",
                "network_drop_state",
            ],
        )
        .await?;
        sqlx::query(
            "INSERT INTO network_drop_state \
             (sandbox_id, total, evicted, other_destinations, capacity, updated_at_ms) \
             VALUES (?, 0, 0, 0, ?, ?)",
        )
        .bind(id.as_str())
        .bind(to_i64(capacity))
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Stores `snapshot` atomically: counters replaced, ring entries with `seq >= next_seq`
    /// appended, the oldest beyond the capacity dropped.
    pub async fn flush_network_drops(
        &self,
        id: &SandboxId,
        snapshot: &DropSnapshot,
        next_seq: u64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for (reason, count) in &snapshot.by_reason {
            sqlx::query(
                "INSERT INTO network_drop_reasons (sandbox_id, reason, count) VALUES (?, ?, ?) \
                 ON CONFLICT (sandbox_id, reason) DO UPDATE SET count = excluded.count",
            )
            .bind(id.as_str())
            .bind(reason.as_str())
            .bind(to_i64(*count))
            .execute(&mut *tx)
            .await?;
        }
        for (dest, count) in &snapshot.by_destination {
            sqlx::query(
                "INSERT INTO network_drop_destinations \
                 (sandbox_id, protocol, address, port, count) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT (sandbox_id, protocol, address, port) \
                 DO UPDATE SET count = excluded.count",
            )
            .bind(id.as_str())
            .bind(i64::from(dest.protocol))
            .bind(dest.addr.to_string())
            .bind(dest.port.map_or(NO_PORT, i64::from))
            .bind(to_i64(*count))
            .execute(&mut *tx)
            .await?;
        }
        for entry in snapshot.recent.iter().filter(|e| e.seq >= next_seq) {
            insert_drop(&mut tx, id, entry).await?;
        }
        sqlx::query(
            "DELETE FROM network_drop_recent WHERE sandbox_id = ? AND id NOT IN \
             (SELECT id FROM network_drop_recent WHERE sandbox_id = ? ORDER BY id DESC LIMIT ?)",
        )
        .bind(id.as_str())
        .bind(id.as_str())
        .bind(i64::try_from(snapshot.capacity).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO network_drop_state \
             (sandbox_id, total, evicted, other_destinations, capacity, updated_at_ms) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (sandbox_id) DO UPDATE SET \
             total = excluded.total, evicted = excluded.evicted, \
             other_destinations = excluded.other_destinations, capacity = excluded.capacity, \
             updated_at_ms = excluded.updated_at_ms",
        )
        .bind(id.as_str())
        .bind(to_i64(snapshot.total))
        .bind(to_i64(snapshot.evicted))
        .bind(to_i64(snapshot.other_destinations))
        .bind(i64::try_from(snapshot.capacity).unwrap_or(i64::MAX))
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The stored drop log of `id`, or `None` if it never had one (no network, or no
    /// supervisor yet).
    pub async fn network_drops(&self, id: &SandboxId) -> Result<Option<NetworkDrops>, StoreError> {
        let Some(state) = sqlx::query("SELECT * FROM network_drop_state WHERE sandbox_id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let by_reason = sqlx::query(
            "SELECT reason, count FROM network_drop_reasons WHERE sandbox_id = ? \
             ORDER BY count DESC, reason",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(DropReasonCount {
                reason: row.try_get("reason")?,
                count: to_u64(row.try_get("count")?),
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
        let by_destination = sqlx::query(
            "SELECT protocol, address, port, count FROM network_drop_destinations \
             WHERE sandbox_id = ? ORDER BY count DESC, address, port",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(DropDestinationCount {
                protocol: u8::try_from(row.try_get::<i64, _>("protocol")?).unwrap_or(0),
                address: row.try_get("address")?,
                port: port_of(Some(row.try_get("port")?)),
                count: to_u64(row.try_get("count")?),
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
        Ok(Some(NetworkDrops {
            total: to_u64(state.try_get("total")?),
            evicted: to_u64(state.try_get("evicted")?),
            other_destinations: to_u64(state.try_get("other_destinations")?),
            by_reason,
            by_destination,
            recent: self.network_drops_recent(id, 0).await?,
        }))
    }

    /// Recent drops stored after row `after` (0 for all), oldest first.
    pub async fn network_drops_recent(
        &self,
        id: &SandboxId,
        after: i64,
    ) -> Result<Vec<StoredDrop>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM network_drop_recent WHERE sandbox_id = ? AND id > ? ORDER BY id",
        )
        .bind(id.as_str())
        .bind(after)
        .fetch_all(&self.pool)
        .await?;
        let drops = rows
            .iter()
            .map(|row| {
                Ok(StoredDrop {
                    id: row.try_get("id")?,
                    time_ms: row.try_get("time_ms")?,
                    reason: row.try_get("reason")?,
                    protocol: u8::try_from(row.try_get::<i64, _>("protocol")?).unwrap_or(0),
                    source: row.try_get("source")?,
                    source_port: port_of(row.try_get("source_port")?),
                    destination: row.try_get("destination")?,
                    port: port_of(row.try_get("port")?),
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(drops)
    }
}

async fn insert_drop(
    tx: &mut Transaction<'_, Sqlite>,
    id: &SandboxId,
    entry: &hearth_net::droplog::DropEntry,
) -> Result<(), StoreError> {
    let e = &entry.event;
    sqlx::query(
        "INSERT INTO network_drop_recent (sandbox_id, seq, time_ms, reason, protocol, source, \
         source_port, destination, port) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(id.as_str())
    .bind(to_i64(entry.seq))
    .bind(to_i64(entry.at_unix_ms))
    .bind(e.reason.as_str())
    .bind(i64::from(e.protocol))
    .bind(e.src.to_string())
    .bind(e.src_port.map(i64::from))
    .bind(e.dst.to_string())
    .bind(e.dst_port.map(i64::from))
    .execute(&mut **tx)
    .await?;
    Ok(())
}
