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

use hearth_sandbox::{Classify, ErrorKind};

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
        let kind = match self {
            // Refusals of the HTTP exchange itself, which the CLI cannot meet (as the API cannot
            // meet clap's exit 2).
            Self::MissingToken | Self::WrongToken => {
                return (StatusCode::UNAUTHORIZED, "unauthorized")
            }
            Self::MalformedJson(_) => return (StatusCode::BAD_REQUEST, "malformed_json"),
            Self::Body(_) => return (StatusCode::BAD_REQUEST, "bad_request"),
            Self::MethodNotAllowed { .. } => {
                return (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            Self::InvalidBody(_) | Self::BadId { .. } => ErrorKind::BadInput,
            Self::TooLarge { .. } => ErrorKind::TooLarge,
            Self::NoRoute { .. } | Self::TaskNotFound(_) => ErrorKind::NotFound,
            // A sandbox a task owns is the task's to end.
            Self::TaskSandbox { .. } => ErrorKind::Conflict,
            Self::InvalidParam(err) => err.kind(),
            Self::Queue(err) => err.kind(),
            Self::Sandbox(err) => err.kind(),
            Self::Guest(err) => err.kind(),
            Self::Store(err) => err.kind(),
        };
        status(kind)
    }
}

/// The HTTP status and error type of each kind of error: the only place the API picks one (the
/// CLI's counterpart is `exit::code`).
pub fn status(kind: ErrorKind) -> (StatusCode, &'static str) {
    match kind {
        // Well-formed JSON that asks for something invalid: 422, as for every field hearth
        // validates; 400 stays for requests that cannot be read at all.
        ErrorKind::BadInput => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        ErrorKind::Exists => (StatusCode::CONFLICT, "already_exists"),
        ErrorKind::Conflict => (StatusCode::CONFLICT, "conflict"),
        // The request is fine; this server cannot serve it until its host gets what it lacks.
        ErrorKind::HostLacks => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        ErrorKind::SandboxFailed => (StatusCode::INTERNAL_SERVER_ERROR, "sandbox_failed"),
        ErrorKind::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
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
