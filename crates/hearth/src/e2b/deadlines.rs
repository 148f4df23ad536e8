//! Every E2B sandbox is removed when its timeout expires. Deadlines live in the store, so a
//! restarted `hearth serve` removes what expired while it was down as soon as it starts, and
//! the loop sleeps until the next deadline (or until one changes).

use std::time::Duration;

use super::E2bState;

/// Longest sleep between sweeps (a safety net: every change of a deadline wakes the loop).
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// Shortest sleep: a deadline in the past (a removal still failing) must not spin the loop.
const MIN_SLEEP: Duration = Duration::from_secs(1);
/// When a removal that failed is tried again.
const RETRY_AFTER_MS: i64 = 60_000;

/// Runs until the daemon stops.
pub async fn run(state: E2bState) {
    loop {
        sweep(&state).await;
        let now = crate::store::now_ms();
        let wait = match state.manager.store.next_e2b_deadline().await {
            Ok(Some(next)) => Duration::from_millis(u64::try_from(next - now).unwrap_or(0))
                .clamp(MIN_SLEEP, MAX_SLEEP),
            Ok(None) => MAX_SLEEP,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read E2B deadlines");
                MAX_SLEEP
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = state.deadlines_changed.notified() => {}
        }
    }
}

/// Removes every sandbox past its deadline. (Rows of sandboxes removed by other means go with
/// their records; see the migration.)
pub async fn sweep(state: &E2bState) {
    let now = crate::store::now_ms();
    let expired = match state
        .manager
        .store
        .claim_expired_e2b(now, now + RETRY_AFTER_MS)
        .await
    {
        Ok(expired) => expired,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read expired E2B sandboxes");
            return;
        }
    };
    for id in expired {
        tracing::info!(%id, "E2B sandbox timed out; removing it");
        if let Err(err) = super::control::remove(state, &id).await {
            tracing::error!(%id, error = %err.message, "cannot remove an expired sandbox; trying again in a minute");
        }
    }
}
