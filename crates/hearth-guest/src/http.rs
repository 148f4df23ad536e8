//! Response plumbing shared by the handlers: the body type, JSON answers and [`ApiError`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hearth_proto::{ErrorBody, ErrorKind};
use http::{header, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use serde::Serialize;
use tokio::sync::mpsc;

/// Every response body. The error type lets a streamed body abort the connection mid-way, so a
/// client never mistakes a failed read for a complete file.
pub type RespBody = BoxBody<Bytes, io::Error>;

pub fn full(bytes: impl Into<Bytes>) -> RespBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A JSON answer with `status`.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<RespBody> {
    // Serializing our own plain structs cannot fail.
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A body fed by a channel: the exec event stream and streamed file reads.
#[derive(Debug)]
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, io::Error>>,
}

impl ChannelBody {
    pub fn new(rx: mpsc::Receiver<Result<Bytes, io::Error>>) -> Self {
        Self { rx }
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|item| item.map(|chunk| chunk.map(Frame::data)))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// An error answer: HTTP status plus the `{"error":{"kind","message"}}` body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    /// An error whose status follows from its kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let status = match kind {
            ErrorKind::BadRequest | ErrorKind::NotADirectory | ErrorKind::IsADirectory => {
                StatusCode::BAD_REQUEST
            }
            ErrorKind::NotFound | ErrorKind::UnknownEndpoint => StatusCode::NOT_FOUND,
            ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorKind::AlreadyExists | ErrorKind::Busy => StatusCode::CONFLICT,
            ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::Io | ErrorKind::Internal | ErrorKind::Unknown => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError {
            status,
            body: ErrorBody::new(kind, message),
        }
    }

    /// Classifies an I/O error by errno; `message` should already name the path.
    pub fn from_io(err: &io::Error, message: impl Into<String>) -> Self {
        let kind = match err.raw_os_error().map(nix::errno::Errno::from_raw) {
            Some(nix::errno::Errno::ENOENT) => ErrorKind::NotFound,
            Some(nix::errno::Errno::EACCES | nix::errno::Errno::EPERM) => {
                ErrorKind::PermissionDenied
            }
            Some(nix::errno::Errno::EROFS) => ErrorKind::PermissionDenied,
            Some(nix::errno::Errno::EEXIST) => ErrorKind::AlreadyExists,
            Some(nix::errno::Errno::ENOTDIR) => ErrorKind::NotADirectory,
            Some(nix::errno::Errno::EISDIR) => ErrorKind::IsADirectory,
            Some(nix::errno::Errno::ENOSPC | nix::errno::Errno::EDQUOT) => ErrorKind::NoSpace,
            Some(nix::errno::Errno::EFBIG) => ErrorKind::TooLarge,
            Some(nix::errno::Errno::ENAMETOOLONG | nix::errno::Errno::ELOOP) => {
                ErrorKind::BadRequest
            }
            Some(nix::errno::Errno::ENOEXEC) => ErrorKind::BadRequest,
            _ => ErrorKind::Io,
        };
        ApiError::new(kind, message)
    }

    pub fn into_response(self) -> Response<RespBody> {
        json(self.status, &self.body)
    }
}

/// Reads a request body of at most `limit` bytes into memory (for small JSON requests).
pub async fn read_limited(body: Incoming, limit: usize) -> Result<Bytes, ApiError> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            ErrorKind::TooLarge,
            format!("request body exceeds {limit} bytes"),
        )),
        Err(err) => Err(ApiError::new(
            ErrorKind::BadRequest,
            format!("reading request body: {err}"),
        )),
    }
}

/// The value of query parameter `name`, if present.
pub fn query_param(query: Option<&str>, name: &str) -> Result<Option<String>, ApiError> {
    let pairs = hearth_proto::query::parse(query.unwrap_or(""))
        .map_err(|e| ApiError::new(ErrorKind::BadRequest, e.to_string()))?;
    Ok(pairs.into_iter().find(|(n, _)| n == name).map(|(_, v)| v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_kinds_and_statuses() {
        let cases = [
            (libc::ENOENT, StatusCode::NOT_FOUND, ErrorKind::NotFound),
            (
                libc::EACCES,
                StatusCode::FORBIDDEN,
                ErrorKind::PermissionDenied,
            ),
            (
                libc::ENOTDIR,
                StatusCode::BAD_REQUEST,
                ErrorKind::NotADirectory,
            ),
            (
                libc::ENOSPC,
                StatusCode::INSUFFICIENT_STORAGE,
                ErrorKind::NoSpace,
            ),
            (libc::EIO, StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Io),
        ];
        for (errno, status, kind) in cases {
            let err = ApiError::from_io(&io::Error::from_raw_os_error(errno), "m");
            assert_eq!(
                (err.status, err.body.error.kind),
                (status, kind),
                "errno {errno}"
            );
        }
    }
}
