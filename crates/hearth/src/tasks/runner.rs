//! Running one agent task: sandbox, gateway token, agent, result, diff, cleanup.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hearth_net::NetMode;
use hearth_proto::{ExecRequest, ExitStatus};
use hearth_sandbox::guest_client::{GuestClient, OutputChunk};
use hearth_sandbox::spec::SandboxSpec;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::agent_files::AGENT_FILES;
use super::diff::{snapshot, unified_diff};
use super::handback::copy_out;
use super::model::ModelBackend;
use super::security::SecurityFeed;
use super::TaskError;
use crate::sandboxes::SandboxManager;
use crate::store::{TaskId, TaskOutcome, TaskRecord, TaskStatus};

/// Where the agent and its files live inside the sandbox: its own tmpfs (`/.hearth`, where
/// hearth-guest lives, is read-only to the sandbox).
const AGENT_DIR: &str = "/run/hearth/agent";
const TASK_FILE: &str = "/run/hearth/task.json";
const RESULT_FILE: &str = "/run/hearth/result.json";
const TRAJECTORY_FILE: &str = "/run/hearth/trajectory.jsonl";
/// The agent's result is a small JSON document; more is a lie, and is not read.
const MAX_RESULT_BYTES: u64 = 4 * 1024 * 1024;
/// Extra time the host gives the agent past its own wall-clock limit to write its result.
const AGENT_GRACE: Duration = Duration::from_secs(30);
/// How often the runner copies the sandbox's new denials and drops into the timeline.
const SECURITY_POLL: Duration = Duration::from_secs(1);
/// How long the runner waits for the supervisor's last flush when the agent has ended.
const FINAL_FLUSH_WAIT: Duration = Duration::from_secs(2);

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct TaskRequest {
    pub prompt: String,
    pub model: String,
    pub max_steps: u32,
    pub max_tokens: u64,
    pub timeout: Duration,
    /// The task's sandbox, validated (see [`crate::request`]); it runs under the task's id.
    /// Its policy audits through the sandbox's supervisor, so denials reach the timeline.
    pub sandbox: SandboxSpec,
}

/// What the runner reports while a task runs.
#[derive(Debug, Clone)]
pub enum Progress {
    /// The sandbox is up and the agent is starting.
    Started { sandbox: String, workspace: PathBuf },
    /// One event the agent printed (model_call, tool_call, tool_result, error, final).
    Agent(Value),
    /// A syscall denial (`syscall_denied`) or firewall drop (`network_drop`) in the sandbox.
    Security { kind: &'static str, data: Value },
}

/// Why a task was stopped from outside, as it is recorded.
#[derive(Debug, Clone)]
pub struct Stop {
    pub status: TaskStatus,
    pub reason: String,
}

impl Stop {
    pub fn cancelled() -> Self {
        Self {
            status: TaskStatus::Cancelled,
            reason: "cancelled by the user".into(),
        }
    }
}

/// Runs tasks on one manager and one gateway.
#[derive(Debug)]
pub struct TaskRunner<'a> {
    pub manager: &'a SandboxManager,
    pub model: &'a ModelBackend,
    /// Per-task private dirs (default workspace, diff baseline): `<state dir>/tasks`.
    pub tasks_dir: PathBuf,
}

impl TaskRunner<'_> {
    /// Runs `request` as task `id` (already inserted as `queued`) to its end, cancelled (as by
    /// the user) when `cancel` turns true. The sandbox is removed whatever happens; the task
    /// record keeps the outcome.
    pub async fn run(
        &self,
        id: &TaskId,
        request: &TaskRequest,
        on_progress: impl FnMut(Progress),
        mut cancel: watch::Receiver<bool>,
    ) -> Result<TaskRecord, TaskError> {
        let stop = async move {
            if cancel.wait_for(|cancelled| *cancelled).await.is_err() {
                // Nobody can cancel any more: run to the end.
                std::future::pending::<()>().await;
            }
            Stop::cancelled()
        };
        self.run_until(id, request, on_progress, stop).await
    }

    /// [`TaskRunner::run`], stopped with the status and reason `stop` yields when it completes
    /// first (a cancel, or the daemon shutting down).
    pub async fn run_until(
        &self,
        id: &TaskId,
        request: &TaskRequest,
        mut on_progress: impl FnMut(Progress),
        stop: impl std::future::Future<Output = Stop>,
    ) -> Result<TaskRecord, TaskError> {
        let store = &self.manager.store;
        if !store.transition_task(id, TaskStatus::Starting).await? {
            return Err(TaskError::NotStartable(id.clone()));
        }
        let task_dir = self.tasks_dir.join(id.as_str());
        // Task dirs hold what untrusted code wrote: readable by root only, like the tasks dir.
        for dir in [&self.tasks_dir, &task_dir] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .and_then(|()| {
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                })
                .map_err(|source| TaskError::Dir {
                    path: dir.clone(),
                    source,
                })?;
        }
        let outcome = tokio::select! {
            outcome = self.run_in_sandbox(id, request, &task_dir, &mut on_progress) => outcome,
            stop = stop => Ok(Ended { status: stop.status, outcome: TaskOutcome { reason: Some(stop.reason), ..TaskOutcome::default() } }),
        };
        // Cleanup runs however the task ended: the gateway token, the workspace handed back
        // (from a sandbox whose processes are gone, so the copy is of a still tree), the diff,
        // the sandbox, the baseline.
        self.model.gateway.revoke_task(&gateway_task_id(id));
        let mut ended = match outcome {
            Ok(ended) => ended,
            Err(err) => Ended {
                status: TaskStatus::Failed,
                outcome: TaskOutcome {
                    reason: Some(err.to_string()),
                    ..TaskOutcome::default()
                },
            },
        };
        ended.outcome.diff = self.hand_back(id, request, &task_dir).await;
        if let Err(err) = self.manager.remove(&id.sandbox_id(), true).await {
            tracing::warn!(task = %id, error = %err, "removing the task's sandbox");
        }
        let _ = std::fs::remove_dir_all(task_dir.join("baseline"));
        store.finish_task(id, ended.status, &ended.outcome).await?;
        store
            .get_task(id)
            .await?
            .ok_or_else(|| TaskError::NotStartable(id.clone()))
    }

    async fn run_in_sandbox(
        &self,
        id: &TaskId,
        request: &TaskRequest,
        task_dir: &Path,
        on_progress: &mut impl FnMut(Progress),
    ) -> Result<Ended, TaskError> {
        let store = &self.manager.store;
        // Without a workspace of the user's, the task works on a private filesystem of its
        // disk quota, copied out when it ends.
        let mut spec = SandboxSpec {
            id: id.sandbox_id(),
            ..request.sandbox.clone()
        };
        if spec.net.mode == NetMode::None {
            // The agent must reach the gateway; `none` would leave it no way to the model.
            spec.net.mode = NetMode::Gateway;
        }
        self.manager.create(&spec).await?;
        store
            .append_event(
                id,
                "state",
                &json!({"status": "starting", "sandbox": spec.id}),
            )
            .await?;
        let listener = self.bind_gateway(id).await?;
        let token = self
            .model
            .gateway
            .register_task(gateway_task_id(id), request.max_tokens)
            .map_err(|err| TaskError::Gateway(err.to_string()))?;
        let gateway_url = format!("http://{}", listener.local_addr());
        let client = self.manager.guest(&spec.id).await?;
        let live = self.manager.dirs.sandbox(&spec.id).workspace();
        if request.sandbox.workspace.is_none() && self.model.scripted.is_some() {
            // The scripted upstream replays the demo fixture, which works on the demo files.
            seed_demo_files(&client).await?;
        }
        if let Err(err) = snapshot(&live, &task_dir.join("baseline")) {
            tracing::warn!(task = %id, error = %err, "no diff for this task");
        }
        let workspace = handed_back_workspace(request, task_dir);
        install_agent(&client).await?;
        let task_json = json!({
            "prompt": request.prompt, "model": request.model, "gateway_url": gateway_url,
            "gateway_token": token.expose(), "max_steps": request.max_steps, "max_tokens": request.max_tokens,
            "timeout_s": request.timeout.as_secs_f64(), "mcp_command": ["/.hearth/hearth-guest", "mcp", "--root", "/workspace"],
            "workspace": "/workspace", "trajectory_path": TRAJECTORY_FILE, "result_path": RESULT_FILE,
        });
        client
            .write_file(
                TASK_FILE,
                serde_json::to_vec(&task_json).unwrap_or_default(),
                0o600,
            )
            .await?;
        drop(task_json);
        store.transition_task(id, TaskStatus::Running).await?;
        store
            .append_event(id, "state", &json!({"status": "running"}))
            .await?;
        on_progress(Progress::Started {
            sandbox: spec.id.to_string(),
            workspace: workspace.clone(),
        });
        let status = self
            .run_agent(
                id,
                &client,
                request.timeout + AGENT_GRACE,
                request.sandbox.template.as_ref().map(|t| t.name.clone()),
                on_progress,
            )
            .await?;
        drop(listener);
        let result: Value = match client
            .read_file_limited(RESULT_FILE, MAX_RESULT_BYTES)
            .await
        {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            Err(err) => {
                tracing::warn!(task = %id, error = %err, "no result from the agent");
                Value::Null
            }
        };
        Ok(Ended::from_agent(&result, status))
    }

    /// At the end of any task: stops what still runs in its sandbox, copies a private
    /// workspace out (see [`super::handback`]), records what was left out, and returns the
    /// diff against the baseline taken before the agent started (if one was).
    async fn hand_back(
        &self,
        id: &TaskId,
        request: &TaskRequest,
        task_dir: &Path,
    ) -> Option<String> {
        let sandbox = id.sandbox_id();
        if let Err(err) = self.manager.stop_processes(&sandbox).await {
            tracing::warn!(task = %id, error = %err, "stopping the task's processes");
        }
        let workspace = handed_back_workspace(request, task_dir);
        let live = self.manager.dirs.sandbox(&sandbox).workspace();
        if request.sandbox.workspace.is_none() && live.is_dir() {
            let (from, to, limit) = (live, workspace.clone(), request.sandbox.limits.disk.0);
            let copied = tokio::task::spawn_blocking(move || copy_out(&from, &to, limit)).await;
            match copied {
                Ok(Ok(report)) if report.skipped + report.stripped > 0 || report.truncated => {
                    let event = json!({"handback": report});
                    if let Err(err) = self
                        .manager
                        .store
                        .append_event(id, "workspace", &event)
                        .await
                    {
                        tracing::warn!(task = %id, error = %err, "cannot record the hand-back");
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(err)) => {
                    tracing::warn!(task = %id, error = %err, "workspace not handed back")
                }
                Err(err) => tracing::warn!(task = %id, error = %err, "workspace copy panicked"),
            }
        }
        let baseline = task_dir.join("baseline");
        if !baseline.is_dir() || !workspace.is_dir() {
            return None;
        }
        tokio::task::spawn_blocking(move || unified_diff(&baseline, &workspace).ok())
            .await
            .ok()
            .flatten()
    }

    /// The gateway listens on the sandbox's host-side address, the one destination its firewall
    /// always allows.
    async fn bind_gateway(&self, id: &TaskId) -> Result<hearth_gateway::ListenerHandle, TaskError> {
        let slot = self
            .manager
            .store
            .net_slot(&id.sandbox_id())
            .await?
            .ok_or_else(|| TaskError::Gateway("the task's sandbox has no network link".into()))?;
        let config = self.manager.firewall.config();
        let addrs = config
            .pool
            .slot(slot)
            .ok_or_else(|| TaskError::Gateway(format!("slot {slot} is outside the pool")))?;
        let port = config
            .gateway_ports
            .first()
            .copied()
            .unwrap_or(hearth_net::firewall::DEFAULT_GATEWAY_PORT);
        let listener = tokio::net::TcpListener::bind((addrs.host, port))
            .await
            .map_err(|err| {
                TaskError::Gateway(format!("cannot listen on {}:{port}: {err}", addrs.host))
            })?;
        self.model
            .gateway
            .spawn(listener)
            .map_err(|err| TaskError::Gateway(err.to_string()))
    }

    async fn run_agent(
        &self,
        id: &TaskId,
        client: &GuestClient,
        limit: Duration,
        template: Option<String>,
        on_progress: &mut impl FnMut(Progress),
    ) -> Result<ExitStatus, TaskError> {
        let request = ExecRequest {
            argv: vec![
                "python3".into(),
                format!("{AGENT_DIR}/loop.py"),
                "--task".into(),
                TASK_FILE.into(),
            ],
            cwd: Some("/workspace".into()),
            timeout_ms: Some(u64::try_from(limit.as_millis()).unwrap_or(u64::MAX)),
            ..ExecRequest::default()
        };
        // Agent events go to the store as they arrive, so the timeline interleaves them with the
        // gateway's llm_call records and the sandbox's denials and drops in real order.
        let (events, mut queued) = tokio::sync::mpsc::unbounded_channel::<Value>();
        let mut line = Vec::new();
        let exec = client.exec(&request, move |chunk| {
            if let OutputChunk::Stdout(data) = chunk {
                for byte in data {
                    if byte == b'\n' {
                        if let Ok(event) = serde_json::from_slice::<Value>(&line) {
                            let _ = events.send(event);
                        }
                        line.clear();
                    } else if line.len() < 1 << 20 {
                        line.push(byte);
                    }
                }
            }
        });
        tokio::pin!(exec);
        let store = &self.manager.store;
        let sandbox = id.sandbox_id();
        let mut feed = SecurityFeed::new(store.clone(), id.clone(), sandbox.clone());
        let mut tick = tokio::time::interval(SECURITY_POLL);
        let status = loop {
            tokio::select! {
                status = &mut exec => break status,
                Some(event) = queued.recv() => record_agent_event(store, id, event, on_progress).await,
                _ = tick.tick() => copy_security(&mut feed, on_progress).await,
            }
        };
        while let Ok(event) = queued.try_recv() {
            record_agent_event(store, id, event, on_progress).await;
        }
        let status = status.map_err(|err| match (&template, err.guest_kind()) {
            // The guest found no python3 to start: say so for a template rather than the
            // guest's bare "not found".
            (Some(name), Some(hearth_proto::ErrorKind::NotFound)) => {
                TaskError::NoPython(name.clone())
            }
            _ => err.into(),
        })?;
        self.manager.record_exit(&sandbox, "python3", &status).await;
        // What the supervisor has not flushed yet belongs to this task too.
        let dirs = self.manager.dirs.sandbox(&sandbox);
        if let Err(err) =
            crate::supervisor::launch::request_flush(store, &dirs, &sandbox, FINAL_FLUSH_WAIT).await
        {
            tracing::warn!(task = %id, error = %err, "no final audit flush");
        }
        copy_security(&mut feed, on_progress).await;
        Ok(status)
    }
}

/// Stores one agent event and reports it.
async fn record_agent_event(
    store: &crate::store::Store,
    id: &TaskId,
    event: Value,
    on_progress: &mut impl FnMut(Progress),
) {
    if let Err(err) = store.append_event(id, "agent", &event).await {
        tracing::warn!(task = %id, error = %err, "cannot record an agent event");
    }
    on_progress(Progress::Agent(event));
}

/// Copies new denials and drops into the timeline and reports them.
async fn copy_security(feed: &mut SecurityFeed, on_progress: &mut impl FnMut(Progress)) {
    match feed.poll().await {
        Ok(events) => {
            for (kind, data) in events {
                on_progress(Progress::Security { kind, data });
            }
        }
        Err(err) => tracing::warn!(error = %err, "cannot copy the sandbox's audit to the timeline"),
    }
}

/// The gateway's own task id type carries the same string.
fn gateway_task_id(id: &TaskId) -> hearth_gateway::TaskId {
    hearth_gateway::TaskId::parse(id.as_str()).expect("hearth task ids are valid gateway task ids")
}

/// Where a task's workspace is on the host once it ended: the user's own, or the private one
/// copied out into the task's dir.
fn handed_back_workspace(request: &TaskRequest, task_dir: &Path) -> PathBuf {
    match &request.sandbox.workspace {
        Some(dir) => dir.clone(),
        None => task_dir.join("workspace"),
    }
}

/// Writes the demo fixture's files into the sandbox's workspace, as the sandbox's root.
async fn seed_demo_files(client: &GuestClient) -> Result<(), TaskError> {
    for (name, content) in hearth_gateway::scripted::DEMO_WORKSPACE_FILES {
        client
            .write_file(
                &format!("/workspace/{name}"),
                content.as_bytes().to_vec(),
                0o644,
            )
            .await?;
    }
    Ok(())
}

/// Copies the embedded agent into the sandbox.
async fn install_agent(client: &GuestClient) -> Result<(), TaskError> {
    // The guest makes the directory itself: a template's image need not have mkdir.
    client.mkdir(&format!("{AGENT_DIR}/hearth_agent")).await?;
    for (path, content) in AGENT_FILES {
        client
            .write_file(
                &format!("{AGENT_DIR}/{path}"),
                content.as_bytes().to_vec(),
                0o644,
            )
            .await?;
    }
    Ok(())
}

/// A task's final status and outcome.
#[derive(Debug)]
struct Ended {
    status: TaskStatus,
    outcome: TaskOutcome,
}

impl Ended {
    /// Maps the agent's result file (or its absence) and exit status to the task's end (the
    /// diff is added when the workspace has been handed back).
    fn from_agent(result: &Value, exit: ExitStatus) -> Self {
        let tokens = &result["tokens"];
        let mut outcome = TaskOutcome {
            answer: result["answer"].as_str().map(str::to_owned),
            reason: result["reason"].as_str().map(str::to_owned),
            prompt_tokens: tokens["prompt"].as_i64().unwrap_or(0),
            completion_tokens: tokens["completion"].as_i64().unwrap_or(0),
            diff: None,
        };
        let status = match result["status"].as_str() {
            Some("succeeded") => TaskStatus::Succeeded,
            Some("timed_out") => TaskStatus::TimedOut,
            Some(other) => {
                outcome.reason = Some(format!(
                    "{other}: {}",
                    outcome.reason.clone().unwrap_or_default()
                ));
                TaskStatus::Failed
            }
            None if exit.timed_out => TaskStatus::TimedOut,
            None => {
                outcome.reason = Some(format!(
                    "the agent ended without a result (exit {})",
                    exit.shell_code()
                ));
                TaskStatus::Failed
            }
        };
        Self { status, outcome }
    }
}
