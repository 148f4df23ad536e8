//! Waiting for `hearth-guest` to answer after `InstanceStart`, while watching the VMM.

use std::time::Duration;

use super::FirecrackerBackend;
use crate::backend::firecracker::FirecrackerError;
use crate::backend::vm::boot_wait::{wait_for_guest, BootWait};
use crate::guest_client::GuestClient;
use crate::id::SandboxId;

/// How many lines of the VMM's logs a boot error carries.
const TAIL_LINES: usize = 3;

impl FirecrackerBackend {
    /// Waits until `client` (the sandbox's guest socket, served by the relay over the vsock
    /// socket) answers health. A VMM that exits, or a guest not ready within `timeout`, fails
    /// with the end of the VMM's logs (the guest console is its stdout); the VM is then removed
    /// (read [`Self::vmm_exit`] or [`Self::vmm_log_tail`] first: removal deletes the logs).
    pub async fn wait_guest_ready(
        &self,
        id: &SandboxId,
        client: &GuestClient,
        timeout: Duration,
    ) -> Result<hearth_proto::Health, FirecrackerError> {
        let mut alive_error = None;
        let waited = wait_for_guest(client, timeout, || match self.vm_running(id) {
            Ok(alive) => alive,
            Err(err) => {
                alive_error = Some(err);
                false
            }
        })
        .await;
        if let Some(err) = alive_error {
            return Err(err);
        }
        match waited {
            BootWait::Ready(health) => Ok(health),
            BootWait::Died => Err(FirecrackerError::DiedBooting {
                id: id.clone(),
                tail: self.short_tail(id),
            }),
            BootWait::TimedOut(waited) => Err(FirecrackerError::BootTimeout {
                id: id.clone(),
                waited,
                tail: self.short_tail(id),
            }),
        }
    }

    /// The last few non-empty lines of the VMM's logs, on one line.
    fn short_tail(&self, id: &SandboxId) -> String {
        let log = self.vmm_log_tail(id);
        let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(TAIL_LINES)..].join(" | ")
    }
}
