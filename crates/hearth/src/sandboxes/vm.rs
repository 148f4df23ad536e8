//! What only microVM sandboxes can do (pause and resume here; snapshots in `snapshot`), through
//! their backend's [`VmControl`] capability, and noticing a VMM that died on the way.

use std::time::{Duration, Instant};

use hearth_sandbox::backend::{BackendError, SandboxBackend, VmControl};
use hearth_sandbox::SandboxId;

use super::{SandboxError, SandboxManager};
use crate::store::SandboxStatus;

/// After a VM call fails, how long the VMM may take to finish dying for the failure to be
/// taken as its exit (a dying VMM drops its socket before the process is gone).
pub(super) const EXIT_GRACE: Duration = Duration::from_secs(2);

/// How long to watch for the VMM's exit after a VM call failed with `err`.
pub(super) fn grace_for(err: &BackendError) -> Duration {
    if err.may_mean_vmm_gone() {
        EXIT_GRACE
    } else {
        Duration::ZERO
    }
}

impl SandboxManager {
    /// Pauses (`pause`) or resumes a running microVM sandbox; returns the VMM's status
    /// afterwards.
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
        let backend = self.backends.get(record.spec.backend)?;
        let vm = self.vm_of(backend, id, action)?;
        let sent = if pause {
            vm.pause(id).await
        } else {
            vm.resume(id).await
        };
        if let Err(err) = &sent {
            // A VMM that died (of its own filter, say) on this call says so in the audit.
            self.note_if_gone(backend, id, grace_for(err)).await?;
        }
        Ok(sent?)
    }

    /// The VM capability of `backend`, or why a sandbox of it can't `action`.
    pub(super) fn vm_of<'a>(
        &self,
        backend: &'a dyn SandboxBackend,
        id: &SandboxId,
        action: &'static str,
    ) -> Result<&'a dyn VmControl, SandboxError> {
        backend.vm().ok_or_else(|| SandboxError::NotAVm {
            id: id.clone(),
            backend: backend.kind(),
            action,
        })
    }

    /// If the sandbox's VMM is gone, or goes within `grace`: what its backend can tell about
    /// the end goes into the audit and the sandbox is marked exited (so it is recorded
    /// once). Returns whether it was gone.
    pub(super) async fn note_if_gone(
        &self,
        backend: &dyn SandboxBackend,
        id: &SandboxId,
        grace: Duration,
    ) -> Result<bool, SandboxError> {
        let started = Instant::now();
        while backend.is_running(id).await? {
            if started.elapsed() >= grace {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.mark_ended(backend, id, "the VMM exited").await?;
        Ok(true)
    }
}
