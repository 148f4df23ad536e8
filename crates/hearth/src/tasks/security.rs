//! A task's syscall denials and firewall drops, copied into its timeline.
//!
//! The sandbox's supervisor stores both as they happen (flushing every second); while the agent
//! runs, the runner polls the store for rows newer than the last it copied and appends them to
//! the task's timeline as `syscall_denied` and `network_drop` events, so `hearth task show`, the
//! export and the SSE stream carry them in order with the LLM and tool calls. The per-sandbox
//! audit keeps its own exact counts; the timeline gets each recent entry once.

use hearth_sandbox::SandboxId;
use serde_json::{json, Value};

use crate::store::{Store, StoreError, StoredDrop, StoredEntry, TaskId};

/// A timeline kind and its data, as appended.
pub type SecurityEvent = (&'static str, Value);

/// Copies new audit rows of one sandbox into one task's timeline.
#[derive(Debug)]
pub struct SecurityFeed {
    store: Store,
    task: TaskId,
    sandbox: SandboxId,
    last_entry: i64,
    last_drop: i64,
}

impl SecurityFeed {
    pub fn new(store: Store, task: TaskId, sandbox: SandboxId) -> Self {
        Self {
            store,
            task,
            sandbox,
            last_entry: 0,
            last_drop: 0,
        }
    }

    /// Appends what is new since the last call and returns it (oldest first).
    pub async fn poll(&mut self) -> Result<Vec<SecurityEvent>, StoreError> {
        let mut events = Vec::new();
        for stored in self
            .store
            .seccomp_audit_recent(&self.sandbox, self.last_entry)
            .await?
        {
            self.last_entry = stored.id;
            events.push(("syscall_denied", denial(&stored)));
        }
        for stored in self
            .store
            .network_drops_recent(&self.sandbox, self.last_drop)
            .await?
        {
            self.last_drop = stored.id;
            events.push(("network_drop", drop_event(&stored)));
        }
        for (kind, data) in &events {
            self.store.append_event(&self.task, kind, data).await?;
        }
        Ok(events)
    }
}

fn denial(stored: &StoredEntry) -> Value {
    let e = &stored.entry;
    json!({
        "time_ms": e.time_ms, "syscall": e.syscall_name, "nr": e.syscall_nr,
        "action": e.action.as_str(), "source": e.source, "pid": e.pid, "comm": e.comm,
        "exe": e.exe,
    })
}

fn drop_event(stored: &StoredDrop) -> Value {
    json!({
        "time_ms": stored.time_ms, "reason": stored.reason, "protocol": stored.protocol,
        "source": stored.source, "destination": stored.destination, "port": stored.port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_seccomp::audit::{AuditAction, AuditEntry, AuditSource};

    #[test]
    fn a_denial_keeps_what_a_reader_needs() {
        let mut entry = AuditEntry::new(
            hearth_seccomp::audit::native_arch(),
            101,
            [0; 6],
            AuditAction::DeniedEperm,
            AuditSource::Guest,
        );
        entry.syscall_name = Some("ptrace".into());
        entry.comm = Some("python3".into());
        let value = denial(&StoredEntry { id: 7, entry });
        assert_eq!(value["syscall"], "ptrace");
        assert_eq!(value["nr"], 101);
        assert_eq!(value["comm"], "python3");
    }
}
