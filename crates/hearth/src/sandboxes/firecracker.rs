//! What the manager does for Firecracker sandboxes only: waiting for the guest while watching
//! the VMM, pause and resume through `PATCH /vm`, and recording a VMM seccomp fault (exit
//! status 148) in the sandbox's audit when its exit is observed.

use hearth_sandbox::backend::{BackendError, BackendKind, SandboxBackend};
use hearth_sandbox::guest_client::GuestClient;
use hearth_sandbox::SandboxId;
use hearth_seccomp::audit::{AuditConfig, SeccompAuditLog, VmmFault, DEFAULT_WINDOW};

use std::time::{Duration, Instant};

use super::{SandboxError, SandboxManager, VM_READY_TIMEOUT};

/// After an API call fails, how long the VMM may take to finish dying for the failure to be
/// taken as its exit (a dying VMM drops its socket before the process is gone).
pub(super) const EXIT_GRACE: Duration = Duration::from_secs(2);

impl SandboxManager {
    pub(super) fn firecracker_backend(
        &self,
    ) -> Result<&hearth_sandbox::backend::FirecrackerBackend, SandboxError> {
        self.firecracker
            .as_deref()
            .ok_or_else(|| self.backends.unavailable(BackendKind::Firecracker))
    }

    /// Waits for the new VM's guest; a VMM that died on the way (a seccomp fault, say) is
    /// recorded in the audit before the error removes its logs.
    pub(super) async fn wait_firecracker_ready(
        &self,
        id: &SandboxId,
        client: &GuestClient,
    ) -> Result<(), SandboxError> {
        let backend = self.firecracker_backend()?;
        match backend.wait_guest_ready(id, client, VM_READY_TIMEOUT).await {
            Ok(_) => Ok(()),
            Err(err) => {
                self.record_vmm_exit(id).await;
                Err(BackendError::from(err).into())
            }
        }
    }

    /// `PATCH /vm` Paused or Resumed; returns Firecracker's state afterwards.
    pub(super) async fn set_firecracker_paused(
        &self,
        id: &SandboxId,
        pause: bool,
    ) -> Result<String, SandboxError> {
        let backend = self.firecracker_backend()?;
        let sent = if pause {
            backend.pause(id).await
        } else {
            backend.resume(id).await
        };
        if let Err(err) = sent {
            // A VMM that died (of its own filter, say) on this call says so in the audit.
            self.note_vmm_gone(id, EXIT_GRACE).await?;
            return Err(BackendError::from(err).into());
        }
        let info = backend
            .api_client(id)
            .instance_info()
            .await
            .map_err(|err| {
                BackendError::from(hearth_sandbox::backend::FirecrackerError::from(err))
            })?;
        Ok(info.state.to_lowercase())
    }

    /// If the sandbox's VMM is gone, or goes within `grace`: its exit goes into the audit and
    /// the sandbox is marked exited (so it is recorded once). Returns whether it was gone.
    pub(super) async fn note_vmm_gone(
        &self,
        id: &SandboxId,
        grace: Duration,
    ) -> Result<bool, SandboxError> {
        let backend = self.firecracker_backend()?;
        let started = Instant::now();
        while backend.is_running(id)? {
            if started.elapsed() >= grace {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.record_vmm_exit(id).await;
        self.store
            .set_sandbox_status(
                id,
                crate::store::SandboxStatus::Exited,
                Some("the VMM exited"),
            )
            .await?;
        Ok(true)
    }

    /// Once a Firecracker sandbox's VMM is found gone: its exit status (when this process
    /// spawned it) and its logs tell whether its own seccomp filter killed it; if so the
    /// syscall goes into the sandbox's audit, as a `vmm_fault` entry. Best effort: a failure
    /// to record is logged, the caller goes on.
    pub(super) async fn record_vmm_exit(&self, id: &SandboxId) {
        let Some(backend) = self.firecracker.as_deref() else {
            return;
        };
        let (status, log) = match backend.vmm_exit(id) {
            Some(exit) => (exit.exit_status(), exit.log),
            // Not our child (the CLI that created it has exited): the log still names the call.
            None => (-1, backend.vmm_log_tail(id)),
        };
        let mut audit = match SeccompAuditLog::new(AuditConfig::default()) {
            Ok(audit) => audit,
            Err(err) => {
                tracing::warn!(%id, %err, "cannot classify the VMM's exit");
                return;
            }
        };
        if audit.record_vmm_fault(status, &log) == VmmFault::None {
            return;
        }
        let window_ms = u64::try_from(DEFAULT_WINDOW.as_millis()).unwrap_or(60_000);
        let capacity = hearth_seccomp::audit::DEFAULT_CAPACITY as u64;
        let entries = audit.recent_since(0);
        let entries = if entries.is_empty() {
            // Exit 148 without a log line naming the call: still a fault, number unknown.
            vec![hearth_seccomp::audit::AuditEntry::vmm_fault(-1)]
        } else {
            entries
        };
        for entry in &entries {
            if let Err(err) = self
                .store
                .record_seccomp_entry(id, entry, window_ms, capacity)
                .await
            {
                tracing::warn!(%id, %err, "cannot record the VMM's seccomp fault in the audit");
            }
        }
        tracing::warn!(%id, status, "the Firecracker VMM was killed by its seccomp filter");
    }
}
