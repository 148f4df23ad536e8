//! Agent tasks, their lifecycle and their timeline.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use hearth_sandbox::SandboxId;
use serde::{Deserialize, Serialize};
use sqlx::{Row, SqliteConnection};
use tokio::sync::watch;

use super::sandboxes::now_ms;
use super::{Store, StoreError};

/// Bumped after every timeline write of this process, so live followers (the API's event
/// streams) re-read the store instead of polling it. Process-wide because every writer
/// (runner, gateway recorder, API) shares the one database; writers in other processes are not
/// seen here, which is why followers also re-read now and then.
static TIMELINE_CHANGED: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::channel(0).0);

fn timeline_changed() {
    TIMELINE_CHANGED.send_modify(|n| *n = n.wrapping_add(1));
}

/// A validated task id. Task ids are also valid sandbox ids: a task's sandbox is named after it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskId(SandboxId);

impl TaskId {
    /// A fresh random id, `t-` and 12 characters.
    pub fn generate() -> Self {
        let sandbox = SandboxId::generate();
        let suffix = sandbox.as_str().trim_start_matches("sb-");
        Self(
            SandboxId::parse(&format!("t-{suffix}"))
                .expect("t- plus a generated suffix is a valid id"),
        )
    }

    pub fn parse(raw: &str) -> Result<Self, hearth_sandbox::IdError> {
        SandboxId::parse(raw).map(Self)
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The id of the sandbox this task runs in.
    pub fn sandbox_id(&self) -> SandboxId {
        self.0.clone()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for TaskId {
    type Error = hearth_sandbox::IdError;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<TaskId> for String {
    fn from(id: TaskId) -> Self {
        id.as_str().to_owned()
    }
}

/// Where a task is in its life.
///
/// ```text
/// queued -> starting -> running -> succeeded | failed | timed_out | cancelled
///    \__________\__________\_____> cancelled, interrupted (the daemon died mid-task)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Queued,
    Starting,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    Interrupted,
}

impl TaskStatus {
    pub const ALL: [Self; 8] = [
        Self::Queued,
        Self::Starting,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::TimedOut,
        Self::Cancelled,
        Self::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
            Self::Interrupted => "interrupted",
        }
    }

    /// Finished tasks never change again.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Queued | Self::Starting | Self::Running)
    }

    pub fn can_start(self) -> bool {
        self == Self::Queued
    }

    pub fn can_run(self) -> bool {
        self == Self::Starting
    }

    /// Whether `next` may follow this status.
    pub fn can_become(self, next: Self) -> bool {
        match next {
            Self::Queued => false,
            Self::Starting => self.can_start(),
            Self::Running => self.can_run(),
            Self::Cancelled | Self::Interrupted | Self::Failed => !self.is_final(),
            Self::Succeeded | Self::TimedOut => self == Self::Running,
        }
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == raw)
            .ok_or_else(|| format!("unknown task status {raw:?}"))
    }
}

/// A task as stored.
#[derive(Debug, Clone, Serialize)]
pub struct TaskRecord {
    pub id: TaskId,
    pub status: TaskStatus,
    pub prompt: String,
    pub model: String,
    pub spec: serde_json::Value,
    pub owner_pid: u32,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub answer: Option<String>,
    pub reason: Option<String>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub diff: Option<String>,
}

/// One timeline entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    pub seq: i64,
    pub ts_ms: i64,
    pub kind: String,
    pub data: serde_json::Value,
}

/// How a task ended, written once.
#[derive(Debug, Clone, Default)]
pub struct TaskOutcome {
    pub answer: Option<String>,
    pub reason: Option<String>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub diff: Option<String>,
}

impl Store {
    pub async fn insert_task(
        &self,
        id: &TaskId,
        prompt: &str,
        model: &str,
        spec: &serde_json::Value,
    ) -> Result<TaskRecord, StoreError> {
        let now = now_ms();
        sqlx::query("INSERT INTO tasks (id, status, prompt, model, spec, owner_pid, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)")
            .bind(id.as_str())
            .bind(TaskStatus::Queued.as_str())
            .bind(prompt)
            .bind(model)
            .bind(spec.to_string())
            .bind(i64::from(std::process::id()))
            .bind(now)
            .execute(&self.pool)
            .await?;
        self.get_task(id).await?.ok_or_else(|| StoreError::Corrupt {
            id: id.to_string(),
            problem: "vanished after insert".to_owned(),
        })
    }

    /// Moves a task to `next` if its lifecycle allows it; returns whether it moved. The check
    /// and the update are one statement, so two processes cannot both finish a task.
    pub async fn transition_task(&self, id: &TaskId, next: TaskStatus) -> Result<bool, StoreError> {
        let mut conn = self.pool.acquire().await?;
        transition_on(&mut conn, id, next).await
    }

    /// Ends a task in one transaction: outcome, final status and the `state` event saying so.
    /// A reader that sees the final status therefore also finds the event (the API's event
    /// stream ends on it). Returns false, changing nothing, when the task was already final.
    pub async fn finish_task(
        &self,
        id: &TaskId,
        status: TaskStatus,
        outcome: &TaskOutcome,
    ) -> Result<bool, StoreError> {
        debug_assert!(status.is_final());
        let mut tx = self.pool.begin().await?;
        if !transition_on(&mut tx, id, status).await? {
            return Ok(false);
        }
        sqlx::query("UPDATE tasks SET answer = ?, reason = ?, prompt_tokens = ?, completion_tokens = ?, diff = ? WHERE id = ?")
            .bind(&outcome.answer)
            .bind(&outcome.reason)
            .bind(outcome.prompt_tokens)
            .bind(outcome.completion_tokens)
            .bind(&outcome.diff)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        let data = serde_json::json!({"status": status, "reason": outcome.reason});
        append_on(&mut tx, id, "state", &data).await?;
        tx.commit().await?;
        timeline_changed();
        Ok(true)
    }

    /// A receiver that changes whenever this process appends to any task's timeline.
    pub fn timeline_changes(&self) -> watch::Receiver<u64> {
        TIMELINE_CHANGED.subscribe()
    }

    /// Tasks not yet final (queued, starting, running), oldest first.
    pub async fn unfinished_tasks(&self) -> Result<Vec<TaskRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM tasks WHERE status IN ('queued', 'starting', 'running') ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(task_from_row).collect()
    }

    pub async fn get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM tasks WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| task_from_row(&row)).transpose()
    }

    pub async fn list_tasks(&self) -> Result<Vec<TaskRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM tasks ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(task_from_row).collect()
    }

    /// Appends a timeline event; its sequence number is the task's next one.
    pub async fn append_event(
        &self,
        id: &TaskId,
        kind: &str,
        data: &serde_json::Value,
    ) -> Result<i64, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let seq = append_on(&mut conn, id, kind, data).await?;
        timeline_changed();
        Ok(seq)
    }

    /// Events after `after_seq`, in order.
    pub async fn events_after(
        &self,
        id: &TaskId,
        after_seq: i64,
    ) -> Result<Vec<TaskEvent>, StoreError> {
        let rows = sqlx::query("SELECT seq, ts_ms, kind, data FROM task_events WHERE task_id = ? AND seq > ? ORDER BY seq")
            .bind(id.as_str())
            .bind(after_seq)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let data: String = row.try_get("data")?;
                Ok(TaskEvent {
                    seq: row.try_get("seq")?,
                    ts_ms: row.try_get("ts_ms")?,
                    kind: row.try_get("kind")?,
                    data: serde_json::from_str(&data).unwrap_or(serde_json::Value::String(data)),
                })
            })
            .collect()
    }
}

async fn transition_on(
    conn: &mut SqliteConnection,
    id: &TaskId,
    next: TaskStatus,
) -> Result<bool, StoreError> {
    let allowed: Vec<&str> = TaskStatus::ALL
        .into_iter()
        .filter(|s| s.can_become(next))
        .map(TaskStatus::as_str)
        .collect();
    let placeholders = vec!["?"; allowed.len()].join(", ");
    let stamp_column = match next {
        TaskStatus::Starting => Some("started_at"),
        s if s.is_final() => Some("finished_at"),
        _ => None,
    };
    let stamp = stamp_column
        .map(|c| format!(", {c} = ?"))
        .unwrap_or_default();
    let sql = format!("UPDATE tasks SET status = ?, owner_pid = ?{stamp} WHERE id = ? AND status IN ({placeholders})");
    let mut query = sqlx::query(&sql)
        .bind(next.as_str())
        .bind(i64::from(std::process::id()));
    if stamp_column.is_some() {
        query = query.bind(now_ms());
    }
    query = query.bind(id.as_str());
    for status in allowed {
        query = query.bind(status);
    }
    Ok(query.execute(conn).await?.rows_affected() == 1)
}

async fn append_on(
    conn: &mut SqliteConnection,
    id: &TaskId,
    kind: &str,
    data: &serde_json::Value,
) -> Result<i64, StoreError> {
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO task_events (task_id, seq, ts_ms, kind, data) \
         SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, ?, ? FROM task_events WHERE task_id = ? RETURNING seq",
    )
    .bind(id.as_str())
    .bind(now_ms())
    .bind(kind)
    .bind(data.to_string())
    .bind(id.as_str())
    .fetch_one(conn)
    .await?;
    Ok(seq)
}

fn task_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<TaskRecord, StoreError> {
    let raw_id: String = row.try_get("id")?;
    let corrupt = |problem: String| StoreError::Corrupt {
        id: raw_id.clone(),
        problem,
    };
    let status: String = row.try_get("status")?;
    let spec: String = row.try_get("spec")?;
    let owner_pid: i64 = row.try_get("owner_pid")?;
    Ok(TaskRecord {
        id: TaskId::parse(&raw_id).map_err(|err| corrupt(err.to_string()))?,
        status: status.parse().map_err(corrupt)?,
        prompt: row.try_get("prompt")?,
        model: row.try_get("model")?,
        spec: serde_json::from_str(&spec).map_err(|err| corrupt(err.to_string()))?,
        owner_pid: u32::try_from(owner_pid).map_err(|err| corrupt(err.to_string()))?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        answer: row.try_get("answer")?,
        reason: row.try_get("reason")?,
        prompt_tokens: row.try_get("prompt_tokens")?,
        completion_tokens: row.try_get("completion_tokens")?,
        diff: row.try_get("diff")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_guards() {
        use TaskStatus::*;
        let finals: Vec<_> = TaskStatus::ALL
            .into_iter()
            .filter(|s| s.is_final())
            .collect();
        assert_eq!(
            finals,
            vec![Succeeded, Failed, TimedOut, Cancelled, Interrupted]
        );
        for status in TaskStatus::ALL {
            assert!(!status.can_become(Queued));
            assert_eq!(status.as_str().parse::<TaskStatus>().unwrap(), status);
            if status.is_final() {
                assert!(
                    TaskStatus::ALL
                        .into_iter()
                        .all(|next| !status.can_become(next)),
                    "{status} is final"
                );
            }
        }
        assert!(Queued.can_become(Starting) && Starting.can_become(Running));
        assert!(Running.can_become(Succeeded) && Running.can_become(TimedOut));
        assert!(!Queued.can_become(Succeeded) && !Starting.can_become(Succeeded));
        assert!(Queued.can_become(Cancelled) && Running.can_become(Interrupted));
    }

    #[test]
    fn generated_ids_are_sandbox_ids() {
        let id = TaskId::generate();
        assert!(id.as_str().starts_with("t-"));
        assert_eq!(id.sandbox_id().as_str(), id.as_str());
        assert!(TaskId::parse("Bad").is_err());
    }

    #[tokio::test]
    async fn transitions_and_timeline() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).await.unwrap();
        let id = TaskId::generate();
        store
            .insert_task(&id, "fix it", "m", &serde_json::json!({}))
            .await
            .unwrap();
        assert!(
            !store
                .transition_task(&id, TaskStatus::Running)
                .await
                .unwrap(),
            "queued cannot jump to running"
        );
        assert!(store
            .transition_task(&id, TaskStatus::Starting)
            .await
            .unwrap());
        assert!(store
            .transition_task(&id, TaskStatus::Running)
            .await
            .unwrap());
        assert!(store
            .transition_task(&id, TaskStatus::Succeeded)
            .await
            .unwrap());
        assert!(
            !store
                .transition_task(&id, TaskStatus::Cancelled)
                .await
                .unwrap(),
            "final stays final"
        );
        let task = store.get_task(&id).await.unwrap().unwrap();
        assert_eq!(task.status, TaskStatus::Succeeded);
        assert!(task.started_at.is_some() && task.finished_at.is_some());

        assert_eq!(
            store
                .append_event(&id, "a", &serde_json::json!({"n": 1}))
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            store
                .append_event(&id, "b", &serde_json::json!({"n": 2}))
                .await
                .unwrap(),
            2
        );
        let events = store.events_after(&id, 1).await.unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, "b");
        assert_eq!(events[0].data["n"], 2);
    }

    #[tokio::test]
    async fn finishing_is_atomic_and_once() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).await.unwrap();
        let id = TaskId::generate();
        store
            .insert_task(&id, "p", "m", &serde_json::json!({}))
            .await
            .unwrap();
        assert_eq!(store.unfinished_tasks().await.unwrap().len(), 1);
        let changes = store.timeline_changes();
        let outcome = TaskOutcome {
            reason: Some("stopped".into()),
            ..TaskOutcome::default()
        };
        assert!(store
            .finish_task(&id, TaskStatus::Interrupted, &outcome)
            .await
            .unwrap());
        assert!(changes.has_changed().unwrap(), "followers are woken");
        assert!(
            !store
                .finish_task(&id, TaskStatus::Cancelled, &outcome)
                .await
                .unwrap(),
            "a final task is not finished twice"
        );
        let task = store.get_task(&id).await.unwrap().unwrap();
        assert_eq!(task.status, TaskStatus::Interrupted);
        assert_eq!(task.reason.as_deref(), Some("stopped"));
        let events = store.events_after(&id, 0).await.unwrap();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].data["status"], "interrupted");
        assert!(store.unfinished_tasks().await.unwrap().is_empty());
    }
}
