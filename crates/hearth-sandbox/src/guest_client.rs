//! Client for the `hearth-guest` HTTP/JSON protocol.
//!
//! One short HTTP/1.1 connection per request over the guest's Unix socket: a handshake on a
//! local socket costs microseconds, and it keeps the client free of pooling state. The endpoints
//! are documented in `hearth-guest`'s `server` module; the bodies are `hearth_proto` types.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hearth_proto::{
    query, DirListing, ErrorBody, ErrorKind, ExecEvent, ExecRequest, ExitStatus, FileStat, Health,
    MkdirResult, StreamName, VersionInfo, WatchEvent, WriteResult,
};
use http::{header, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

/// Longest accepted line of the exec event stream; guest lines are at most ~90 KiB.
const MAX_EVENT_LINE: usize = 4 * 1024 * 1024;

// Everything read from a guest is bounded: a compromised guest (or whatever answers on its
// socket) cannot make hearth hold more than these, whatever it sends.

/// Largest file [`GuestClient::read_file`] accepts: `hearth-guest`'s own `--max-file`.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Output accepted per stream of one exec: `hearth-guest`'s own `--max-output` (it reports
/// what it dropped beyond that; a guest that sends more is cut off).
pub const MAX_STREAM_BYTES: u64 = 16 * 1024 * 1024;
/// Largest JSON answer (an audit page, a directory listing).
const MAX_JSON_BYTES: u64 = 16 * 1024 * 1024;
/// Largest error body read (only its start is shown).
const MAX_ERROR_BYTES: u64 = 64 * 1024;

/// Everything that can go wrong talking to a guest.
#[derive(Debug, thiserror::Error)]
pub enum GuestClientError {
    #[error("connect to guest socket {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("refusing guest socket {path}: {why}")]
    Untrusted { path: PathBuf, why: String },
    #[error("HTTP exchange over guest socket {path}: {source}")]
    Http { path: PathBuf, source: hyper::Error },
    /// The guest answered with its JSON error body.
    #[error("guest error {status} ({kind}): {message}")]
    Guest {
        status: u16,
        kind: ErrorKind,
        message: String,
    },
    #[error("guest answered {status} without an error body: {body}")]
    UnexpectedStatus { status: u16, body: String },
    #[error("malformed {what} from the guest: {source}")]
    Decode {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("exec event line longer than {MAX_EVENT_LINE} bytes")]
    EventTooLong,
    #[error("the guest sent more than {limit} bytes of {what}; cut off there")]
    TooLarge { what: &'static str, limit: u64 },
    #[error("exec stream ended without an exit event")]
    NoExit,
    #[error("guest failed during exec ({kind}): {message}")]
    ExecFailed { kind: ErrorKind, message: String },
    #[error("guest at {path} not ready after {waited:?}: {last}")]
    NotReady {
        path: PathBuf,
        waited: Duration,
        last: Box<GuestClientError>,
    },
    #[error("build request for {uri}: {source}")]
    Request { uri: String, source: http::Error },
}

impl GuestClientError {
    /// The guest's error kind, if the guest itself refused the request.
    pub fn guest_kind(&self) -> Option<ErrorKind> {
        match self {
            GuestClientError::Guest { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// Output of a running exec, handed to the `on_output` callback as it arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputChunk {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The stream passed the guest's cap; `dropped_bytes` were discarded.
    Truncated {
        stream: StreamName,
        dropped_bytes: u64,
    },
}

/// A handle on one guest's socket. Cheap to clone; holds no connection.
#[derive(Debug, Clone)]
pub struct GuestClient {
    socket: PathBuf,
}

impl GuestClient {
    pub fn new(socket: PathBuf) -> Self {
        Self { socket }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn health(&self) -> Result<Health, GuestClientError> {
        self.get_json("/v1/health", "health").await
    }

    pub async fn version(&self) -> Result<VersionInfo, GuestClientError> {
        self.get_json("/v1/version", "version").await
    }

    /// Polls `health` every few milliseconds until it answers or `timeout` passes.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Health, GuestClientError> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(2);
        loop {
            match self.health().await {
                Ok(health) => return Ok(health),
                Err(err) if start.elapsed() >= timeout => {
                    return Err(GuestClientError::NotReady {
                        path: self.socket.clone(),
                        waited: start.elapsed(),
                        last: Box::new(err),
                    })
                }
                Err(_) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
            }
        }
    }

    /// Runs a command, calling `on_output` for each chunk as it arrives, and returns how it ended.
    pub async fn exec(
        &self,
        req: &ExecRequest,
        on_output: impl FnMut(OutputChunk),
    ) -> Result<ExitStatus, GuestClientError> {
        self.exec_observed(req, |_| {}, on_output).await
    }

    /// [`exec`](Self::exec), also telling `on_started` the process's pid in the sandbox as soon
    /// as it runs (what [`proc_input`](Self::proc_input) and [`proc_signal`](Self::proc_signal)
    /// address).
    pub async fn exec_observed(
        &self,
        req: &ExecRequest,
        on_started: impl FnOnce(u32),
        mut on_output: impl FnMut(OutputChunk),
    ) -> Result<ExitStatus, GuestClientError> {
        let mut on_started = Some(on_started);
        // Serializing a plain struct of strings and bytes cannot fail.
        let body = serde_json::to_vec(req).unwrap_or_default();
        let resp = self
            .send(Method::POST, "/v1/exec".into(), Bytes::from(body))
            .await?;
        let mut body = check_status(resp).await?.into_body();
        let mut buf = BytesMut::new();
        let mut received = [0u64; 2];
        let mut on_output = |chunk: OutputChunk| -> Result<(), GuestClientError> {
            let (slot, what, len) = match &chunk {
                OutputChunk::Stdout(data) => (0, "stdout", data.len()),
                OutputChunk::Stderr(data) => (1, "stderr", data.len()),
                OutputChunk::Truncated { .. } => {
                    on_output(chunk);
                    return Ok(());
                }
            };
            received[slot] += u64::try_from(len).unwrap_or(u64::MAX);
            if received[slot] > MAX_STREAM_BYTES {
                return Err(GuestClientError::TooLarge {
                    what,
                    limit: MAX_STREAM_BYTES,
                });
            }
            on_output(chunk);
            Ok(())
        };
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.http_err(e))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line = buf.split_to(nl + 1);
                if let Some(status) = handle_event(&line[..nl], &mut on_started, &mut on_output)? {
                    return Ok(status);
                }
            }
            if buf.len() > MAX_EVENT_LINE {
                return Err(GuestClientError::EventTooLong);
            }
        }
        Err(GuestClientError::NoExit)
    }

    /// The whole file at `path` (absolute, inside the sandbox), at most [`MAX_FILE_BYTES`].
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, GuestClientError> {
        self.read_file_limited(path, MAX_FILE_BYTES).await
    }

    /// The whole file at `path`, refused (`TooLarge`) past `limit` bytes, however the guest
    /// announces or streams it.
    pub async fn read_file_limited(
        &self,
        path: &str,
        limit: u64,
    ) -> Result<Vec<u8>, GuestClientError> {
        let uri = format!("/v1/files?path={}", query::encode(path));
        let resp = self.send(Method::GET, uri, Bytes::new()).await?;
        let resp = check_status(resp).await?;
        read_body(resp, limit, "file content")
            .await
            .map_err(|err| match err {
                BodyError::TooLarge => GuestClientError::TooLarge {
                    what: "file content",
                    limit,
                },
                BodyError::Http(e) => self.http_err(e),
            })
    }

    /// Atomically replaces the file at `path` with `data` and permission bits `mode`.
    pub async fn write_file(
        &self,
        path: &str,
        data: impl Into<Bytes>,
        mode: u32,
    ) -> Result<WriteResult, GuestClientError> {
        let uri = format!("/v1/files?path={}&mode={mode:o}", query::encode(path));
        let resp = self.send(Method::PUT, uri, data.into()).await?;
        decode(check_status(resp).await?, "write result").await
    }

    pub async fn list_dir(&self, path: &str) -> Result<DirListing, GuestClientError> {
        let uri = format!("/v1/dirs?path={}", query::encode(path));
        self.get_json(&uri, "directory listing").await
    }

    /// Makes the directory `path` and its missing parents; `created` is false if it was there.
    pub async fn mkdir(&self, path: &str) -> Result<MkdirResult, GuestClientError> {
        let uri = format!("/v1/mkdir?path={}", query::encode(path));
        self.post_json(uri, Bytes::new(), "mkdir result").await
    }

    /// Renames `from` to `to` (both absolute) and returns what is now at `to`.
    pub async fn rename(&self, from: &str, to: &str) -> Result<FileStat, GuestClientError> {
        let uri = format!(
            "/v1/rename?from={}&to={}",
            query::encode(from),
            query::encode(to)
        );
        self.post_json(uri, Bytes::new(), "rename result").await
    }

    /// Removes a file, symlink or directory tree.
    pub async fn remove(&self, path: &str) -> Result<(), GuestClientError> {
        let uri = format!("/v1/files?path={}", query::encode(path));
        let resp = self.send(Method::DELETE, uri, Bytes::new()).await?;
        check_status(resp).await.map(drop)
    }

    /// Watches the directory `path` (and below it, with `recursive`), calling `on_event` with
    /// each event until the guest ends the stream, `on_event` returns false, or the future is
    /// dropped (which hangs up, and the guest stops watching). The first event is `Started`.
    pub async fn watch(
        &self,
        path: &str,
        recursive: bool,
        mut on_event: impl FnMut(WatchEvent) -> bool,
    ) -> Result<(), GuestClientError> {
        let uri = format!(
            "/v1/watch?path={}&recursive={}",
            query::encode(path),
            u8::from(recursive)
        );
        let resp = self.send(Method::GET, uri, Bytes::new()).await?;
        let mut body = check_status(resp).await?.into_body();
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.http_err(e))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line = buf.split_to(nl + 1);
                let event: WatchEvent = serde_json::from_slice(&line[..nl]).map_err(|source| {
                    GuestClientError::Decode {
                        what: "watch event",
                        source,
                    }
                })?;
                if !on_event(event) {
                    return Ok(());
                }
            }
            if buf.len() > MAX_EVENT_LINE {
                return Err(GuestClientError::EventTooLong);
            }
        }
        Ok(())
    }

    /// Writes `data` to the stdin of a running exec that asked for `stdin_open`.
    pub async fn proc_input(&self, pid: u32, data: Bytes) -> Result<(), GuestClientError> {
        let resp = self
            .send(Method::POST, format!("/v1/procs/input?pid={pid}"), data)
            .await?;
        check_status(resp).await.map(drop)
    }

    /// Closes the stdin of a running exec that asked for `stdin_open`.
    pub async fn proc_close_stdin(&self, pid: u32) -> Result<(), GuestClientError> {
        let uri = format!("/v1/procs/close-stdin?pid={pid}");
        let resp = self.send(Method::POST, uri, Bytes::new()).await?;
        check_status(resp).await.map(drop)
    }

    /// Sends signal number `signal` to a running exec's process group.
    pub async fn proc_signal(&self, pid: u32, signal: i32) -> Result<(), GuestClientError> {
        let uri = format!("/v1/procs/signal?pid={pid}&signal={signal}");
        let resp = self.send(Method::POST, uri, Bytes::new()).await?;
        check_status(resp).await.map(drop)
    }

    async fn post_json<T: DeserializeOwned>(
        &self,
        uri: String,
        body: Bytes,
        what: &'static str,
    ) -> Result<T, GuestClientError> {
        let resp = self.send(Method::POST, uri, body).await?;
        decode(check_status(resp).await?, what).await
    }

    /// The calls the guest's own seccomp listener refused, from `since` on (a microVM's
    /// `audit_deny`); at most `hearth-guest`'s page size per call.
    pub async fn seccomp_audit(
        &self,
        since: u64,
    ) -> Result<hearth_seccomp::audit::AuditPage, GuestClientError> {
        self.get_json(&format!("/v1/audit?since={since}"), "audit page")
            .await
    }

    pub async fn stat(&self, path: &str) -> Result<FileStat, GuestClientError> {
        let uri = format!("/v1/stat?path={}", query::encode(path));
        self.get_json(&uri, "stat").await
    }

    /// A microVM guest lets go of its 9p workspace before a snapshot (`busy` while in use).
    pub async fn vm_quiesce(&self) -> Result<(), GuestClientError> {
        let path = hearth_proto::vm::VM_QUIESCE_PATH;
        let resp = self.send(Method::POST, path.into(), Bytes::new()).await?;
        check_status(resp).await.map(drop)
    }

    /// A microVM guest mounts its workspace again and, after a restore, takes on `thaw`'s
    /// address and hostname.
    pub async fn vm_thaw(&self, thaw: &hearth_proto::VmThaw) -> Result<(), GuestClientError> {
        // Serializing a plain struct cannot fail.
        let body = serde_json::to_vec(thaw).unwrap_or_default();
        let path = hearth_proto::vm::VM_THAW_PATH;
        let resp = self
            .send(Method::POST, path.into(), Bytes::from(body))
            .await?;
        check_status(resp).await.map(drop)
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        uri: &str,
        what: &'static str,
    ) -> Result<T, GuestClientError> {
        let resp = self.send(Method::GET, uri.into(), Bytes::new()).await?;
        decode(check_status(resp).await?, what).await
    }

    /// One request on a fresh connection; the connection task ends with the response body.
    async fn send(
        &self,
        method: Method,
        uri: String,
        body: Bytes,
    ) -> Result<Response<Incoming>, GuestClientError> {
        let stream = connect_checked(&self.socket).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.http_err(e))?;
        tokio::spawn(async move {
            // Errors surface through the response future or the body stream.
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(method)
            .uri(&uri)
            .header(header::HOST, "guest")
            .body(Full::new(body))
            .map_err(|source| GuestClientError::Request { uri, source })?;
        sender.send_request(req).await.map_err(|e| self.http_err(e))
    }

    fn http_err(&self, source: hyper::Error) -> GuestClientError {
        GuestClientError::Http {
            path: self.socket.clone(),
            source,
        }
    }
}

/// Connects to the guest socket at `path` only if it is what hearth made: a socket (not a
/// symlink to one) owned by hearth's own uid. The check and the connect use the same inode: the
/// path is opened once with `O_PATH | O_NOFOLLOW`, and the connect goes through that fd's
/// `/proc/self/fd` name, so a swap of the path in between changes nothing.
async fn connect_checked(path: &Path) -> Result<UnixStream, GuestClientError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
    let connect_err = |source| GuestClientError::Connect {
        path: path.to_owned(),
        source,
    };
    let untrusted = |why: String| GuestClientError::Untrusted {
        path: path.to_owned(),
        why,
    };
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|err| match err.raw_os_error() {
            // O_PATH|O_NOFOLLOW on a symlink opens the link itself; ELOOP comes from others.
            Some(libc::ELOOP) => untrusted("it is a symlink".into()),
            _ => connect_err(err),
        })?;
    let meta = handle.metadata().map_err(connect_err)?;
    if !meta.file_type().is_socket() {
        return Err(untrusted(format!(
            "it is not a socket ({})",
            if meta.file_type().is_symlink() {
                "a symlink"
            } else {
                "another kind of file"
            }
        )));
    }
    let own = nix::unistd::geteuid().as_raw();
    if meta.uid() != own {
        return Err(untrusted(format!(
            "it belongs to uid {}, not to hearth's uid {own}",
            meta.uid()
        )));
    }
    let by_fd = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&handle));
    let stream = UnixStream::connect(&by_fd).await.map_err(connect_err)?;
    drop(handle);
    Ok(stream)
}

/// Passes output to the callback; returns the exit status once the `exit` event arrives.
fn handle_event(
    line: &[u8],
    on_started: &mut Option<impl FnOnce(u32)>,
    on_output: &mut impl FnMut(OutputChunk) -> Result<(), GuestClientError>,
) -> Result<Option<ExitStatus>, GuestClientError> {
    if line.is_empty() {
        return Ok(None);
    }
    let event: ExecEvent =
        serde_json::from_slice(line).map_err(|source| GuestClientError::Decode {
            what: "exec event",
            source,
        })?;
    match event {
        ExecEvent::Started { pid } => {
            if let Some(on_started) = on_started.take() {
                on_started(pid);
            }
        }
        ExecEvent::Stdout { data } => on_output(OutputChunk::Stdout(data))?,
        ExecEvent::Stderr { data } => on_output(OutputChunk::Stderr(data))?,
        ExecEvent::Truncated {
            stream,
            dropped_bytes,
        } => on_output(OutputChunk::Truncated {
            stream,
            dropped_bytes,
        })?,
        ExecEvent::Exit(status) => return Ok(Some(status)),
        ExecEvent::Error(info) => {
            return Err(GuestClientError::ExecFailed {
                kind: info.kind,
                message: info.message,
            })
        }
    }
    Ok(None)
}

/// Turns a non-2xx answer into [`GuestClientError::Guest`] (or `UnexpectedStatus`).
async fn check_status(resp: Response<Incoming>) -> Result<Response<Incoming>, GuestClientError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    // Error bodies are small JSON; whatever cannot be read (or is too long) counts as empty.
    let body = read_body(resp, MAX_ERROR_BYTES, "error body")
        .await
        .unwrap_or_default();
    Err(match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(ErrorBody { error }) => GuestClientError::Guest {
            status: status.as_u16(),
            kind: error.kind,
            message: error.message,
        },
        Err(_) => GuestClientError::UnexpectedStatus {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
        },
    })
}

async fn decode<T: DeserializeOwned>(
    resp: Response<Incoming>,
    what: &'static str,
) -> Result<T, GuestClientError> {
    let status = resp.status().as_u16();
    let body = match read_body(resp, MAX_JSON_BYTES, what).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            return Err(GuestClientError::TooLarge {
                what,
                limit: MAX_JSON_BYTES,
            })
        }
        // A JSON answer is small; failing to read it means the guest dropped the connection.
        Err(BodyError::Http(err)) => {
            return Err(GuestClientError::UnexpectedStatus {
                status,
                body: format!("(body unreadable: {err})"),
            })
        }
    };
    serde_json::from_slice(&body).map_err(|source| GuestClientError::Decode { what, source })
}

#[derive(Debug)]
enum BodyError {
    TooLarge,
    Http(hyper::Error),
}

/// Reads a response body, stopping (and dropping the connection) as soon as it passes `limit`
/// bytes: a `Content-Length` over the limit is refused before anything is read.
async fn read_body(
    resp: Response<Incoming>,
    limit: u64,
    what: &'static str,
) -> Result<Vec<u8>, BodyError> {
    let announced = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|len| len > limit) {
        tracing::debug!(what, ?announced, limit, "guest announced an oversized body");
        return Err(BodyError::TooLarge);
    }
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Http)?;
        if let Ok(data) = frame.into_data() {
            if u64::try_from(out.len() + data.len()).unwrap_or(u64::MAX) > limit {
                return Err(BodyError::TooLarge);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}
