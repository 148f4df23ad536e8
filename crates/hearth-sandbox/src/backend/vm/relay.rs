//! The relay between the sandbox's guest socket and a VM's guest channel.
//!
//! Every caller on the host talks to `hearth-guest` the same way: [`GuestClient`] opens one
//! HTTP/1.1 connection per request on `SandboxDirs::guest_socket()`. For a VM nothing inside the
//! guest can listen on that host path, so the per-sandbox supervisor runs [`serve`] there and
//! forwards each client to the guest through an [`Upstream`]:
//!
//! - [`Upstream::Http2Mux`]: QEMU's virtio-serial port is a single byte stream (a chardev
//!   socket that takes one client at a time), so the relay keeps ONE HTTP/2 connection (prior
//!   knowledge) over it and turns each local HTTP/1.1 request into one h2 stream. Bodies are
//!   streamed both ways frame by frame, so an exec's NDJSON output reaches the client as the
//!   guest produces it. The connection is (re)made lazily: on the first request and after it
//!   fails, so a guest that restarts its server or a VM that is still booting costs nothing but
//!   a 502 for requests made meanwhile. QEMU accepts the connection even before the guest has
//!   opened its port, so a connection that has never answered is given
//!   [`FIRST_ANSWER_TIMEOUT`] per request and then dropped; HTTP/2 PINGs watch proven ones.
//! - [`Upstream::PerConnection`]: transports that give a fresh stream per connection (vsock,
//!   Firecracker's `CONNECT` handshake) get bytes copied both ways, one upstream stream per
//!   local connection.
//!
//! When the guest cannot be reached the client gets `502 Bad Gateway` with hearth-guest's own
//! error body (`{"error":{"kind":"io","message":..}}`), so `GuestClient` reports it like any
//! guest refusal, with a message that says the guest was unreachable and why.
//!
//! [`GuestClient`]: crate::guest_client::GuestClient

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hearth_proto::{ErrorBody, ErrorKind};
use http::uri::{Authority, Scheme};
use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;
use tokio::task::JoinSet;

/// What the relay answers a local client with.
type RelayBody = Either<Incoming, Full<Bytes>>;

/// Why the relay cannot run (per-request failures go to the client as 502s instead).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot remove the stale socket {path}: {source}")]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("cannot listen on {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot restrict {path} to its owner: {source}")]
    Chmod { path: PathBuf, source: io::Error },
    #[error("cannot accept a connection on the guest socket: {source}")]
    Accept { source: io::Error },
}

/// Opens a stream to the guest for one local client connection.
///
/// A boxed future rather than `async fn` in the trait so the trait stays object-safe without the
/// `async_trait` crate.
pub trait GuestConnector: Send + Sync + fmt::Debug {
    fn connect(&self) -> Pin<Box<dyn Future<Output = io::Result<UnixStream>> + Send + '_>>;
}

/// Where the relay sends what local clients ask.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// One shared HTTP/2 connection over a stream socket (QEMU's virtio-serial chardev).
    Http2Mux { socket: PathBuf },
    /// A fresh upstream stream per local connection, bytes copied both ways.
    PerConnection(Arc<dyn GuestConnector>),
}

/// Binds the guest socket at `path` (mode 0600), replacing a socket file left by an earlier
/// relay of the same sandbox. Must be called inside a tokio runtime.
pub fn bind(path: &Path) -> Result<UnixListener, RelayError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(RelayError::RemoveStale {
                path: path.to_owned(),
                source,
            })
        }
    }
    let listener = UnixListener::bind(path).map_err(|source| RelayError::Bind {
        path: path.to_owned(),
        source,
    })?;
    // The sandbox directory is already 0700; the socket mode is the second lock on the door.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        RelayError::Chmod {
            path: path.to_owned(),
            source,
        }
    })?;
    Ok(listener)
}

/// Relays every connection accepted on `listener` to `upstream` until `shutdown` completes.
///
/// On shutdown the relay stops accepting and drops the connections still in flight (their
/// clients see the connection close); the upstream connection goes with them.
pub async fn serve(
    listener: UnixListener,
    upstream: Upstream,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RelayError> {
    let route = match upstream {
        Upstream::Http2Mux { socket } => Route::Mux(Arc::new(Mux::new(socket))),
        Upstream::PerConnection(connector) => Route::Copy(connector),
    };
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return Ok(()),
            // Reap finished connection tasks as we go so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(source) if is_transient_accept_error(&source) => {
                    tracing::warn!(error = %source, "accept on the guest socket failed; going on");
                    continue;
                }
                Err(source) => return Err(RelayError::Accept { source }),
            },
        };
        match &route {
            Route::Mux(mux) => conns.spawn(serve_h1_via_mux(stream, Arc::clone(mux))),
            Route::Copy(connector) => {
                conns.spawn(copy_via_connector(stream, Arc::clone(connector)))
            }
        };
    }
}

/// [`Upstream`] with the state the relay keeps for it.
enum Route {
    Mux(Arc<Mux>),
    Copy(Arc<dyn GuestConnector>),
}

/// Errors that concern one connection or a passing resource shortage, not the listener.
fn is_transient_accept_error(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// How long a connection that has not answered anything yet may take to answer a request.
///
/// QEMU's chardev accepts the relay's connection even while the guest has not opened its port
/// (still booting): the bytes wait in the socket and nothing ever answers. A connection counts
/// as alive only once it has produced one response; until then a request gives up after this
/// long and the connection is dropped, so the next request starts afresh.
pub const FIRST_ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// HTTP/2 PINGs while streams are open find a guest that died under a proven connection. Long
/// enough that a loaded TCG guest is not mistaken for a dead one.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// One h2 connection and whether it has answered yet.
#[derive(Debug, Clone)]
struct Conn {
    sender: SendRequest<Incoming>,
    proven: Arc<AtomicBool>,
}

/// The shared HTTP/2 connection to the guest, made on first use and remade after it fails.
#[derive(Debug)]
struct Mux {
    socket: PathBuf,
    conn: Mutex<Option<Conn>>,
}

impl Mux {
    fn new(socket: PathBuf) -> Self {
        Self {
            socket,
            conn: Mutex::new(None),
        }
    }

    /// The current live connection, or a new one if there is none or it has closed.
    async fn conn(&self) -> Result<Conn, String> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            if !conn.sender.is_closed() {
                return Ok(conn.clone());
            }
        }
        *slot = None;
        let conn = self.connect().await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets the current connection if it has closed, or if it is `stale` (another request
    /// may have replaced it meanwhile).
    async fn discard(&self, stale: Option<&Conn>) {
        let mut slot = self.conn.lock().await;
        let drop_it = slot.as_ref().is_some_and(|current| {
            current.sender.is_closed()
                || stale.is_some_and(|stale| Arc::ptr_eq(&stale.proven, &current.proven))
        });
        if drop_it {
            *slot = None;
        }
    }

    async fn connect(&self) -> Result<Conn, String> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|err| format!("cannot connect to {}: {err}", self.socket.display()))?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|err| format!("HTTP/2 handshake over {}: {err}", self.socket.display()))?;
        let socket = self.socket.clone();
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(socket = %socket.display(), error = %err, "guest HTTP/2 connection ended");
            }
        });
        tracing::debug!(socket = %self.socket.display(), "connected to the guest over HTTP/2");
        Ok(Conn {
            sender,
            proven: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Sends one request as an h2 stream. A request the old connection refused before sending
    /// (it had just died) is retried once on a fresh connection.
    async fn forward(&self, req: Request<Incoming>) -> Result<Response<Incoming>, String> {
        let conn = self.conn().await?;
        let req = match self.send(&conn, req).await? {
            Ok(resp) => return Ok(resp),
            Err(req) => req,
        };
        let conn = self.conn().await?;
        match self.send(&conn, req).await? {
            Ok(resp) => Ok(resp),
            Err(_) => Err("the guest connection closed before the request was sent".into()),
        }
    }

    /// One attempt: the response, or the request back when the connection never sent it.
    async fn send(
        &self,
        conn: &Conn,
        req: Request<Incoming>,
    ) -> Result<Result<Response<Incoming>, Request<Incoming>>, String> {
        let mut sender = conn.sender.clone();
        let sent = sender.try_send_request(req);
        let result = if conn.proven.load(Ordering::Acquire) {
            sent.await
        } else {
            match tokio::time::timeout(FIRST_ANSWER_TIMEOUT, sent).await {
                Ok(result) => result,
                Err(_) => {
                    self.discard(Some(conn)).await;
                    return Err(format!(
                        "connected, but the guest did not answer within {FIRST_ANSWER_TIMEOUT:?} \
                         (still booting, or hearth-guest is not serving the port)"
                    ));
                }
            }
        };
        match result {
            Ok(resp) => {
                conn.proven.store(true, Ordering::Release);
                Ok(Ok(resp))
            }
            Err(mut failed) => {
                self.discard(None).await;
                match failed.take_message() {
                    Some(req) => Ok(Err(req)),
                    None => Err(format!(
                        "HTTP/2 exchange: {}",
                        with_causes(&failed.into_error())
                    )),
                }
            }
        }
    }
}

/// An error and its causes, `: `-joined (hyper's own text is only "http2 error").
fn with_causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Serves one local HTTP/1.1 connection, passing each request to the guest over the mux.
async fn serve_h1_via_mux(stream: UnixStream, mux: Arc<Mux>) {
    let service = service_fn(move |req: Request<Incoming>| {
        let mux = Arc::clone(&mux);
        async move {
            let resp = match mux.forward(to_h2(req)).await {
                Ok(resp) => to_h1(resp),
                Err(why) => unreachable_guest(&mux.socket, &why),
            };
            Ok::<_, Infallible>(resp)
        }
    });
    if let Err(err) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(error = %err, "local guest-socket client connection ended with an error");
    }
}

/// Rewrites a local HTTP/1.1 request for the h2 connection: an absolute URI (h2 needs
/// `:scheme` and `:authority`), no `Host` (the authority carries it), no hop-by-hop headers.
fn to_h2(req: Request<Incoming>) -> Request<Incoming> {
    let (mut parts, body) = req.into_parts();
    let mut uri = parts.uri.clone().into_parts();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(Authority::from_static("guest"));
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    // Every part is set from a valid URI or a constant, so this cannot fail.
    parts.uri = Uri::from_parts(uri).unwrap_or_default();
    parts.version = Version::HTTP_2;
    strip_hop_by_hop(&mut parts.headers);
    Request::from_parts(parts, body)
}

fn to_h1(resp: Response<Incoming>) -> Response<RelayBody> {
    let (mut parts, body) = resp.into_parts();
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Either::Left(body))
}

fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    for name in [
        header::CONNECTION,
        header::HOST,
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// The 502 a client gets when the guest cannot be reached, in hearth-guest's error shape.
fn unreachable_guest(upstream: &Path, why: &str) -> Response<RelayBody> {
    let message = format!(
        "the guest is unreachable through {}: {why}",
        upstream.display()
    );
    tracing::debug!(%message, "relay answered 502");
    error_response(&message)
}

fn error_response(message: &str) -> Response<RelayBody> {
    let body = ErrorBody::new(ErrorKind::Io, message);
    // A struct of two strings always serializes.
    let json = serde_json::to_vec(&body).unwrap_or_default();
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(json))));
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Copies one local connection to a fresh upstream stream and back. If no stream can be had,
/// the client's requests on this connection get 502s.
async fn copy_via_connector(mut local: UnixStream, connector: Arc<dyn GuestConnector>) {
    match connector.connect().await {
        Ok(mut remote) => {
            if let Err(err) = tokio::io::copy_bidirectional(&mut local, &mut remote).await {
                tracing::debug!(error = %err, "relayed guest connection ended with an error");
            }
        }
        Err(err) => {
            let message = format!("the guest is unreachable through {connector:?}: {err}");
            let service = service_fn(move |_req: Request<Incoming>| {
                let resp = error_response(&message);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(local), service)
                .await;
        }
    }
}

#[cfg(test)]
mod tests;
