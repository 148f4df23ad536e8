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
    StreamName, VersionInfo, WriteResult,
};
use http::{header, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

/// Longest accepted line of the exec event stream; guest lines are at most ~90 KiB.
const MAX_EVENT_LINE: usize = 4 * 1024 * 1024;

/// Everything that can go wrong talking to a guest.
#[derive(Debug, thiserror::Error)]
pub enum GuestClientError {
    #[error("connect to guest socket {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
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
        mut on_output: impl FnMut(OutputChunk),
    ) -> Result<ExitStatus, GuestClientError> {
        // Serializing a plain struct of strings and bytes cannot fail.
        let body = serde_json::to_vec(req).unwrap_or_default();
        let resp = self
            .send(Method::POST, "/v1/exec".into(), Bytes::from(body))
            .await?;
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
                if let Some(status) = handle_event(&line[..nl], &mut on_output)? {
                    return Ok(status);
                }
            }
            if buf.len() > MAX_EVENT_LINE {
                return Err(GuestClientError::EventTooLong);
            }
        }
        Err(GuestClientError::NoExit)
    }

    /// The whole file at `path` (absolute, inside the sandbox).
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, GuestClientError> {
        let uri = format!("/v1/files?path={}", query::encode(path));
        let resp = self.send(Method::GET, uri, Bytes::new()).await?;
        let body = check_status(resp).await?.into_body();
        let bytes = body.collect().await.map_err(|e| self.http_err(e))?;
        Ok(bytes.to_bytes().to_vec())
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
        let stream = UnixStream::connect(&self.socket).await.map_err(|source| {
            GuestClientError::Connect {
                path: self.socket.clone(),
                source,
            }
        })?;
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

/// Passes output to the callback; returns the exit status once the `exit` event arrives.
fn handle_event(
    line: &[u8],
    on_output: &mut impl FnMut(OutputChunk),
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
        ExecEvent::Started { .. } => {}
        ExecEvent::Stdout { data } => on_output(OutputChunk::Stdout(data)),
        ExecEvent::Stderr { data } => on_output(OutputChunk::Stderr(data)),
        ExecEvent::Truncated {
            stream,
            dropped_bytes,
        } => on_output(OutputChunk::Truncated {
            stream,
            dropped_bytes,
        }),
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
    // Error bodies are small JSON; whatever cannot be read is reported as empty.
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
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
    let body = match resp.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        // A JSON answer is tiny; failing to read it means the guest dropped the connection.
        Err(err) => {
            return Err(GuestClientError::UnexpectedStatus {
                status,
                body: format!("(body unreadable: {err})"),
            })
        }
    };
    serde_json::from_slice(&body).map_err(|source| GuestClientError::Decode { what, source })
}
