//! The HTTP + JSON server, its routes, and the daemon's lifecycle. The router is the same on
//! every transport (`transport::Listen`): HTTP/1.1 on a Unix or vsock socket, HTTP/2 on a
//! virtio-serial port.
//!
//! Endpoints (every error is `{"error":{"kind":..,"message":..}}` with a fitting status; kinds
//! are `hearth_proto::ErrorKind` in snake_case):
//!
//! | Method | Path | Request | Response |
//! |---|---|---|---|
//! | GET  | `/v1/health`  | | `Health` JSON: `{"status":"ok","pid":1,"uptime_ms":..,"running":..}` |
//! | GET  | `/v1/version` | | `VersionInfo` JSON: name, version, protocol_version |
//! | POST | `/v1/exec`    | `ExecRequest` JSON | 200 `application/x-ndjson` stream of `ExecEvent`s, or a 4xx JSON error if it cannot start (`not_found` for a missing binary or cwd) |
//! | GET  | `/v1/files?path=/abs` | | the bytes (`application/octet-stream`); 413 `too_large` over `--max-file` |
//! | PUT  | `/v1/files?path=/abs&mode=0644` | the bytes | `WriteResult` JSON; atomic replace; 413 over `--max-file` |
//! | DELETE | `/v1/files?path=/abs` | | `{}`; a directory goes with everything in it (symlinks are removed, never followed) |
//! | GET  | `/v1/dirs?path=/abs` | | `DirListing` JSON |
//! | GET  | `/v1/stat?path=/abs` | | `FileStat` JSON (`lstat`) |
//! | POST | `/v1/mkdir?path=/abs` | | `MkdirResult` JSON; parents are made too; `created` is false when it was there |
//! | POST | `/v1/rename?from=/abs&to=/abs` | | `FileStat` JSON of the moved object |
//! | GET  | `/v1/watch?path=/abs&recursive=1` | | NDJSON stream of `WatchEvent`s (see `dirwatch`) |
//! | POST | `/v1/procs/...` | | input, close-stdin and signal for running execs (see `procs`) |
//! | GET  | `/v1/audit?since=SEQ&limit=N` | | `AuditPage` JSON: the calls this guest's seccomp listener refused (see `audit`) |
//! | POST | `/v1/vm/quiesce` | | `{}`; microVM only: unmounts the 9p workspace before a snapshot (409 `busy` while in use) |
//! | POST | `/v1/vm/thaw` | `VmThaw` JSON | `{}`; microVM only: remounts the workspace, takes a restored sandbox's address and hostname |
//!
//! Query values are percent-encoded (`hearth_proto::query`). Paths must be absolute.
//! Try it: `curl --unix-socket /.hearth/guest.sock http://guest/v1/health`.

use std::convert::Infallible;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hearth_proto::vm::{VM_QUIESCE_PATH, VM_THAW_PATH};
use hearth_proto::{ErrorKind, Health, VersionInfo, PROTOCOL_VERSION};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::http::{json, ApiError, RespBody};
use crate::reaper::{Children, ReaperError};
use crate::transport::{self, Listen, TransportError};
use crate::{audit, dirwatch, exec, files, procs};

/// Daemon settings (from the command line).
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Listen,
    /// Bytes kept per output stream per exec.
    pub max_output: u64,
    /// Largest file read or written.
    pub max_file: u64,
    /// Largest stdin of one exec.
    pub max_stdin: u64,
    /// How long execs get between SIGTERM and SIGKILL when the daemon shuts down.
    pub shutdown_grace: Duration,
    /// Where the sandbox's cgroup is mounted (for the OOM-kill counter).
    pub cgroup_root: PathBuf,
    /// Filters installed in every exec'd process (`--seccomp-bpf`).
    pub seccomp: Option<Arc<crate::seccomp::GuestFilters>>,
    /// In a microVM (`init`): what /workspace is, for the snapshot endpoints. None elsewhere.
    pub vm_workspace: Option<crate::vm::cmdline::Workspace>,
    /// What every exec'd process is put in before it runs (see `confine`).
    pub confinement: Option<Arc<crate::confine::Confinement>>,
    /// A template's env and working dir, filled into every exec request that leaves them unset.
    pub exec_defaults: hearth_proto::ExecDefaults,
}

impl Config {
    /// Exec request bodies carry stdin as base64 (4/3 larger) plus argv and env.
    pub fn max_request_bytes(&self) -> usize {
        let stdin = usize::try_from(self.max_stdin).unwrap_or(usize::MAX);
        stdin.saturating_mul(4) / 3 + 1024 * 1024
    }
}

/// Shared by every request.
#[derive(Debug)]
pub struct State {
    pub config: Config,
    pub children: Arc<Children>,
    /// Stdins kept open for `/v1/procs/input`.
    pub stdins: crate::procs::Stdins,
    /// Calls refused by the `audit_deny` rules of the processes this guest started.
    pub audit: crate::audit::GuestAudit,
    started: Instant,
    /// Flipped once at shutdown: connections finish their current response, then close.
    closing: watch::Sender<bool>,
    /// One clone per open connection; its count tells shutdown when all are gone.
    connections: Arc<()>,
}

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Reaper(#[from] ReaperError),
    #[error("install handler for {name}: {source}")]
    Signal {
        name: &'static str,
        source: io::Error,
    },
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("seccomp audit log: {0}")]
    Audit(#[from] hearth_seccomp::audit::AuditError),
    #[error("{path} is not a listening socket; refusing to serve on it")]
    NotASocket { path: PathBuf },
    #[error("{op} {path}: {source}")]
    Socket {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// Signals passed on to every running exec's process group.
const FORWARDED: [(SignalKind, Signal); 5] = [
    (SignalKind::interrupt(), Signal::SIGINT),
    (SignalKind::hangup(), Signal::SIGHUP),
    (SignalKind::quit(), Signal::SIGQUIT),
    (SignalKind::user_defined1(), Signal::SIGUSR1),
    (SignalKind::user_defined2(), Signal::SIGUSR2),
];

/// Serves until SIGTERM, then stops the execs and returns.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let children = Children::new();
    // Before anything can be spawned, so no SIGCHLD is missed.
    children.start_reaper()?;
    if std::process::id() != 1 {
        // Outside a PID namespace, still collect orphans of our execs instead of leaking them.
        if let Err(err) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::warn!(%err, "could not become a child subreaper");
        }
    }
    for (kind, sig) in FORWARDED {
        let mut stream = signal(kind).map_err(|source| ServeError::Signal {
            name: sig.as_str(),
            source,
        })?;
        let children = Arc::clone(&children);
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                children.signal_all(sig);
            }
        });
    }
    let mut sigterm = signal(SignalKind::terminate()).map_err(|source| ServeError::Signal {
        name: "SIGTERM",
        source,
    })?;
    let listen = config.listen.clone();
    let state = Arc::new(State {
        config,
        children,
        stdins: crate::procs::Stdins::default(),
        audit: crate::audit::GuestAudit::new()?,
        started: Instant::now(),
        closing: watch::Sender::new(false),
        connections: Arc::new(()),
    });
    let server = match &listen {
        Listen::Unix(path) => tokio::spawn(accept_unix(bind(path)?, Arc::clone(&state))),
        Listen::UnixFd(fd) => tokio::spawn(accept_unix(inherited(*fd)?, Arc::clone(&state))),
        Listen::Vsock(port) => {
            let listener = transport::VsockListener::bind(*port)?;
            tokio::spawn(accept_vsock(listener, Arc::clone(&state)))
        }
        Listen::VirtioSerial(name) => {
            let node = transport::find_serial_port(name)?;
            tokio::spawn(serve_serial(node, Arc::clone(&state)))
        }
    };
    tracing::info!(%listen, pid = std::process::id(), "listening");
    let _ = sigterm.recv().await;
    server.abort();
    if let Listen::Unix(path) = &listen {
        let _ = std::fs::remove_file(path);
    }
    shutdown(&state).await;
    Ok(())
}

async fn accept_unix(listener: UnixListener, state: Arc<State>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => spawn_connection(Arc::clone(&state), stream, false),
            // EMFILE and friends are transient; back off instead of spinning.
            Err(err) => {
                tracing::warn!(%err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn accept_vsock(listener: transport::VsockListener, state: Arc<State>) {
    loop {
        match listener.accept().await {
            Ok(stream) => spawn_connection(Arc::clone(&state), stream, false),
            Err(err) => {
                tracing::warn!(%err, port = listener.port(), "vsock accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One HTTP/2 session at a time over the port, each starting at a client preface.
async fn serve_serial(node: PathBuf, state: Arc<State>) {
    loop {
        let mut port = match transport::open_serial_port(&node) {
            Ok(port) => port,
            Err(err) => {
                tracing::warn!(%err, "virtio-serial port");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            let session = match port.next_h2_session().await {
                Ok(session) => session,
                // ENODEV: the port was unplugged; open it again.
                Err(err) => {
                    tracing::warn!(port = %node.display(), %err, "virtio-serial read failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            };
            // The session starts on a fresh open of the port (see `reopen_with`).
            let session = match port.reopen_with(session, &node) {
                Ok((reopened, session)) => {
                    port = reopened;
                    session
                }
                Err(err) => {
                    tracing::warn!(port = %node.display(), %err, "virtio-serial reopen failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            };
            tracing::info!(port = %node.display(), "HTTP/2 session started");
            match serve_connection(Arc::clone(&state), session, true).await {
                Ok(()) => tracing::info!(port = %node.display(), "HTTP/2 session ended"),
                Err(err) => {
                    tracing::info!(port = %node.display(), err = ?err, "HTTP/2 session failed")
                }
            }
        }
    }
}

/// SIGTERM every exec group, SIGKILL what is left after the grace period.
async fn shutdown(state: &State) {
    tracing::info!(running = state.children.running(), "SIGTERM: shutting down");
    state.children.signal_all(Signal::SIGTERM);
    let deadline = Instant::now() + state.config.shutdown_grace;
    while state.children.running() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    state.children.signal_all(Signal::SIGKILL);
    // Let exec streams deliver their exit events before the process goes away.
    state.closing.send_replace(true);
    let deadline = Instant::now() + Duration::from_secs(2);
    while (state.children.running() > 0 || Arc::strong_count(&state.connections) > 1)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    state.audit.stop();
}

fn spawn_connection<S>(state: Arc<State>, stream: S, http2: bool)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    tokio::spawn(async move {
        if let Err(err) = serve_connection(state, stream, http2).await {
            tracing::debug!(%err, "connection ended with an error");
        }
    });
}

/// Serves one connection until it ends, or until shutdown lets its current responses finish.
async fn serve_connection<S>(state: Arc<State>, stream: S, http2: bool) -> Result<(), hyper::Error>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let token = Arc::clone(&state.connections);
    let mut closing = state.closing.subscribe();
    let service = service_fn(move |req| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(route(state, req).await) }
    });
    let io = TokioIo::new(stream);
    // The guard `wait_for` returns is not Send; drop it before awaiting the connection.
    let closed = async move { drop(closing.wait_for(|closing| *closing).await) };
    let result = if http2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => result,
            () = closed => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    } else {
        let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => result,
            () = closed => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    };
    drop(token);
    result
}

async fn route(state: Arc<State>, req: Request<Incoming>) -> Response<RespBody> {
    let method = req.method().clone();
    let query = req.uri().query().map(str::to_owned);
    let query = query.as_deref();
    let result = match (req.uri().path(), &method) {
        ("/v1/health", &Method::GET) => Ok(health(&state)),
        ("/v1/version", &Method::GET) => Ok(version()),
        ("/v1/exec", &Method::POST) => exec::handle(Arc::clone(&state), req.into_body()).await,
        ("/v1/files", &Method::GET) => files::read(&state, query).await,
        ("/v1/files", &Method::PUT) => files::write(&state, req).await,
        ("/v1/files", &Method::DELETE) => files::remove(query).await,
        ("/v1/dirs", &Method::GET) => files::list(query).await,
        ("/v1/stat", &Method::GET) => files::stat(query).await,
        ("/v1/mkdir", &Method::POST) => files::mkdir(query).await,
        ("/v1/watch", &Method::GET) => dirwatch::handle(query).await,
        ("/v1/rename", &Method::POST) => files::rename(query).await,
        ("/v1/procs/input", &Method::POST) => procs::input(&state, query, req.into_body()).await,
        ("/v1/procs/close-stdin", &Method::POST) => procs::close_stdin(&state, query),
        ("/v1/procs/signal", &Method::POST) => procs::signal(&state, query),
        ("/v1/audit", &Method::GET) => audit::handle(&state.audit, query),
        (VM_QUIESCE_PATH, &Method::POST) => vm_quiesce(&state).await,
        (VM_THAW_PATH, &Method::POST) => vm_thaw(&state, req.into_body()).await,
        (
            "/v1/health"
            | "/v1/version"
            | "/v1/exec"
            | "/v1/files"
            | "/v1/dirs"
            | "/v1/stat"
            | "/v1/mkdir"
            | "/v1/rename"
            | "/v1/watch"
            | "/v1/procs/input"
            | "/v1/procs/close-stdin"
            | "/v1/procs/signal"
            | "/v1/audit"
            | VM_QUIESCE_PATH
            | VM_THAW_PATH,
            _,
        ) => Err(ApiError::new(
            ErrorKind::MethodNotAllowed,
            format!("{method} is not allowed here"),
        )),
        (path, _) => Err(ApiError::new(
            ErrorKind::UnknownEndpoint,
            format!("no endpoint {path}"),
        )),
    };
    result.unwrap_or_else(|err| {
        tracing::debug!(status = %err.status, message = %err.body.error.message, "request failed");
        err.into_response()
    })
}

/// The snapshot endpoints exist only in a microVM guest (an OCI sandbox has no VM to save).
fn vm_workspace(state: &State) -> Result<crate::vm::cmdline::Workspace, ApiError> {
    state.config.vm_workspace.ok_or_else(|| {
        ApiError::new(
            ErrorKind::BadRequest,
            "only a microVM guest can be snapshotted",
        )
    })
}

async fn vm_quiesce(state: &State) -> Result<Response<RespBody>, ApiError> {
    let workspace = vm_workspace(state)?;
    // umount2 and sync block; keep them off the async workers.
    tokio::task::spawn_blocking(move || crate::vm::snapshot::quiesce(workspace))
        .await
        .map_err(|err| ApiError::new(ErrorKind::Internal, err.to_string()))??;
    Ok(json(StatusCode::OK, &serde_json::json!({})))
}

async fn vm_thaw(state: &State, body: Incoming) -> Result<Response<RespBody>, ApiError> {
    let workspace = vm_workspace(state)?;
    let raw = crate::http::read_limited(body, 64 * 1024).await?;
    let req: hearth_proto::VmThaw = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::new(ErrorKind::BadRequest, format!("thaw request: {e}")))?;
    if req.hostname.is_some() {
        // A new identity: this guest was restored as another sandbox.
        state
            .audit
            .restart()
            .map_err(|err| ApiError::new(ErrorKind::Internal, err.to_string()))?;
    }
    tokio::task::spawn_blocking(move || crate::vm::snapshot::thaw(workspace, &req))
        .await
        .map_err(|err| ApiError::new(ErrorKind::Internal, err.to_string()))??;
    Ok(json(StatusCode::OK, &serde_json::json!({})))
}

fn health(state: &State) -> Response<RespBody> {
    let health = Health {
        status: "ok".into(),
        pid: std::process::id(),
        uptime_ms: u64::try_from(state.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        running: state.children.running(),
    };
    json(StatusCode::OK, &health)
}

fn version() -> Response<RespBody> {
    let info = VersionInfo {
        name: env!("CARGO_PKG_NAME").into(),
        version: env!("CARGO_PKG_VERSION").into(),
        protocol_version: PROTOCOL_VERSION,
    };
    json(StatusCode::OK, &info)
}

/// Takes over the listening Unix socket the host passed as `fd`. It must be one: anything else
/// (a closed fd, a file, a socket that does not listen) stops the guest rather than serving
/// nothing.
fn inherited(fd: i32) -> Result<UnixListener, ServeError> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let path = PathBuf::from(format!("inherited fd {fd}"));
    let sock_err = |op, source: io::Error| ServeError::Socket {
        op,
        path: path.clone(),
        source,
    };
    // Children must not inherit the host's channel; this also fails for a closed fd.
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|e| sock_err("fcntl", e.into()))?;
    // SAFETY: `fd` is open (F_SETFD succeeded) and was handed to this process for the guest
    // alone: nothing else here knows the number, so taking sole ownership is sound.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let listening = nix::sys::socket::getsockopt(&owned, nix::sys::socket::sockopt::AcceptConn)
        .map_err(|e| sock_err("getsockopt SO_ACCEPTCONN", e.into()))?;
    if !listening {
        return Err(ServeError::NotASocket { path });
    }
    let listener = std::os::unix::net::UnixListener::from(owned);
    listener
        .set_nonblocking(true)
        .map_err(|e| sock_err("set nonblocking", e))?;
    UnixListener::from_std(listener).map_err(|e| sock_err("register", e))
}

/// Binds the socket with mode 0600, replacing a stale socket but nothing else.
fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    let sock_err = |op, source| ServeError::Socket {
        op,
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            std::fs::remove_file(path).map_err(|e| sock_err("remove stale socket", e))?;
        }
        Ok(_) => return Err(ServeError::NotASocket { path: path.into() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(sock_err("stat", e)),
    }
    // The umask makes the socket 0600 from its first instant; restore it because children
    // inherit it.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(|e| sock_err("bind", e))?;
    let perms = std::os::unix::fs::PermissionsExt::from_mode(0o600);
    std::fs::set_permissions(path, perms).map_err(|e| sock_err("chmod", e))?;
    Ok(listener)
}
