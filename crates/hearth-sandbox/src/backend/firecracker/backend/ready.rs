//! Waiting for `hearth-guest` to answer after `InstanceStart`, while watching the VMM.

use std::time::{Duration, Instant};

use super::FirecrackerBackend;
use crate::backend::firecracker::FirecrackerError;
use crate::backend::vm::relay::FIRST_ANSWER_TIMEOUT;
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
        let start = Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            // Longer than the relay's first-answer timeout, so the relay's 502 arrives first.
            let limit = FIRST_ANSWER_TIMEOUT + Duration::from_secs(2);
            if let Ok(Ok(health)) = tokio::time::timeout(limit, client.health()).await {
                return Ok(health);
            }
            if !self.vm_running(id)? {
                return Err(FirecrackerError::DiedBooting {
                    id: id.clone(),
                    tail: self.short_tail(id),
                });
            }
            if start.elapsed() >= timeout {
                return Err(FirecrackerError::BootTimeout {
                    id: id.clone(),
                    waited: start.elapsed(),
                    tail: self.short_tail(id),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// The last few non-empty lines of the VMM's logs, on one line.
    fn short_tail(&self, id: &SandboxId) -> String {
        let log = self.vmm_log_tail(id);
        let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(TAIL_LINES)..].join(" | ")
    }
}
