//! `hearth serve`: the HTTP API on loopback TCP and a Unix socket, behind a bearer token.
//!
//! Built on axum (over the hyper 1 stack the gateway already uses): its router, extractors and
//! SSE body save a few hundred lines of plumbing, and it serves a `UnixListener` as readily as a
//! `TcpListener`. Request bodies are read by our own extractor ([`body`]) so that every refusal
//! (malformed JSON, an unknown field, a body over the limit) is a JSON error naming the problem.

pub mod auth;
pub mod bench_tasks;
mod body;
mod events;
mod openapi;
mod sandboxes;
pub mod server;
mod tasks;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::sandboxes::SandboxError;
use crate::store::{StoreError, TaskStatus};
use crate::tasks::params::InvalidParam;
use crate::tasks::queue::QueueError;

/// Every way a request can fail; each maps to one status and error type.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing bearer token: send `Authorization: Bearer <token>`")]
    MissingToken,
    #[error("wrong bearer token")]
    WrongToken,
    #[error("malformed JSON: {0}")]
    MalformedJson(#[source] serde_json::Error),
    #[error("invalid request body: {0}")]
    InvalidBody(#[source] serde_json::Error),
    #[error("invalid {0}")]
    InvalidParam(#[from] InvalidParam),
    #[error("bad id {raw:?}: {source}")]
    BadId {
        raw: String,
        source: hearth_sandbox::IdError,
    },
    #[error("request body is over the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("cannot read the request body: {0}")]
    Body(#[source] axum::Error),
    #[error("no route for {method} {path}")]
    NoRoute { method: String, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("no task with id {0}")]
    TaskNotFound(crate::store::TaskId),
    #[error("sandbox {id} belongs to task {id} ({status}); cancel the task instead")]
    TaskSandbox { id: String, status: TaskStatus },
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Guest(#[from] hearth_sandbox::guest_client::GuestClientError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError {
    fn status_and_type(&self) -> (StatusCode, &'static str) {
        match self {
            Self::MissingToken | Self::WrongToken => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            Self::InvalidBody(_) | Self::InvalidParam(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request")
            }
            Self::BadId { .. } | Self::Body(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Self::NoRoute { .. } | Self::TaskNotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::TaskSandbox { .. } => (StatusCode::CONFLICT, "conflict"),
            Self::Queue(QueueError::NotFound(_)) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Queue(QueueError::AlreadyFinal { .. } | QueueError::NotOurs { .. }) => {
                (StatusCode::CONFLICT, "conflict")
            }
            Self::Queue(QueueError::ShuttingDown) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            Self::Queue(QueueError::Store(_)) | Self::Store(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
            Self::Sandbox(err) => sandbox_status(err),
            Self::Guest(err) => guest_status(err),
        }
    }
}

/// Sorted by cause as the CLI's exit codes are (exit.rs), so both front ends agree.
fn sandbox_status(err: &SandboxError) -> (StatusCode, &'static str) {
    use hearth_sandbox::backend::BackendError;
    use hearth_sandbox::dirs::DirsError;
    use hearth_sandbox::workspace::WorkspaceError;
    match err {
        SandboxError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        SandboxError::AlreadyExists(_) | SandboxError::Dirs(DirsError::SandboxExists { .. }) => {
            (StatusCode::CONFLICT, "conflict")
        }
        SandboxError::Status { .. }
        | SandboxError::NotAVm { .. }
        | SandboxError::Backend(BackendError::Firecracker(
            hearth_sandbox::backend::FirecrackerError::SnapshotBusy { .. },
        )) => (StatusCode::CONFLICT, "conflict"),
        SandboxError::Dirs(
            DirsError::SocketPathTooLong { .. }
            | DirsError::TooOpen { .. }
            | DirsError::Symlink { .. },
        )
        | SandboxError::Net(hearth_net::FirewallError::Policy(_))
        | SandboxError::WorkspaceUnsupported(_)
        | SandboxError::Workspace(
            WorkspaceError::NotADirectory { .. } | WorkspaceError::Inspect { .. },
        ) => (StatusCode::BAD_REQUEST, "bad_request"),
        SandboxError::Guest(guest) => guest_status(guest),
        // The host lacks it: the request can't succeed here as it stands.
        SandboxError::BackendUnavailable(_)
        | SandboxError::Workspace(WorkspaceError::Spawn { .. } | WorkspaceError::Command { .. }) => {
            (StatusCode::UNPROCESSABLE_ENTITY, "unavailable")
        }
        SandboxError::Store(crate::store::StoreError::IdBlocksExhausted { .. }) => {
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
        SandboxError::Store(_) | SandboxError::Join(_) | SandboxError::Dirs(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "sandbox_failed"),
    }
}

fn guest_status(
    err: &hearth_sandbox::guest_client::GuestClientError,
) -> (StatusCode, &'static str) {
    use hearth_proto::ErrorKind;
    if matches!(
        err,
        hearth_sandbox::guest_client::GuestClientError::TooLarge { .. }
    ) {
        return (StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    }
    match err.guest_kind() {
        Some(ErrorKind::NotFound) => (StatusCode::NOT_FOUND, "not_found"),
        Some(ErrorKind::TooLarge) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        Some(
            ErrorKind::BadRequest
            | ErrorKind::NotADirectory
            | ErrorKind::IsADirectory
            | ErrorKind::PermissionDenied
            | ErrorKind::AlreadyExists,
        ) => (StatusCode::BAD_REQUEST, "bad_request"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "sandbox_failed"),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = self.status_and_type();
        let message = self.to_string();
        if status.is_server_error() {
            // Logged here, where it is handled; client errors are the client's business.
            tracing::error!(error = %message, "request failed");
        }
        let body = json!({"error": {"type": kind, "message": message}});
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
