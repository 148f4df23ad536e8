//! A small client for Firecracker's API socket: HTTP/1.1 over a Unix socket, one connection per
//! request (like [`crate::guest_client`]), JSON bodies from [`super::api`].
//!
//! Firecracker answers `204 No Content` on success and `4xx`/`5xx` with `{"fault_message": ..}`;
//! the message becomes [`ApiError::Fault`] with the request's method, path and status, so a
//! refused boot says which call Firecracker refused and why.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use super::api::{ApiCall, ApiRequest, FaultBody, InstanceInfo};

/// Longest response body read (Firecracker's are a few hundred bytes).
const MAX_RESPONSE: usize = 64 * 1024;

/// Errors talking to a Firecracker API socket.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("connect to Firecracker API socket {socket}: {source}")]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("{method} {path} over {socket}: {source}")]
    Http {
        socket: PathBuf,
        method: Method,
        path: String,
        source: hyper::Error,
    },
    #[error("Firecracker refused {method} {path} ({status}): {fault_message}")]
    Fault {
        method: Method,
        path: String,
        status: u16,
        fault_message: String,
    },
    #[error("Firecracker answered {method} {path} with {status} and no fault message: {body}")]
    UnexpectedStatus {
        method: Method,
        path: String,
        status: u16,
        body: String,
    },
    #[error("malformed answer to {method} {path}: {source}")]
    Decode {
        method: Method,
        path: String,
        source: serde_json::Error,
    },
    #[error("encode the body of {path}: {source}")]
    Encode {
        path: String,
        source: serde_json::Error,
    },
    #[error("build request {method} {path}: {source}")]
    Request {
        method: Method,
        path: String,
        source: http::Error,
    },
    #[error("Firecracker API socket {socket} not answering after {waited:?}: {last}")]
    NotReady {
        socket: PathBuf,
        waited: Duration,
        last: Box<ApiError>,
    },
}

impl ApiError {
    /// The HTTP status Firecracker answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Fault { status, .. } | Self::UnexpectedStatus { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Talks to one Firecracker process.
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
}

impl ApiClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends a typed body to its endpoint.
    pub async fn send<R: ApiRequest>(&self, request: &R) -> Result<(), ApiError> {
        let call = request.call().map_err(|source| ApiError::Encode {
            path: request.path(),
            source,
        })?;
        self.call(&call).await
    }

    /// Sends one prepared call; success is any 2xx.
    pub async fn call(&self, call: &ApiCall) -> Result<(), ApiError> {
        let body = serde_json::to_vec(&call.body).map_err(|source| ApiError::Encode {
            path: call.path.clone(),
            source,
        })?;
        self.exchange(call.method.clone(), &call.path, Some(body))
            .await
            .map(drop)
    }

    /// `GET /`: the instance's id, state and VMM version.
    pub async fn instance_info(&self) -> Result<InstanceInfo, ApiError> {
        let body = self.exchange(Method::GET, "/", None).await?;
        serde_json::from_slice(&body).map_err(|source| ApiError::Decode {
            method: Method::GET,
            path: "/".to_owned(),
            source,
        })
    }

    /// Polls `GET /` until the VMM answers (the backend's own loop also watches the process).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<InstanceInfo, ApiError> {
        let started = Instant::now();
        loop {
            let err = match self.instance_info().await {
                Ok(info) => return Ok(info),
                Err(err) => err,
            };
            if started.elapsed() >= timeout {
                return Err(ApiError::NotReady {
                    socket: self.socket.clone(),
                    waited: started.elapsed(),
                    last: Box::new(err),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// One request on a fresh connection; returns the body of a 2xx answer.
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ApiError> {
        let http_err = |source| ApiError::Http {
            socket: self.socket.clone(),
            method: method.clone(),
            path: path.to_owned(),
            source,
        };
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ApiError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_err)?;
        tokio::spawn(async move {
            // Errors surface through the response future or the body.
            let _ = conn.await;
        });
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::HOST, "localhost")
            .header(header::ACCEPT, "application/json");
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|source| ApiError::Request {
                method: method.clone(),
                path: path.to_owned(),
                source,
            })?;
        let response = sender.send_request(request).await.map_err(http_err)?;
        let status = response.status();
        let limited = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE);
        let bytes = match limited.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(err) => match err.downcast::<hyper::Error>() {
                Ok(source) => return Err(http_err(*source)),
                // Over the limit: keep what the status says; the body is not needed.
                Err(_) => Bytes::new(),
            },
        };
        if status.is_success() {
            return Ok(bytes);
        }
        Err(fault(method, path, status, &bytes))
    }
}

fn fault(method: Method, path: &str, status: StatusCode, body: &[u8]) -> ApiError {
    match serde_json::from_slice::<FaultBody>(body) {
        Ok(FaultBody { fault_message }) => ApiError::Fault {
            method,
            path: path.to_owned(),
            status: status.as_u16(),
            fault_message,
        },
        Err(_) => ApiError::UnexpectedStatus {
            method,
            path: path.to_owned(),
            status: status.as_u16(),
            body: String::from_utf8_lossy(body).into_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_bodies_become_typed_errors() {
        let err = fault(
            Method::PUT,
            "/drives/rootfs",
            StatusCode::BAD_REQUEST,
            br#"{"fault_message":"Unable to open drive"}"#,
        );
        assert!(
            matches!(&err, ApiError::Fault { path, status: 400, fault_message, .. }
                if path == "/drives/rootfs" && fault_message == "Unable to open drive"),
            "{err:?}"
        );
        assert_eq!(err.status(), Some(400));
        let err = fault(Method::GET, "/", StatusCode::INTERNAL_SERVER_ERROR, b"oops");
        assert!(
            matches!(&err, ApiError::UnexpectedStatus { status: 500, body, .. } if body == "oops")
        );
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_connect_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let socket = tmp.path().join("api.sock");
        let err = ApiClient::new(&socket).instance_info().await.unwrap_err();
        assert!(
            matches!(&err, ApiError::Connect { socket: s, .. } if *s == socket),
            "{err:?}"
        );
        let err = ApiClient::new(&socket)
            .wait_ready(Duration::from_millis(20))
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::NotReady { .. }), "{err:?}");
    }
}
