//! The E2B-compatible front end of `hearth serve`: the control plane E2B's SDKs call as "the
//! API" and the data plane they call "envd", on one loopback listener of its own
//! (`--e2b-listen`, default 127.0.0.1:49982). Set both `E2B_API_URL` and `E2B_SANDBOX_URL` to its
//! address; the data plane tells sandboxes apart by the `E2b-Sandbox-Id` header (or a
//! `49983-<id>.<domain>` host name).
//!
//! It is one more front end to the same [`SandboxManager`](crate::sandboxes::SandboxManager):
//! create, remove and pause are the manager's, and envd's RPCs are answered by mapping them
//! onto hearth-guest's own protocol (exec streams, files, stat, mkdir, rename, remove, stdin and
//! signals). Nothing runs in the sandbox that is not there for hearth's own API too.
//!
//! - `control`: `/sandboxes`, `/v2/sandboxes` (create, list, get, kill, timeout, connect,
//!   pause, resume), behind `X-API-Key` = hearth's API token (optionally prefixed `e2b_`).
//! - `envd`: the data plane's routing, its access-token check, `/health` and `/files`.
//! - `process`, `filesystem`: the Connect-RPC services (`connect` is the protocol).
//! - `deadlines`: removes each sandbox when its timeout expires, also across restarts.

mod connect;
mod control;
pub mod deadlines;
mod envd;
mod filesystem;
mod mapping;
mod messages;
mod process;
mod watchers;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use tokio::sync::Notify;

use crate::api::auth::ApiToken;
use crate::sandboxes::SandboxManager;

pub use process::Processes;

/// The envd version hearth answers as. The SDKs switch features on by it: 0.4.0 and later
/// send no user unless asked, 0.5.2 has CloseStdin, 0.5.7 takes raw (octet-stream) uploads.
/// Later ones (file metadata, watch entries, network mounts) are what hearth does not serve,
/// so the SDK itself says they need a newer envd.
pub const ENVD_VERSION: &str = "0.5.7";
/// The `clientID` of every sandbox (E2B's cluster node id; here always this host's daemon).
pub const CLIENT_ID: &str = "hearth";

/// What every E2B handler reaches.
#[derive(Debug, Clone)]
pub struct E2bState {
    pub manager: Arc<SandboxManager>,
    pub token: ApiToken,
    pub processes: Arc<Processes>,
    pub watchers: Arc<watchers::Watchers>,
    /// Woken whenever a deadline changes, so the expiry loop sleeps until the right moment.
    pub deadlines_changed: Arc<Notify>,
}

impl E2bState {
    pub fn new(manager: Arc<SandboxManager>, token: ApiToken) -> Self {
        Self {
            manager,
            token,
            processes: Arc::new(Processes::default()),
            watchers: Arc::new(watchers::Watchers::default()),
            deadlines_changed: Arc::new(Notify::new()),
        }
    }
}

/// A control-plane refusal: E2B's `{"code": <status>, "message": ...}`. `Should-Retry: false`
/// keeps newer SDKs from retrying what a retry cannot fix (they retry 503 by default).
#[derive(Debug)]
pub struct RestError {
    pub status: StatusCode,
    pub message: String,
}

impl RestError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("sandbox {id} not found"))
    }
}

impl<E: hearth_sandbox::Classify + std::fmt::Display> From<E> for RestError {
    fn from(err: E) -> Self {
        let (status, _) = crate::api::status(err.kind());
        if status.is_server_error() {
            tracing::error!(error = %err, "E2B request failed");
        }
        Self::new(status, err.to_string())
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let body = json!({"code": self.status.as_u16(), "message": self.message});
        let mut response = (self.status, axum::Json(body)).into_response();
        response
            .headers_mut()
            .insert("should-retry", HeaderValue::from_static("false"));
        response
    }
}

/// The control plane checks `X-API-Key` against hearth's API token. E2B's older SDKs refuse a
/// key that is not `e2b_` followed by hex before sending it, so `e2b_<token>` is accepted too.
async fn require_api_key(State(state): State<E2bState>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    match given {
        None => RestError::new(
            StatusCode::UNAUTHORIZED,
            "missing X-API-Key: set E2B_API_KEY to hearth's API token",
        )
        .into_response(),
        Some(key) if state.token.matches(key.strip_prefix("e2b_").unwrap_or(key)) => {
            next.run(request).await
        }
        Some(_) => RestError::new(StatusCode::UNAUTHORIZED, "wrong API key").into_response(),
    }
}

/// Both planes. The data plane's routes check the sandbox's own access token instead of the
/// API key (envd never sees the API key).
pub fn router(state: E2bState) -> Router {
    let control = Router::new()
        .route("/sandboxes", get(control::list).post(control::create))
        .route("/v2/sandboxes", get(control::list).post(control::create))
        .route("/sandboxes/{id}", get(control::get).delete(control::kill))
        .route("/sandboxes/{id}/timeout", post(control::set_timeout))
        .route("/sandboxes/{id}/connect", post(control::connect))
        .route("/v2/sandboxes/{id}/connect", post(control::connect))
        .route("/sandboxes/{id}/pause", post(control::pause))
        .route("/sandboxes/{id}/resume", post(control::resume))
        .route("/sandboxes/{id}/refreshes", post(control::refresh))
        .route(
            "/sandboxes/{id}/network",
            axum::routing::put(control::unsupported_network),
        )
        .route("/sandboxes/{id}/metrics", get(control::unsupported_metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    let data = Router::new()
        .route("/health", get(envd::health))
        .route("/files", get(envd::download).post(envd::upload))
        .route("/process.Process/{method}", post(process::dispatch))
        .route(
            "/filesystem.Filesystem/{method}",
            post(filesystem::dispatch),
        )
        // Uploads and stdin are bounded by their handlers (one file's worth, one message).
        .layer(axum::extract::DefaultBodyLimit::max(envd::MAX_UPLOAD));
    control.merge(data).fallback(no_route).with_state(state)
}

async fn no_route(request: Request) -> RestError {
    RestError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no route for {} {} in hearth's E2B-compatible API",
            request.method(),
            request.uri().path()
        ),
    )
}
