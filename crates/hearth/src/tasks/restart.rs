//! What a daemon does on start about tasks an earlier hearth process left unfinished.
//!
//! A task whose owner process is gone is marked `interrupted` (the `state` event says which
//! process and in which state) and its sandbox removed. Queued tasks are interrupted too, not
//! re-queued: the API runs a task at most once, under the daemon that accepted it, and a task
//! that surfaces hours later against a workspace that moved on would surprise more than a
//! resubmit costs.

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

use super::TaskError;
use crate::sandboxes::{SandboxError, SandboxManager};
use crate::store::{TaskId, TaskOutcome, TaskStatus};

/// Interrupts the unfinished tasks of dead hearth processes; returns their ids.
pub async fn interrupt_abandoned(
    manager: &SandboxManager,
    tasks_dir: &std::path::Path,
) -> Result<Vec<TaskId>, TaskError> {
    let store = &manager.store;
    let mut interrupted = Vec::new();
    for task in store.unfinished_tasks().await? {
        if task.owner_pid == std::process::id() || process_alive(task.owner_pid) {
            continue;
        }
        // The sandbox goes first: a crash between the two steps then leaves a task that the
        // next start interrupts again, never a sandbox that nothing would remove.
        match manager.remove(&task.id.sandbox_id(), true).await {
            Ok(()) | Err(SandboxError::NotFound(_)) => {}
            Err(err) => {
                tracing::warn!(task = %task.id, error = %err, "removing an interrupted task's sandbox")
            }
        }
        let _ = std::fs::remove_dir_all(tasks_dir.join(task.id.as_str()).join("baseline"));
        let outcome = TaskOutcome {
            reason: Some(format!(
                "interrupted: the hearth process running it (pid {}) stopped while the task was {}",
                task.owner_pid, task.status
            )),
            ..TaskOutcome::default()
        };
        if store
            .finish_task(&task.id, TaskStatus::Interrupted, &outcome)
            .await?
        {
            tracing::info!(task = %task.id, was = %task.status, "interrupted a task of a dead hearth process");
            interrupted.push(task.id);
        }
    }
    Ok(interrupted)
}

/// Whether a process with this pid exists (a zombie or another user's process counts).
fn process_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    !matches!(kill(Pid::from_raw(raw), None), Err(Errno::ESRCH))
}
