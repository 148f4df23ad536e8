//! Gateway calls into the task timeline. The gateway calls `record` on its request path, so it
//! only queues; a task drains the queue into SQLite.

use std::sync::Mutex;

use hearth_gateway::{CallRecorder, GatewayCall};
use tokio::sync::mpsc;

use crate::store::{Store, TaskId};

/// Queues every gateway call for the store.
#[derive(Debug)]
pub struct StoreRecorder {
    sender: Mutex<Option<mpsc::UnboundedSender<GatewayCall>>>,
}

impl StoreRecorder {
    /// The recorder, and the task that writes what it queues until the recorder is closed.
    pub fn start(store: Store) -> (Self, tokio::task::JoinHandle<()>) {
        let (sender, mut receiver) = mpsc::unbounded_channel::<GatewayCall>();
        let writer = tokio::spawn(async move {
            while let Some(call) = receiver.recv().await {
                let Ok(task) = TaskId::parse(call.task_id.as_str()) else {
                    continue;
                };
                let data = serde_json::to_value(&call).unwrap_or_default();
                if let Err(err) = store.append_event(&task, "llm_call", &data).await {
                    tracing::warn!(%task, error = %err, "cannot record a gateway call");
                }
            }
        });
        (
            Self {
                sender: Mutex::new(Some(sender)),
            },
            writer,
        )
    }

    /// Stops queueing; the writer finishes what is queued and ends.
    pub fn close(&self) {
        self.sender
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }
}

impl CallRecorder for StoreRecorder {
    fn record(&self, call: GatewayCall) {
        if let Some(sender) = self
            .sender
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            let _ = sender.send(call);
        }
    }
}
