//! `POST /v1/exec`: run a command and stream its output as NDJSON events.
//!
//! Output is capped per stream: past the cap the pipe is still drained (so the child never
//! blocks on a full pipe) but the bytes are discarded and counted for the `truncated` event. The
//! event channel is small, so a slow client slows the child down instead of growing memory.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hearth_proto::{ErrorKind, ExecEvent, ExecRequest, ExitStatus, StreamName, NDJSON};
use http::{header, HeaderValue, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::http::{read_limited, ApiError, ChannelBody, RespBody};
use crate::oom;
use crate::reaper::{pid_i32, Reaped};
use crate::server::State;
use crate::spawn::{self, SpawnError};

/// How long output may keep arriving after the process exits: background children that inherited
/// the pipes would otherwise hold the response open forever.
const DRAIN_GRACE: Duration = Duration::from_millis(200);
const READ_CHUNK: usize = 64 * 1024;

type EventTx = mpsc::Sender<Result<Bytes, io::Error>>;

/// Parses the request, starts the process and returns the streaming response.
pub async fn handle(state: Arc<State>, body: Incoming) -> Result<Response<RespBody>, ApiError> {
    let limit = state.config.max_request_bytes();
    let raw = read_limited(body, limit).await?;
    let mut req: ExecRequest = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::new(ErrorKind::BadRequest, format!("exec request: {e}")))?;
    state.config.exec_defaults.apply(&mut req);
    let stdin_len = req.stdin.as_ref().map_or(0, Vec::len);
    if stdin_len as u64 > state.config.max_stdin {
        return Err(ApiError::new(
            ErrorKind::TooLarge,
            format!(
                "stdin is {stdin_len} bytes; at most {} allowed",
                state.config.max_stdin
            ),
        ));
    }
    let spawn::Prepared { mut cmd, handoff } = spawn::build(
        &req,
        state.config.seccomp.as_ref(),
        state.config.confinement.as_ref(),
    )?;
    let oom_before = oom::oom_kills(&state.config.cgroup_root);
    let (mut child, waiter) = state.children.spawn_with(|| {
        cmd.spawn().map_err(|source| SpawnError::Spawn {
            path: cmd.get_program().into(),
            source,
        })
    })?;
    let pid = child.id();
    oom::make_killable(pid);
    if let Some(handoff) = handoff {
        match handoff.receive() {
            Ok(listener) => state.audit.serve(listener, pid),
            // The filter is in place, so the audited calls are still refused (ENOSYS, with no
            // listener); only their record is lost, which the log says.
            Err(err) => tracing::error!(pid, %err, "no seccomp listener from the child"),
        }
    }
    tracing::info!(pid, program = %req.argv[0], "exec started");

    let (tx, rx) = mpsc::channel(16);
    // The channel is empty, so this cannot fail for lack of room.
    let _ = tx.try_send(Ok(event_line(&ExecEvent::Started { pid })));
    let pipes = Pipes {
        stdin: child.stdin.take().map(OwnedFd::from),
        stdout: child.stdout.take().map(OwnedFd::from),
        stderr: child.stderr.take().map(OwnedFd::from),
    };
    let mut stdin = pipes.stdin;
    let mut initial_stdin = req.stdin;
    if req.stdin_open {
        if let Some(fd) = stdin.take() {
            state
                .stdins
                .register(pid_i32(pid), fd, initial_stdin.take());
        }
    }
    let pipes = Pipes { stdin, ..pipes };
    let run = Run {
        pid: pid_i32(pid),
        stdin: initial_stdin,
        deadline: req
            .timeout_ms
            .map(|ms| Instant::now() + Duration::from_millis(ms)),
        max_output: state.config.max_output,
        oom_before,
        cgroup_root: state.config.cgroup_root.clone(),
    };
    let state_for_end = Arc::clone(&state);
    tokio::spawn(async move {
        let pid = run.pid;
        drive(run, pipes, waiter, tx).await;
        // Its stdin writer (if any) has nobody left to write to.
        state_for_end.stdins.close(pid);
    });

    let mut resp = Response::new(ChannelBody::new(rx).boxed());
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    Ok(resp)
}

#[derive(Debug)]
struct Pipes {
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

#[derive(Debug)]
struct Run {
    pid: i32,
    stdin: Option<Vec<u8>>,
    deadline: Option<Instant>,
    max_output: u64,
    oom_before: Option<u64>,
    cgroup_root: std::path::PathBuf,
}

/// Feeds stdin, pumps both outputs, enforces the timeout and sends the final events.
async fn drive(mut run: Run, pipes: Pipes, waiter: oneshot::Receiver<Reaped>, tx: EventTx) {
    if let (Some(fd), Some(data)) = (pipes.stdin, run.stdin.take()) {
        tokio::spawn(async move {
            // EPIPE just means the child did not read all of its stdin.
            if let Ok(mut sender) = pipe::Sender::from_owned_fd(fd) {
                let _ = sender.write_all(&data).await;
            }
        });
    }
    let (exited_tx, exited_rx) = watch::channel(false);
    let pump_for = |fd: Option<OwnedFd>, stream| {
        let (tx, exited, cap) = (tx.clone(), exited_rx.clone(), run.max_output);
        tokio::spawn(async move {
            match fd {
                Some(fd) => pump(fd, stream, cap, tx, exited).await,
                None => 0,
            }
        })
    };
    let stdout = pump_for(pipes.stdout, StreamName::Stdout);
    let stderr = pump_for(pipes.stderr, StreamName::Stderr);

    let (reaped, timed_out) = wait(run.pid, run.deadline, waiter, &tx).await;
    let _ = exited_tx.send(true);
    for (task, stream) in [(stdout, StreamName::Stdout), (stderr, StreamName::Stderr)] {
        let dropped_bytes = task.await.unwrap_or(0);
        if dropped_bytes > 0 {
            let event = ExecEvent::Truncated {
                stream,
                dropped_bytes,
            };
            let _ = tx.send(Ok(event_line(&event))).await;
        }
    }
    let event = match reaped {
        Some(reaped) => ExecEvent::Exit(exit_status(reaped, timed_out, &run)),
        None => ExecEvent::Error(hearth_proto::ErrorInfo {
            kind: ErrorKind::Internal,
            message: "the daemon lost track of the process".into(),
        }),
    };
    tracing::info!(pid = run.pid, ?event, "exec finished");
    let _ = tx.send(Ok(event_line(&event))).await;
}

/// Waits for the reaper's status, killing the process group on timeout or when the client goes
/// away (nobody is left to read the output, and an abandoned command must not run on).
async fn wait(
    pid: i32,
    deadline: Option<Instant>,
    mut waiter: oneshot::Receiver<Reaped>,
    tx: &EventTx,
) -> (Option<Reaped>, bool) {
    let mut timed_out = false;
    let mut client_gone = false;
    loop {
        tokio::select! {
            reaped = &mut waiter => return (reaped.ok(), timed_out),
            () = sleep_until(deadline), if !timed_out => {
                timed_out = true;
                kill_group(pid);
            }
            () = tx.closed(), if !client_gone => {
                client_gone = true;
                tracing::info!(pid, "client went away; killing the process group");
                kill_group(pid);
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn kill_group(pid: i32) {
    // ESRCH: the group is already gone, which is what we wanted.
    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
}

fn exit_status(reaped: Reaped, timed_out: bool, run: &Run) -> ExitStatus {
    match reaped {
        Reaped::Exited(code) => ExitStatus {
            code: Some(code),
            timed_out,
            ..ExitStatus::default()
        },
        Reaped::Signaled(sig) => ExitStatus {
            signal: Some(sig),
            timed_out,
            oom_killed: sig == Signal::SIGKILL as i32
                && !timed_out
                && oom::rose(run.oom_before, oom::oom_kills(&run.cgroup_root)),
            ..ExitStatus::default()
        },
    }
}

/// Copies one output pipe into events until EOF (or until the process has exited and the pipe
/// stayed quiet for [`DRAIN_GRACE`]); returns how many bytes were dropped past `cap`.
async fn pump(
    fd: OwnedFd,
    stream: StreamName,
    cap: u64,
    tx: EventTx,
    mut exited: watch::Receiver<bool>,
) -> u64 {
    let Ok(mut pipe) = pipe::Receiver::from_owned_fd(fd) else {
        return 0;
    };
    let mut buf = vec![0u8; READ_CHUNK];
    let (mut kept, mut dropped) = (0u64, 0u64);
    loop {
        let read = if *exited.borrow() {
            match tokio::time::timeout(DRAIN_GRACE, pipe.read(&mut buf)).await {
                Ok(read) => read,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                read = pipe.read(&mut buf) => read,
                _ = exited.changed() => continue,
            }
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let room = usize::try_from(cap.saturating_sub(kept)).unwrap_or(usize::MAX);
        let keep = n.min(room);
        kept += keep as u64;
        dropped += (n - keep) as u64;
        if keep > 0 {
            let data = buf[..keep].to_vec();
            let event = match stream {
                StreamName::Stdout => ExecEvent::Stdout { data },
                StreamName::Stderr => ExecEvent::Stderr { data },
            };
            if tx.send(Ok(event_line(&event))).await.is_err() {
                break;
            }
        }
    }
    dropped
}

fn event_line(event: &ExecEvent) -> Bytes {
    // Serializing our own enum cannot fail.
    let mut line = serde_json::to_vec(event).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}
