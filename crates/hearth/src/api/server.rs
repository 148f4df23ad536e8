//! The daemon's listeners and routes.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::Request;
use axum::http::Method;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::{TcpListener, UnixListener, UnixStream};

use super::auth::{require_token, ApiToken};
use super::{events, openapi, sandboxes, tasks, ApiError};
use crate::sandboxes::SandboxManager;
use crate::store::Store;
use crate::tasks::queue::TaskQueue;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Tcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on the Unix socket {path}: {source}")]
    Unix {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another hearth daemon already answers on {path}")]
    SocketInUse { path: PathBuf },
    #[error("the API server stopped: {0}")]
    Serve(#[source] std::io::Error),
}

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub manager: Arc<SandboxManager>,
    pub queue: TaskQueue,
}

impl AppState {
    pub fn store(&self) -> &Store {
        &self.manager.store
    }
}

/// Every route, behind the token check (the OpenAPI document and unknown paths too: nothing
/// about the daemon is told to a caller without the token).
pub fn router(state: AppState, token: ApiToken) -> Router {
    let api = Router::new()
        .route("/v1/tasks", get(tasks::list).post(tasks::create))
        .route("/v1/tasks/{id}", get(tasks::get))
        .route("/v1/tasks/{id}/events", get(events::events))
        .route("/v1/tasks/{id}/cancel", post(tasks::cancel))
        .route(
            "/v1/sandboxes",
            get(sandboxes::list).post(sandboxes::create),
        )
        .route(
            "/v1/sandboxes/{id}",
            get(sandboxes::get).delete(sandboxes::remove),
        )
        .route("/v1/sandboxes/{id}/exec", post(sandboxes::exec))
        .route(
            "/v1/sandboxes/{id}/files",
            get(sandboxes::read_file).put(sandboxes::write_file),
        )
        .route("/openapi.json", get(openapi::document))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);
    api.layer(axum::middleware::from_fn_with_state(token, require_token))
}

async fn no_route(method: Method, request: Request) -> ApiError {
    ApiError::NoRoute {
        method: method.to_string(),
        path: request.uri().path().to_owned(),
    }
}

async fn method_not_allowed(method: Method, request: Request) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: request.uri().path().to_owned(),
    }
}

/// Both listeners, bound.
#[derive(Debug)]
pub struct Listeners {
    pub tcp: TcpListener,
    pub tcp_addr: SocketAddr,
    pub unix: UnixListener,
    pub unix_path: PathBuf,
}

impl Listeners {
    pub async fn bind(addr: SocketAddr, socket: &Path) -> Result<Self, ServeError> {
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Tcp { addr, source })?;
        let tcp_addr = tcp
            .local_addr()
            .map_err(|source| ServeError::Tcp { addr, source })?;
        let unix = bind_unix(socket).await?;
        Ok(Self {
            tcp,
            tcp_addr,
            unix,
            unix_path: socket.to_owned(),
        })
    }

    /// Serves `router` on both listeners until one fails.
    pub async fn serve(self, router: Router) -> Result<(), ServeError> {
        let tcp = axum::serve(no_delay(self.tcp), router.clone());
        let unix = axum::serve(self.unix, router);
        tokio::select! {
            result = tcp => result.map_err(ServeError::Serve),
            result = unix => result.map_err(ServeError::Serve),
        }
    }
}

/// The listener with TCP_NODELAY on every connection: responses written in several small
/// pieces (a stream's events and its end) must not wait for the client's delayed ACK.
pub fn no_delay(
    listener: TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = SocketAddr> {
    axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "cannot set TCP_NODELAY");
        }
    })
}

/// Binds the socket 0600. A socket file left by a dead daemon is replaced; one that still
/// answers is another daemon's, and is left alone.
async fn bind_unix(path: &Path) -> Result<UnixListener, ServeError> {
    let unix_err = |source| ServeError::Unix {
        path: path.to_owned(),
        source,
    };
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ServeError::SocketInUse {
                path: path.to_owned(),
            });
        }
        std::fs::remove_file(path).map_err(unix_err)?;
    }
    let listener = UnixListener::bind(path).map_err(unix_err)?;
    // The default runtime dir is 0700, so the moment before this chmod exposes nothing there.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(unix_err)?;
    Ok(listener)
}
