//! Directory watching for envd's `WatchDir` (a stream, the async SDK) and `CreateWatcher` /
//! `GetWatcherEvents` / `RemoveWatcher` (polling, the sync SDK), on hearth-guest's inotify
//! stream (`GET /v1/watch`). A watcher holds that stream open from a task of `hearth serve`;
//! removing the watcher (or its sandbox) drops the task, which hangs up, and the guest stops.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use hearth_proto::{WatchEvent, WatchOp};
use hearth_sandbox::guest_client::GuestClient;
use hearth_sandbox::SandboxId;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::connect::{Code, ConnectError};
use super::envd::guest_error;
use super::messages::FilesystemEvent;

/// Events a polled watcher keeps between two `GetWatcherEvents`; past it the watcher fails
/// (events were lost) rather than grow.
const MAX_PENDING: usize = 10_000;
/// Watchers one sandbox may have at once.
const MAX_PER_SANDBOX: usize = 64;

pub fn event_type(op: WatchOp) -> &'static str {
    match op {
        WatchOp::Create => "EVENT_TYPE_CREATE",
        WatchOp::Write => "EVENT_TYPE_WRITE",
        WatchOp::Remove => "EVENT_TYPE_REMOVE",
        WatchOp::Rename => "EVENT_TYPE_RENAME",
        WatchOp::Chmod => "EVENT_TYPE_CHMOD",
    }
}

/// What a running watch reports to whoever consumes it.
#[derive(Debug)]
pub enum Update {
    Event(FilesystemEvent),
    Failed(ConnectError),
}

/// Starts watching `path` in the guest; answers once the watches are in place (so nothing
/// done after the answer is missed), with the task that runs the watch and its updates.
pub async fn start(
    guest: GuestClient,
    path: String,
    recursive: bool,
) -> Result<(JoinHandle<()>, mpsc::UnboundedReceiver<Update>), ConnectError> {
    let (started_tx, started_rx) = oneshot::channel();
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut started_tx = Some(started_tx);
        let result = guest
            .watch(&path, recursive, |event| match event {
                WatchEvent::Started => {
                    if let Some(started) = started_tx.take() {
                        let _ = started.send(Ok(()));
                    }
                    true
                }
                WatchEvent::Event { op, name } => tx
                    .send(Update::Event(FilesystemEvent {
                        name,
                        kind: event_type(op),
                    }))
                    .is_ok(),
                WatchEvent::Error(info) => {
                    let _ = tx.send(Update::Failed(ConnectError::new(
                        Code::Internal,
                        format!("watching {path}: {}", info.message),
                    )));
                    false
                }
            })
            .await;
        let failure = match result {
            Err(err) => guest_error(&err),
            Ok(()) => ConnectError::new(
                Code::NotFound,
                format!("watching {path} ended: the directory is gone"),
            ),
        };
        match started_tx.take() {
            Some(started) => drop(started.send(Err(failure))),
            None => drop(tx.send(Update::Failed(failure))),
        }
    });
    match started_rx.await {
        Ok(Ok(())) => Ok((task, rx)),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(ConnectError::new(Code::Internal, "the watch never started")),
    }
}

/// One polled watcher.
struct Polled {
    sandbox: SandboxId,
    task: JoinHandle<()>,
    pending: Arc<Mutex<Pending>>,
}

#[derive(Default)]
struct Pending {
    events: VecDeque<FilesystemEvent>,
    failed: Option<ConnectError>,
}

/// The polled watchers of every sandbox, by watcher id.
#[derive(Default)]
pub struct Watchers {
    by_id: Mutex<HashMap<String, Polled>>,
}

impl std::fmt::Debug for Watchers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.by_id.lock().map_or(0, |w| w.len());
        f.debug_struct("Watchers").field("count", &count).finish()
    }
}

impl Watchers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Polled>> {
        self.by_id.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a started watch; its updates are kept until polled.
    pub fn add(
        &self,
        sandbox: &SandboxId,
        task: JoinHandle<()>,
        mut updates: mpsc::UnboundedReceiver<Update>,
    ) -> Result<String, ConnectError> {
        let mut all = self.lock();
        if all.values().filter(|w| &w.sandbox == sandbox).count() >= MAX_PER_SANDBOX {
            task.abort();
            return Err(ConnectError::new(
                Code::ResourceExhausted,
                format!("sandbox {sandbox} has {MAX_PER_SANDBOX} watchers; remove one first"),
            ));
        }
        let pending = Arc::new(Mutex::new(Pending::default()));
        let sink = Arc::clone(&pending);
        let collector = tokio::spawn(async move {
            while let Some(update) = updates.recv().await {
                let mut pending = sink.lock().unwrap_or_else(|e| e.into_inner());
                match update {
                    Update::Event(event) if pending.events.len() < MAX_PENDING => {
                        pending.events.push_back(event);
                    }
                    Update::Event(_) => {
                        pending.failed = Some(ConnectError::new(
                            Code::ResourceExhausted,
                            format!(
                                "more than {MAX_PENDING} events were not fetched; some were lost"
                            ),
                        ));
                        return;
                    }
                    Update::Failed(err) => {
                        pending.failed = Some(err);
                        return;
                    }
                }
            }
        });
        let id = hearth_id::random_name("w");
        // The collector ends with the watch (its sender goes); aborting the watch is enough.
        drop(collector);
        all.insert(
            id.clone(),
            Polled {
                sandbox: sandbox.clone(),
                task,
                pending,
            },
        );
        Ok(id)
    }

    /// The events since the last call, or why the watch stopped.
    pub fn take(
        &self,
        sandbox: &SandboxId,
        id: &str,
    ) -> Result<Vec<FilesystemEvent>, ConnectError> {
        let all = self.lock();
        let watcher = all
            .get(id)
            .filter(|w| &w.sandbox == sandbox)
            .ok_or_else(|| ConnectError::new(Code::NotFound, format!("watcher {id} not found")))?;
        let mut pending = watcher.pending.lock().unwrap_or_else(|e| e.into_inner());
        let events: Vec<FilesystemEvent> = pending.events.drain(..).collect();
        match (&pending.failed, events.is_empty()) {
            (Some(err), true) => Err(err.clone()),
            _ => Ok(events),
        }
    }

    pub fn remove(&self, sandbox: &SandboxId, id: &str) -> Result<(), ConnectError> {
        let mut all = self.lock();
        match all.get(id) {
            Some(w) if &w.sandbox == sandbox => {
                if let Some(watcher) = all.remove(id) {
                    watcher.task.abort();
                }
                Ok(())
            }
            _ => Err(ConnectError::new(
                Code::NotFound,
                format!("watcher {id} not found"),
            )),
        }
    }

    /// Stops every watcher of a sandbox (it is being removed).
    pub fn forget(&self, sandbox: &SandboxId) {
        self.lock().retain(|_, w| {
            let keep = &w.sandbox != sandbox;
            if !keep {
                w.task.abort();
            }
            keep
        });
    }
}
