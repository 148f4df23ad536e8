//! envd's `process.Process` service on hearth-guest's exec.
//!
//! A `Start` runs the command through the guest's exec stream, held by `hearth serve` rather
//! than by the client's request: like envd's processes, it keeps running when the client
//! disconnects, and any number of `Connect`s can follow its output. Its stdin is a pipe the
//! guest keeps open when the client asked for one (`stdin: true`); `SendInput`, `StreamInput`
//! and `CloseStdin` reach it through the guest's `/v1/procs` endpoints, `SendSignal` too.
//!
//! Output is not replayed: a `Connect` sees what the process writes after it connected (as
//! envd). Each follower's queue is unbounded, but the guest caps every exec's output (16 MiB
//! per stream), which bounds it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use hearth_proto::{ExecRequest, ExitStatus};
use hearth_sandbox::guest_client::{GuestClient, GuestClientError, OutputChunk};
use hearth_sandbox::SandboxId;
use tokio::sync::{mpsc, oneshot};

use super::connect::{self, Code, ConnectError, StreamItem};
use super::envd::{self, Target, HOME};
use super::messages::{
    data_event, end_event, keepalive_event, start_event, Empty, EndEvent, ListResponse,
    ProcessConfig, ProcessInfo, ProcessSelector, SelectRequest, SendInputRequest,
    SendSignalRequest, StartRequest, StreamInputRequest, UpdateRequest,
};
use super::E2bState;

/// What followers of a process receive.
#[derive(Debug, Clone)]
enum ProcEvent {
    Stdout(Bytes),
    Stderr(Bytes),
    End(EndEvent),
}

/// One process started through the E2B API.
#[derive(Debug)]
struct Proc {
    pid: u32,
    tag: Option<String>,
    config: ProcessConfig,
    followers: Arc<Followers>,
}

/// The queues of everyone following a process's output, and its end once it came (so a
/// follower that joins in the moment between the end and the process leaving the table still
/// gets the end, not a stream that stops short).
#[derive(Debug, Default)]
struct Followers {
    state: Mutex<FollowersState>,
}

#[derive(Debug, Default)]
struct FollowersState {
    queues: Vec<mpsc::UnboundedSender<ProcEvent>>,
    ended: Option<EndEvent>,
}

impl Followers {
    fn lock(&self) -> std::sync::MutexGuard<'_, FollowersState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self) -> mpsc::UnboundedReceiver<ProcEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = self.lock();
        match &state.ended {
            Some(end) => drop(tx.send(ProcEvent::End(end.clone()))),
            None => state.queues.push(tx),
        }
        rx
    }

    /// Sends to every follower still listening and forgets the ones that went away.
    fn send(&self, event: &ProcEvent) {
        let mut state = self.lock();
        if let ProcEvent::End(end) = event {
            state.ended = Some(end.clone());
        }
        state.queues.retain(|tx| tx.send(event.clone()).is_ok());
    }
}

/// The processes of every E2B sandbox, by sandbox and pid.
#[derive(Debug, Default)]
pub struct Processes {
    by_sandbox: Mutex<HashMap<SandboxId, HashMap<u32, Arc<Proc>>>>,
}

impl Processes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SandboxId, HashMap<u32, Arc<Proc>>>> {
        self.by_sandbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert(&self, id: &SandboxId, proc: Arc<Proc>) {
        self.lock()
            .entry(id.clone())
            .or_default()
            .insert(proc.pid, proc);
    }

    /// Forgets `proc` (and not another process that reuses its pid since).
    fn remove(&self, id: &SandboxId, proc: &Arc<Proc>) {
        let mut all = self.lock();
        if let Some(procs) = all.get_mut(id) {
            if procs
                .get(&proc.pid)
                .is_some_and(|current| Arc::ptr_eq(current, proc))
            {
                procs.remove(&proc.pid);
            }
            if procs.is_empty() {
                all.remove(id);
            }
        }
    }

    /// Drops what is known about a sandbox's processes (it is being removed).
    pub fn forget(&self, id: &SandboxId) {
        self.lock().remove(id);
    }

    fn find(&self, id: &SandboxId, selector: &ProcessSelector) -> Result<Arc<Proc>, ConnectError> {
        let all = self.lock();
        let procs = all.get(id);
        let found = match (selector.pid, &selector.tag) {
            (Some(pid), _) => procs.and_then(|p| p.get(&pid)).cloned(),
            (None, Some(tag)) => procs
                .and_then(|p| p.values().find(|proc| proc.tag.as_ref() == Some(tag)))
                .cloned(),
            (None, None) => {
                return Err(ConnectError::new(
                    Code::InvalidArgument,
                    "the process selector needs a pid or a tag",
                ))
            }
        };
        found.ok_or_else(|| {
            let which = selector
                .pid
                .map_or_else(|| format!("tag {:?}", selector.tag), |p| format!("pid {p}"));
            ConnectError::new(Code::NotFound, format!("process with {which} not found"))
        })
    }

    fn list(&self, id: &SandboxId) -> Vec<ProcessInfo> {
        let all = self.lock();
        let mut list: Vec<ProcessInfo> = all
            .get(id)
            .map(|procs| {
                procs
                    .values()
                    .map(|p| ProcessInfo {
                        config: p.config.clone(),
                        pid: p.pid,
                        tag: p.tag.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        list.sort_by_key(|p| p.pid);
        list
    }
}

/// `POST /process.Process/{method}`.
pub async fn dispatch(
    State(state): State<E2bState>,
    Path(method): Path<String>,
    request: Request,
) -> Response {
    let target = match envd::target(&state, request.headers()).await {
        Ok(target) => target,
        Err(refusal) => return refused(&method, refusal.0),
    };
    match method.as_str() {
        "Start" => start(state, target, request).await,
        "Connect" => follow(state, target, request).await,
        "StreamInput" => connect::unary_response(stream_input(&state, &target, request).await),
        "List" => connect::unary_response(
            async {
                connect::unary_request::<Empty>(request).await?;
                Ok(ListResponse {
                    processes: state.processes.list(&target.row.id),
                })
            }
            .await,
        ),
        "SendInput" => connect::unary_response(send_input(&state, &target, request).await),
        "CloseStdin" => connect::unary_response(close_stdin(&state, &target, request).await),
        "SendSignal" => connect::unary_response(send_signal(&state, &target, request).await),
        "Update" => connect::unary_response(update(&state, &target, request).await),
        other => connect::unary_response::<Empty>(Err(ConnectError::new(
            Code::Unimplemented,
            format!("process.Process/{other} is not a method hearth knows"),
        ))),
    }
}

/// A refusal in the form the method's client reads: a stream's error for streaming calls.
fn refused(method: &str, err: ConnectError) -> Response {
    if matches!(method, "Start" | "Connect") {
        connect::stream_error(err)
    } else {
        connect::unary_response::<Empty>(Err(err))
    }
}

/// The exec request for an E2B process: the sandbox's env vars under the command's own, a
/// home and working dir of `/workspace`, stdin kept open when asked for.
fn exec_request(
    row_env: &BTreeMap<String, String>,
    id: &SandboxId,
    config: &ProcessConfig,
    stdin: bool,
    timeout: Option<Duration>,
) -> Result<ExecRequest, ConnectError> {
    if config.cmd.is_empty() {
        return Err(ConnectError::new(
            Code::InvalidArgument,
            "process.cmd is empty",
        ));
    }
    let mut env = BTreeMap::from([
        ("HOME".to_owned(), HOME.to_owned()),
        ("USER".to_owned(), "root".to_owned()),
        ("E2B_SANDBOX".to_owned(), "true".to_owned()),
        ("E2B_SANDBOX_ID".to_owned(), id.to_string()),
    ]);
    env.extend(row_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    for (name, value) in &config.envs {
        if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
            return Err(ConnectError::new(
                Code::InvalidArgument,
                format!("env var {name:?} is not a valid name=value"),
            ));
        }
        env.insert(name.clone(), value.clone());
    }
    let cwd = envd::resolve(config.cwd.as_deref().unwrap_or(HOME))?;
    let mut argv = vec![config.cmd.clone()];
    argv.extend(config.args.iter().cloned());
    Ok(ExecRequest {
        argv,
        env,
        cwd: Some(cwd),
        stdin: None,
        // The guest enforces it (SIGKILL to the group), whoever still follows the output.
        timeout_ms: timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        stdin_open: stdin,
    })
}

/// How an exec ended, as envd's `EndEvent` (Go's `ProcessState`: a signal is exit code -1).
/// Output the guest dropped past its cap is said in `error`, not lost in silence.
fn end_of(result: &Result<ExitStatus, GuestClientError>, dropped: u64) -> EndEvent {
    let mut end = end_of_status(result);
    if dropped > 0 {
        let note = format!(
            "{dropped} bytes of output past the {} MiB per stream cap were dropped",
            hearth_sandbox::guest_client::MAX_STREAM_BYTES >> 20
        );
        end.error = Some(match end.error {
            Some(error) => format!("{error}; {note}"),
            None => note,
        });
    }
    end
}

fn end_of_status(result: &Result<ExitStatus, GuestClientError>) -> EndEvent {
    match result {
        Ok(status) => match (status.code, status.signal) {
            (Some(code), _) => EndEvent {
                exit_code: code,
                exited: true,
                status: format!("exit status {code}"),
                error: None,
            },
            (None, signal) => {
                let name = signal
                    .and_then(|n| nix::sys::signal::Signal::try_from(n).ok())
                    .map_or_else(|| "unknown".to_owned(), |s| s.as_str().to_lowercase());
                EndEvent {
                    exit_code: -1,
                    exited: false,
                    status: format!("signal: {name}"),
                    error: status
                        .oom_killed
                        .then(|| "killed: out of memory (the sandbox's memory limit)".to_owned()),
                }
            }
        },
        Err(err) => EndEvent {
            exit_code: -1,
            exited: false,
            status: "error".to_owned(),
            error: Some(err.to_string()),
        },
    }
}

/// Starts the exec in the background; answers with its pid once it runs, or why it did not.
async fn launch(
    state: &E2bState,
    target: &Target,
    request: StartRequest,
    timeout: Option<Duration>,
) -> Result<(u32, mpsc::UnboundedReceiver<ProcEvent>), ConnectError> {
    if request.pty.as_ref().is_some_and(|p| !p.is_null()) {
        return Err(ConnectError::new(
            Code::Unimplemented,
            "pty is not supported by hearth: run commands without a terminal",
        ));
    }
    let exec = exec_request(
        &target.row.env_vars,
        &target.row.id,
        &request.process,
        request.stdin.unwrap_or(false),
        timeout,
    )?;
    let followers = Arc::new(Followers::default());
    let first = followers.add();
    let (started_tx, started_rx) = oneshot::channel::<Result<u32, ConnectError>>();
    let running = Running {
        guest: target.guest.clone(),
        id: target.row.id.clone(),
        processes: Arc::clone(&state.processes),
        followers,
        tag: request.tag,
        config: request.process,
    };
    tokio::spawn(running.run(exec, started_tx));
    match started_rx.await {
        Ok(Ok(pid)) => Ok((pid, first)),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(ConnectError::new(
            Code::Internal,
            "the process never started",
        )),
    }
}

/// A process being run for the E2B API, from its start to its end.
struct Running {
    guest: GuestClient,
    id: SandboxId,
    processes: Arc<Processes>,
    followers: Arc<Followers>,
    tag: Option<String>,
    config: ProcessConfig,
}

impl Running {
    /// Runs `exec` to its end: registers the process once it runs (answering `started_tx`),
    /// passes its output to its followers, and tells them how it ended.
    async fn run(self, exec: ExecRequest, started_tx: oneshot::Sender<Result<u32, ConnectError>>) {
        let mut started_tx = Some(started_tx);
        let mut registered: Option<Arc<Proc>> = None;
        let mut dropped = 0u64;
        let result = self
            .guest
            .exec_observed(
                &exec,
                |pid| {
                    let proc = Arc::new(Proc {
                        pid,
                        tag: self.tag.clone(),
                        config: self.config.clone(),
                        followers: Arc::clone(&self.followers),
                    });
                    self.processes.insert(&self.id, Arc::clone(&proc));
                    registered = Some(proc);
                    if let Some(tx) = started_tx.take() {
                        let _ = tx.send(Ok(pid));
                    }
                },
                |chunk| match chunk {
                    OutputChunk::Stdout(data) => {
                        self.followers.send(&ProcEvent::Stdout(data.into()));
                    }
                    OutputChunk::Stderr(data) => {
                        self.followers.send(&ProcEvent::Stderr(data.into()));
                    }
                    OutputChunk::Truncated { dropped_bytes, .. } => dropped += dropped_bytes,
                },
            )
            .await;
        if let Some(tx) = started_tx.take() {
            // It never ran: a missing program or working dir, or a sandbox that is gone.
            let err = match &result {
                Err(err) => envd::guest_error(err),
                Ok(_) => ConnectError::new(Code::Internal, "the process ended before it started"),
            };
            let _ = tx.send(Err(err));
            return;
        }
        let end = end_of(&result, dropped);
        let pid = registered.as_ref().map(|p| p.pid);
        tracing::info!(id = %self.id, ?pid, exit_code = end.exit_code, "E2B process ended");
        self.followers.send(&ProcEvent::End(end));
        if let Some(proc) = &registered {
            self.processes.remove(&self.id, proc);
        }
    }
}

/// Streams a process's events to one client: `start` first, then output, keepalives, and
/// `end`, until the client's deadline (`Connect-Timeout-Ms`). For a `Start` that deadline is
/// the command's own, which the guest enforces; a `Connect` only stops following.
fn stream_events(
    headers: &HeaderMap,
    pid: u32,
    events: mpsc::UnboundedReceiver<ProcEvent>,
    on_deadline: &'static str,
) -> Response {
    let map = |event: Option<ProcEvent>| match event {
        Some(ProcEvent::Stdout(data)) => vec![StreamItem::Message(data_event("stdout", &data))],
        Some(ProcEvent::Stderr(data)) => vec![StreamItem::Message(data_event("stderr", &data))],
        Some(ProcEvent::End(end)) => {
            vec![
                StreamItem::Message(end_event(&end)),
                StreamItem::End(Ok(())),
            ]
        }
        None => vec![StreamItem::End(Err(ConnectError::new(
            Code::Unavailable,
            "the process's output ended without an end (the sandbox went away)",
        )))],
    };
    // A client that goes away only stops following: the process runs on.
    connect::forward(
        headers,
        start_event(pid),
        events,
        map,
        keepalive_event(),
        ConnectError::new(
            Code::DeadlineExceeded,
            format!("process {pid}: {on_deadline}"),
        ),
        (),
    )
}

async fn start(state: E2bState, target: Target, request: Request) -> Response {
    let headers = request.headers().clone();
    let result = async {
        envd::rpc_user(&headers)?;
        let start: StartRequest = connect::stream_request(request).await?;
        launch(&state, &target, start, connect::deadline(&headers)).await
    }
    .await;
    match result {
        Ok((pid, events)) => stream_events(
            &headers,
            pid,
            events,
            "the command's timeout expired and it was killed",
        ),
        Err(err) => refused("Start", err),
    }
}

async fn follow(state: E2bState, target: Target, request: Request) -> Response {
    let headers = request.headers().clone();
    let result = async {
        let select: SelectRequest = connect::stream_request(request).await?;
        let proc = state.processes.find(&target.row.id, &select.process)?;
        Ok::<_, ConnectError>((proc.pid, proc.followers.add()))
    }
    .await;
    match result {
        Ok((pid, events)) => stream_events(
            &headers,
            pid,
            events,
            "the call's timeout expired (the process runs on)",
        ),
        Err(err) => refused("Connect", err),
    }
}

fn stdin_of(input: super::messages::ProcessInput) -> Result<Vec<u8>, ConnectError> {
    if input.pty.is_some() {
        return Err(ConnectError::new(
            Code::Unimplemented,
            "pty input is not supported by hearth",
        ));
    }
    Ok(input.stdin.unwrap_or_default())
}

/// A guest refusal of stdin or a signal: the process is gone or never had an open stdin.
fn proc_error(err: &GuestClientError, pid: u32, what: &str) -> ConnectError {
    let mut mapped = envd::guest_error(err);
    if mapped.code == Code::NotFound {
        mapped.message = format!("process {pid} is not running or has no open stdin ({what})");
    }
    mapped
}

async fn send_input(
    state: &E2bState,
    target: &Target,
    request: Request,
) -> Result<Empty, ConnectError> {
    let req: SendInputRequest = connect::unary_request(request).await?;
    let proc = state.processes.find(&target.row.id, &req.process)?;
    let data = stdin_of(req.input)?;
    target
        .guest
        .proc_input(proc.pid, data.into())
        .await
        .map_err(|err| proc_error(&err, proc.pid, "send input"))?;
    Ok(Empty {})
}

/// Client-streaming input: `start` names the process, each `data` is written in order.
async fn stream_input(
    state: &E2bState,
    target: &Target,
    request: Request,
) -> Result<Empty, ConnectError> {
    let mut reader = connect::EnvelopeReader::new(request)?;
    let mut pid = None;
    while let Some(message) = reader.next::<StreamInputRequest>().await? {
        if let Some(start) = message.start {
            pid = Some(state.processes.find(&target.row.id, &start.process)?.pid);
        } else if let Some(data) = message.data {
            let pid = pid.ok_or_else(|| {
                ConnectError::new(Code::InvalidArgument, "StreamInput sent data before start")
            })?;
            let bytes = stdin_of(data.input)?;
            target
                .guest
                .proc_input(pid, bytes.into())
                .await
                .map_err(|err| proc_error(&err, pid, "stream input"))?;
        }
    }
    Ok(Empty {})
}

async fn close_stdin(
    state: &E2bState,
    target: &Target,
    request: Request,
) -> Result<Empty, ConnectError> {
    let req: SelectRequest = connect::unary_request(request).await?;
    let proc = state.processes.find(&target.row.id, &req.process)?;
    target
        .guest
        .proc_close_stdin(proc.pid)
        .await
        .map_err(|err| proc_error(&err, proc.pid, "close stdin"))?;
    Ok(Empty {})
}

async fn send_signal(
    state: &E2bState,
    target: &Target,
    request: Request,
) -> Result<Empty, ConnectError> {
    let req: SendSignalRequest = connect::unary_request(request).await?;
    let signal = match &req.signal {
        Some(serde_json::Value::String(name)) if name == "SIGNAL_SIGKILL" => libc::SIGKILL,
        Some(serde_json::Value::String(name)) if name == "SIGNAL_SIGTERM" => libc::SIGTERM,
        Some(serde_json::Value::Number(n)) if n.as_i64() == Some(9) => libc::SIGKILL,
        Some(serde_json::Value::Number(n)) if n.as_i64() == Some(15) => libc::SIGTERM,
        other => {
            return Err(ConnectError::new(
                Code::InvalidArgument,
                format!("signal {other:?}: SIGNAL_SIGKILL or SIGNAL_SIGTERM"),
            ))
        }
    };
    let proc = state.processes.find(&target.row.id, &req.process)?;
    target
        .guest
        .proc_signal(proc.pid, signal)
        .await
        .map_err(|err| proc_error(&err, proc.pid, "signal"))?;
    Ok(Empty {})
}

/// `Update` only resizes a pty, which hearth's processes never have.
async fn update(
    state: &E2bState,
    target: &Target,
    request: Request,
) -> Result<Empty, ConnectError> {
    let req: UpdateRequest = connect::unary_request(request).await?;
    let proc = state.processes.find(&target.row.id, &req.process)?;
    Err(ConnectError::new(
        Code::Unimplemented,
        format!(
            "process {}: Update changes a pty, and hearth runs processes without one",
            proc.pid
        ),
    ))
}
