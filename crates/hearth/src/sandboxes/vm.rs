//! What only microVM sandboxes can do: pause and resume.

use hearth_sandbox::backend::{BackendError, BackendKind};
use hearth_sandbox::SandboxId;

use super::{SandboxError, SandboxManager};
use crate::store::SandboxStatus;

impl SandboxManager {
    /// Pauses (`pause`) or resumes a running QEMU sandbox; returns QEMU's status afterwards.
    pub async fn set_paused(&self, id: &SandboxId, pause: bool) -> Result<String, SandboxError> {
        let record = self.get(id).await?;
        let action = if pause { "pause" } else { "resume" };
        record
            .status
            .check(record.status == SandboxStatus::Running, action)
            .map_err(|source| SandboxError::Status {
                id: id.clone(),
                source,
            })?;
        let qemu = match (record.spec.backend, &self.qemu) {
            (BackendKind::Qemu, Some(qemu)) => qemu.clone(),
            (BackendKind::Qemu, None) => {
                return Err(SandboxError::BackendUnavailable(BackendKind::Qemu))
            }
            (kind, _) => {
                return Err(SandboxError::NotAVm {
                    id: id.clone(),
                    backend: kind,
                    action,
                })
            }
        };
        let id = id.clone();
        // QMP is a blocking exchange with a 5 s timeout.
        let status = tokio::task::spawn_blocking(move || {
            if pause {
                qemu.pause(&id)?;
            } else {
                qemu.resume(&id)?;
            }
            qemu.status(&id)
        })
        .await?
        .map_err(BackendError::from)?;
        Ok(status.status)
    }
}
