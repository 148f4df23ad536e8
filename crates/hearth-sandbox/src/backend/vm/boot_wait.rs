//! Waiting for a booting VM's `hearth-guest` to answer, while watching its VMM: the one loop
//! both VM backends use.

use std::time::{Duration, Instant};

use crate::guest_client::GuestClient;

use super::relay::FIRST_ANSWER_TIMEOUT;

/// How a boot wait ended.
#[derive(Debug)]
pub enum BootWait {
    Ready(hearth_proto::Health),
    /// The VMM exited before the guest answered.
    Died,
    /// The guest did not answer within the timeout; the VMM still runs.
    TimedOut(Duration),
}

/// Polls `client`'s health with a backoff from 10 to 200 ms until it answers, `vmm_alive`
/// says the VMM is gone, or `timeout` passes.
pub async fn wait_for_guest(
    client: &GuestClient,
    timeout: Duration,
    mut vmm_alive: impl FnMut() -> bool + Send,
) -> BootWait {
    let start = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        // Longer than the relay's first-answer timeout, so the relay's 502 arrives first.
        let limit = FIRST_ANSWER_TIMEOUT + Duration::from_secs(2);
        if let Ok(Ok(health)) = tokio::time::timeout(limit, client.health()).await {
            return BootWait::Ready(health);
        }
        if !vmm_alive() {
            return BootWait::Died;
        }
        if start.elapsed() >= timeout {
            return BootWait::TimedOut(start.elapsed());
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}
