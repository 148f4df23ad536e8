//! The daemon's task queue: at most N tasks run at once, the others wait `queued` in FIFO order.
//! Every task runs on its own Tokio task; the queue keeps a stop handle per live task so a
//! cancel (or the daemon stopping) reaches it whether it is waiting or running.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use super::model::ModelBackend;
use super::params::stored_spec;
use super::runner::{Stop, TaskRequest, TaskRunner};
use super::slots::{Slot, Slots};
use crate::sandboxes::SandboxManager;
use crate::store::{StoreError, TaskId, TaskOutcome, TaskRecord, TaskStatus};

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("no task with id {0}")]
    NotFound(TaskId),
    #[error("task {id} is already {status}")]
    AlreadyFinal { id: TaskId, status: TaskStatus },
    #[error("task {id} belongs to another hearth process (pid {pid}); cancel it there")]
    NotOurs { id: TaskId, pid: u32 },
    #[error("the daemon is stopping; no new tasks")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A live task: how to stop it, and how to learn that it has ended.
#[derive(Debug)]
struct Live {
    stop: watch::Sender<Option<Stop>>,
    done: watch::Receiver<bool>,
}

#[derive(Debug)]
struct Inner {
    manager: Arc<SandboxManager>,
    model: Arc<ModelBackend>,
    tasks_dir: PathBuf,
    slots: Arc<Slots>,
    live: Mutex<HashMap<TaskId, Live>>,
    closed: std::sync::atomic::AtomicBool,
}

/// Cheap to clone; clones share the queue.
#[derive(Debug, Clone)]
pub struct TaskQueue {
    inner: Arc<Inner>,
}

impl TaskQueue {
    pub fn new(
        manager: Arc<SandboxManager>,
        model: Arc<ModelBackend>,
        tasks_dir: PathBuf,
        max_concurrent: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                manager,
                model,
                tasks_dir,
                slots: Slots::new(max_concurrent.max(1)),
                live: Mutex::new(HashMap::new()),
                closed: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Stores `request` as a new queued task and schedules it; returns the stored record.
    pub async fn submit(&self, request: TaskRequest) -> Result<TaskRecord, QueueError> {
        if self.inner.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(QueueError::ShuttingDown);
        }
        let store = &self.inner.manager.store;
        let id = TaskId::generate();
        let record = store
            .insert_task(&id, &request.prompt, &request.model, &stored_spec(&request))
            .await?;
        store
            .append_event(&id, "state", &json!({"status": "queued"}))
            .await?;
        let (stop, stop_rx) = watch::channel(None);
        let (done_tx, done) = watch::channel(false);
        // The place in line is taken here, in submit order, not when the task first runs.
        let place = self.inner.slots.take();
        self.lock().insert(id.clone(), Live { stop, done });
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            drive(&inner, &id, &request, place, stop_rx).await;
            inner
                .live
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
            let _ = done_tx.send(true);
        });
        Ok(record)
    }

    /// Cancels a task of this daemon and waits (up to `wait`) until it has ended and its
    /// sandbox is gone; returns the task as it is then.
    pub async fn cancel(&self, id: &TaskId, wait: Duration) -> Result<TaskRecord, QueueError> {
        self.stop(id, Stop::cancelled(), wait).await
    }

    async fn stop(
        &self,
        id: &TaskId,
        stop: Stop,
        wait: Duration,
    ) -> Result<TaskRecord, QueueError> {
        let store = &self.inner.manager.store;
        let live = self
            .lock()
            .get(id)
            .map(|l| (l.stop.clone(), l.done.clone()));
        let Some((sender, mut done)) = live else {
            let task = store
                .get_task(id)
                .await?
                .ok_or_else(|| QueueError::NotFound(id.clone()))?;
            return Err(if task.status.is_final() {
                QueueError::AlreadyFinal {
                    id: id.clone(),
                    status: task.status,
                }
            } else {
                QueueError::NotOurs {
                    id: id.clone(),
                    pid: task.owner_pid,
                }
            });
        };
        sender.send_if_modified(|current| {
            // The first stop wins: a cancel does not turn a shutdown into a cancel.
            current.is_none() && current.replace(stop).is_none()
        });
        let _ = tokio::time::timeout(wait, done.wait_for(|ended| *ended)).await;
        store
            .get_task(id)
            .await?
            .ok_or_else(|| QueueError::NotFound(id.clone()))
    }

    /// Refuses new tasks, interrupts every live one and waits (up to `wait`) for their cleanup.
    pub async fn shutdown(&self, wait: Duration) {
        self.inner
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let ids: Vec<TaskId> = self.lock().keys().cloned().collect();
        let stop = Stop {
            status: TaskStatus::Interrupted,
            reason: "interrupted: the hearth daemon was stopped".into(),
        };
        let stops = ids.iter().map(|id| self.stop(id, stop.clone(), wait));
        for result in futures_util::future::join_all(stops).await {
            if let Err(err) = result {
                tracing::warn!(error = %err, "stopping a task at shutdown");
            }
        }
    }

    /// Tasks of this daemon not yet ended, and how many of them wait for a slot.
    pub fn load(&self) -> (usize, usize) {
        (self.lock().len(), self.inner.slots.waiting())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, Live>> {
        self.inner
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Waits for a slot (or a stop), then runs the task to its end and records it.
async fn drive(
    inner: &Inner,
    id: &TaskId,
    request: &TaskRequest,
    place: Result<Slot, tokio::sync::oneshot::Receiver<Slot>>,
    stop: watch::Receiver<Option<Stop>>,
) {
    let store = &inner.manager.store;
    let _slot = match place {
        Ok(slot) => slot,
        Err(waiting) => tokio::select! {
            biased;
            stopped = stopped(stop.clone()) => {
                let outcome = TaskOutcome { reason: Some(stopped.reason), ..TaskOutcome::default() };
                if let Err(err) = store.finish_task(id, stopped.status, &outcome).await {
                    tracing::error!(task = %id, error = %err, "recording a task stopped while queued");
                }
                return;
            }
            slot = waiting => match slot {
                Ok(slot) => slot,
                Err(_) => return, // the queue itself is gone: the process is ending
            },
        },
    };
    let runner = TaskRunner {
        manager: &inner.manager,
        model: &inner.model,
        tasks_dir: inner.tasks_dir.clone(),
    };
    match runner.run_until(id, request, |_| {}, stopped(stop)).await {
        Ok(record) => tracing::info!(task = %id, status = %record.status, "task ended"),
        Err(err) => {
            tracing::error!(task = %id, error = %err, "task could not run");
            let outcome = TaskOutcome {
                reason: Some(err.to_string()),
                ..TaskOutcome::default()
            };
            if let Err(err) = store.finish_task(id, TaskStatus::Failed, &outcome).await {
                tracing::error!(task = %id, error = %err, "recording a task that could not run");
            }
        }
    }
}

/// Resolves with the stop once one is sent; never while the sender lives without one.
async fn stopped(mut stop: watch::Receiver<Option<Stop>>) -> Stop {
    let sent = stop
        .wait_for(Option::is_some)
        .await
        .map(|value| value.clone().unwrap_or_else(Stop::cancelled));
    match sent {
        Ok(stop) => stop,
        Err(_) => std::future::pending().await,
    }
}
