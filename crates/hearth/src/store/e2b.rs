//! Rows of the `e2b_sandboxes` table: what the E2B-compatible front end keeps about the
//! sandboxes it created (see `crate::e2b`).

use std::collections::BTreeMap;

use hearth_sandbox::SandboxId;
use sqlx::Row;

use super::{Store, StoreError};

/// One sandbox created through the E2B API. `Debug` leaves out the token and the env vars.
#[derive(Clone, PartialEq, Eq)]
pub struct E2bSandbox {
    pub id: SandboxId,
    pub template_id: String,
    pub metadata: BTreeMap<String, String>,
    /// Variables every command of the sandbox gets (a command's own win).
    pub env_vars: BTreeMap<String, String>,
    /// The envd access token the data plane checks. Never logged.
    pub access_token: String,
    /// Unix milliseconds.
    pub started_at: i64,
    /// When hearth removes it (Unix ms); `None` while paused.
    pub end_at: Option<i64>,
    pub paused: bool,
}

impl std::fmt::Debug for E2bSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2bSandbox")
            .field("id", &self.id)
            .field("template_id", &self.template_id)
            .field("metadata", &self.metadata)
            .field(
                "env_vars",
                &format_args!("<{} redacted>", self.env_vars.len()),
            )
            .field("access_token", &format_args!("<redacted>"))
            .field("started_at", &self.started_at)
            .field("end_at", &self.end_at)
            .field("paused", &self.paused)
            .finish()
    }
}

impl Store {
    pub async fn insert_e2b(&self, row: &E2bSandbox) -> Result<(), StoreError> {
        let json = |map: &BTreeMap<String, String>| serde_json::to_string(map).unwrap_or_default();
        sqlx::query(
            "INSERT INTO e2b_sandboxes (id, template_id, metadata, env_vars, access_token, \
             started_at, end_at, paused) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(row.id.as_str())
        .bind(&row.template_id)
        .bind(json(&row.metadata))
        .bind(json(&row.env_vars))
        .bind(&row.access_token)
        .bind(row.started_at)
        .bind(row.end_at)
        .bind(row.paused)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn get_e2b(&self, id: &SandboxId) -> Result<Option<E2bSandbox>, StoreError> {
        let row = sqlx::query("SELECT * FROM e2b_sandboxes WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| e2b_from_row(&row)).transpose()
    }

    pub async fn list_e2b(&self) -> Result<Vec<E2bSandbox>, StoreError> {
        let rows = sqlx::query("SELECT * FROM e2b_sandboxes ORDER BY started_at, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(e2b_from_row).collect()
    }

    /// Claims the sandboxes whose deadline is at or before `now_ms`: each one's deadline moves
    /// to `retry_at` in the same statement, so a `set_timeout` that lands meanwhile is not
    /// overtaken by a stale read, and a removal that fails is tried again at `retry_at`.
    pub async fn claim_expired_e2b(
        &self,
        now_ms: i64,
        retry_at: i64,
    ) -> Result<Vec<SandboxId>, StoreError> {
        let rows = sqlx::query(
            "UPDATE e2b_sandboxes SET end_at = ? \
             WHERE end_at IS NOT NULL AND end_at <= ? RETURNING id",
        )
        .bind(retry_at)
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let raw: String = row.try_get("id")?;
                SandboxId::parse(&raw).map_err(|err| StoreError::Corrupt {
                    id: raw.clone(),
                    problem: err.to_string(),
                })
            })
            .collect()
    }

    /// Sets a running sandbox's deadline; false if there is no such row or it is paused.
    pub async fn set_e2b_deadline(&self, id: &SandboxId, end_at: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE e2b_sandboxes SET end_at = ? WHERE id = ? AND paused = 0")
            .bind(end_at)
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The earliest deadline of any sandbox, to sleep until.
    pub async fn next_e2b_deadline(&self) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT MIN(end_at) AS next FROM e2b_sandboxes")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>("next")?)
    }

    /// Sets the deadline and the paused flag; false if there is no such row.
    pub async fn set_e2b_state(
        &self,
        id: &SandboxId,
        end_at: Option<i64>,
        paused: bool,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE e2b_sandboxes SET end_at = ?, paused = ? WHERE id = ?")
            .bind(end_at)
            .bind(paused)
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn delete_e2b(&self, id: &SandboxId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM e2b_sandboxes WHERE id = ?")
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

fn e2b_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<E2bSandbox, StoreError> {
    let raw: String = row.try_get("id")?;
    let corrupt = |problem: String| StoreError::Corrupt {
        id: raw.clone(),
        problem,
    };
    let map = |column: &str| -> Result<BTreeMap<String, String>, StoreError> {
        let text: String = row.try_get(column)?;
        serde_json::from_str(&text).map_err(|err| corrupt(format!("{column}: {err}")))
    };
    Ok(E2bSandbox {
        id: SandboxId::parse(&raw).map_err(|err| corrupt(err.to_string()))?,
        template_id: row.try_get("template_id")?,
        metadata: map("metadata")?,
        env_vars: map("env_vars")?,
        access_token: row.try_get("access_token")?,
        started_at: row.try_get("started_at")?,
        end_at: row.try_get("end_at")?,
        paused: row.try_get("paused")?,
    })
}
