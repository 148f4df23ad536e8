//! Every E2B sandbox is removed when its timeout expires. Deadlines live in the store, so a
//! restarted `hearth serve` removes what expired while it was down as soon as it starts, and
//! the loop sleeps until the next deadline (or until one changes).

use std::time::Duration;

use super::E2bState;

/// Longest sleep between sweeps, so rows of sandboxes removed by other means (`hearth sandbox
/// rm`) are swept too.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// Runs until the daemon stops.
pub async fn run(state: E2bState) {
    loop {
        sweep(&state).await;
        let now = chrono::Utc::now().timestamp_millis();
        let wait = match state.manager.store.next_e2b_deadline().await {
            Ok(Some(next)) => {
                Duration::from_millis(u64::try_from(next - now).unwrap_or(0)).min(MAX_SLEEP)
            }
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

/// Removes every sandbox past its deadline, and forgets rows whose sandbox is gone.
pub async fn sweep(state: &E2bState) {
    let now = chrono::Utc::now().timestamp_millis();
    match state.manager.store.expired_e2b(now).await {
        Ok(expired) => {
            for id in expired {
                tracing::info!(%id, "E2B sandbox timed out; removing it");
                if let Err(err) = super::control::remove(state, &id).await {
                    tracing::error!(%id, error = %err.message, "cannot remove an expired sandbox");
                }
            }
        }
        Err(err) => tracing::warn!(error = %err, "cannot read expired E2B sandboxes"),
    }
    let Ok(rows) = state.manager.store.list_e2b().await else {
        return;
    };
    for row in rows {
        if matches!(
            state.manager.get(&row.id).await,
            Err(crate::sandboxes::SandboxError::NotFound(_))
        ) {
            state.processes.forget(&row.id);
            if let Err(err) = state.manager.store.delete_e2b(&row.id).await {
                tracing::warn!(id = %row.id, error = %err, "cannot forget a removed sandbox");
            }
        }
    }
}
