//! `/v1/procs/*`: what the host can do to a running exec besides reading its output stream.
//!
//! | Method | Path | Request | Response |
//! |---|---|---|---|
//! | POST | `/v1/procs/input?pid=N` | bytes for its stdin | `{}` once written (the exec must have asked for `stdin_open`) |
//! | POST | `/v1/procs/close-stdin?pid=N` | | `{}`; the process reads EOF |
//! | POST | `/v1/procs/signal?pid=N&signal=S` | | `{}`; `S` (a number) goes to the exec's whole process group |
//!
//! Only processes this daemon exec'd are addressed (their pids are in the reaper's table, so a
//! pid the kernel reused for something else can never be hit); any other pid is `not_found`.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

use bytes::Bytes;
use hearth_proto::ErrorKind;
use http::{Response, StatusCode};
use hyper::body::Incoming;
use nix::sys::signal::Signal;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};

use crate::http::{json, query_param, read_limited, ApiError, RespBody};
use crate::server::State;

/// What a stdin writer is asked to do; each write answers once its bytes are in the pipe, so
/// input sent in order arrives in order and the caller learns of a process that stopped reading.
#[derive(Debug)]
enum Input {
    Write(Bytes, oneshot::Sender<Result<(), String>>),
}

/// The open stdins of running execs, by pid. Dropping an entry's sender closes that stdin.
#[derive(Debug, Default)]
pub struct Stdins {
    writers: Mutex<HashMap<i32, mpsc::Sender<Input>>>,
}

impl Stdins {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, mpsc::Sender<Input>>> {
        self.writers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `fd` (the write end of `pid`'s stdin) open for later input, after `initial`.
    pub fn register(&self, pid: i32, fd: OwnedFd, initial: Option<Vec<u8>>) {
        let mut sender = match pipe::Sender::from_owned_fd(fd) {
            Ok(sender) => sender,
            Err(err) => {
                // The process then reads EOF at once, and input for it is refused as not open.
                tracing::error!(pid, %err, "cannot keep stdin open");
                return;
            }
        };
        let (tx, mut rx) = mpsc::channel::<Input>(8);
        self.lock().insert(pid, tx);
        tokio::spawn(async move {
            if let Some(data) = initial {
                if sender.write_all(&data).await.is_err() {
                    return;
                }
            }
            // Ends when the entry is removed (close-stdin, or the process ended): the pipe's
            // write end closes with `sender`.
            while let Some(Input::Write(data, done)) = rx.recv().await {
                let written = sender.write_all(&data).await.map_err(|e| e.to_string());
                let _ = done.send(written);
            }
        });
    }

    /// Forgets `pid`'s stdin, which closes it once queued input is written.
    pub fn close(&self, pid: i32) -> bool {
        self.lock().remove(&pid).is_some()
    }

    async fn write(&self, pid: i32, data: Bytes) -> Result<(), ApiError> {
        let writer = self
            .lock()
            .get(&pid)
            .cloned()
            .ok_or_else(|| no_stdin(pid))?;
        let (done, written) = oneshot::channel();
        writer
            .send(Input::Write(data, done))
            .await
            .map_err(|_| no_stdin(pid))?;
        match written.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(ApiError::new(
                ErrorKind::Io,
                format!("process {pid} does not read its stdin any more: {err}"),
            )),
            Err(_) => Err(no_stdin(pid)),
        }
    }
}

fn no_stdin(pid: i32) -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        format!("no running process {pid} with an open stdin"),
    )
}

fn pid_param(query: Option<&str>) -> Result<i32, ApiError> {
    let raw = query_param(query, "pid")?
        .ok_or_else(|| ApiError::new(ErrorKind::BadRequest, "missing query parameter `pid`"))?;
    raw.parse::<i32>()
        .ok()
        .filter(|pid| *pid > 0)
        .ok_or_else(|| ApiError::new(ErrorKind::BadRequest, format!("bad pid {raw:?}")))
}

/// `POST /v1/procs/input?pid=N`.
pub async fn input(
    state: &State,
    query: Option<&str>,
    body: Incoming,
) -> Result<Response<RespBody>, ApiError> {
    let pid = pid_param(query)?;
    let limit = usize::try_from(state.config.max_stdin).unwrap_or(usize::MAX);
    let data = read_limited(body, limit).await?;
    state.stdins.write(pid, data).await?;
    Ok(json(StatusCode::OK, &serde_json::json!({})))
}

/// `POST /v1/procs/close-stdin?pid=N`.
pub fn close_stdin(state: &State, query: Option<&str>) -> Result<Response<RespBody>, ApiError> {
    let pid = pid_param(query)?;
    if !state.stdins.close(pid) {
        return Err(no_stdin(pid));
    }
    Ok(json(StatusCode::OK, &serde_json::json!({})))
}

/// `POST /v1/procs/signal?pid=N&signal=S`.
pub fn signal(state: &State, query: Option<&str>) -> Result<Response<RespBody>, ApiError> {
    let pid = pid_param(query)?;
    let raw = query_param(query, "signal")?
        .ok_or_else(|| ApiError::new(ErrorKind::BadRequest, "missing query parameter `signal`"))?;
    let sig = raw
        .parse::<i32>()
        .ok()
        .and_then(|n| Signal::try_from(n).ok())
        .ok_or_else(|| ApiError::new(ErrorKind::BadRequest, format!("bad signal {raw:?}")))?;
    if !state.children.signal_one(pid, sig) {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            format!("no running process {pid}"),
        ));
    }
    Ok(json(StatusCode::OK, &serde_json::json!({})))
}
