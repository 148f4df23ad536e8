//! What the gateway answers: [`ApiError`], every refusal in OpenAI's error shape
//! `{"error": {"type", "code", "message"}}`, and [`Reply`], a complete response.

use std::error::Error;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::budget::BudgetError;
use crate::upstream::UpstreamError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("missing Authorization header; send `Authorization: Bearer <gateway token>`")]
    MissingToken,
    #[error("the gateway token is not valid (unknown, revoked or malformed)")]
    UnknownToken,
    #[error("request body is larger than the gateway's limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("reading the request body failed: {0}")]
    BodyRead(#[source] hyper::Error),
    #[error("request body is not valid JSON: {0}")]
    BadJson(#[source] serde_json::Error),
    #[error("invalid chat request: {0}")]
    BadField(#[source] serde_json::Error),
    #[error("invalid chat request: {0}")]
    BadRequest(&'static str),
    #[error("streaming (\"stream\": true) is not supported by the hearth gateway; send the request without it")]
    StreamingUnsupported,
    #[error(transparent)]
    Budget(#[from] BudgetError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(
        "no such endpoint: {path}; the gateway serves POST /v1/chat/completions and GET /v1/models"
    )]
    NotFound { path: String },
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed { method: Method, path: String },
}

impl ApiError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::MissingToken | Self::UnknownToken => StatusCode::UNAUTHORIZED,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyRead(_) | Self::BadJson(_) | Self::BadField(_) | Self::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::StreamingUnsupported => StatusCode::BAD_REQUEST,
            Self::Budget(BudgetError::Exhausted { .. }) => StatusCode::PAYMENT_REQUIRED,
            Self::Budget(BudgetError::TooManyInFlight { .. }) => StatusCode::TOO_MANY_REQUESTS,
            Self::Upstream(UpstreamError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// OpenAI's `error.type` and `error.code`. The budget refusal uses `budget_exhausted` for
    /// both, as the agent's contract says.
    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            Self::MissingToken | Self::UnknownToken => {
                ("authentication_error", "invalid_gateway_token")
            }
            Self::TooLarge { .. } => ("invalid_request_error", "request_too_large"),
            Self::BodyRead(_) => ("invalid_request_error", "body_read_failed"),
            Self::BadJson(_) => ("invalid_request_error", "invalid_json"),
            Self::BadField(_) | Self::BadRequest(_) => ("invalid_request_error", "invalid_request"),
            Self::StreamingUnsupported => ("invalid_request_error", "stream_unsupported"),
            Self::Budget(BudgetError::Exhausted { .. }) => ("budget_exhausted", "budget_exhausted"),
            Self::Budget(BudgetError::TooManyInFlight { .. }) => {
                ("rate_limit_error", "too_many_in_flight")
            }
            Self::Upstream(UpstreamError::Timeout { .. }) => ("upstream_error", "upstream_timeout"),
            Self::Upstream(_) => ("upstream_error", "upstream_unreachable"),
            Self::NotFound { .. } => ("invalid_request_error", "not_found"),
            Self::MethodNotAllowed { .. } => ("invalid_request_error", "method_not_allowed"),
        }
    }

    /// The message with its causes ("... : connection refused"), which is what an operator
    /// needs to see; none of them can hold the key (see [`UpstreamError`]).
    pub(crate) fn message(&self) -> String {
        let mut message = self.to_string();
        let mut source = self.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        message
    }

    pub(crate) fn reply(&self) -> Reply {
        let (kind, code) = self.kind();
        let body = json!({ "error": { "type": kind, "code": code, "message": self.message() } });
        Reply::json(self.status(), body.to_string().into())
    }
}

/// A complete response, kept as bytes so the same body can be recorded and sent.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) content_type: HeaderValue,
    pub(crate) body: Bytes,
}

impl Reply {
    pub(crate) fn json(status: StatusCode, body: Bytes) -> Self {
        Self {
            status,
            content_type: HeaderValue::from_static("application/json"),
            body,
        }
    }

    pub(crate) fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(self.body));
        *response.status_mut() = self.status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, self.content_type);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_refusal_matches_the_agent_contract() {
        let error = ApiError::from(BudgetError::Exhausted {
            max_tokens: 50,
            spent_tokens: 60,
        });
        let reply = error.reply();
        assert_eq!(reply.status, StatusCode::PAYMENT_REQUIRED);
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["error"]["type"], "budget_exhausted");
        assert_eq!(body["error"]["code"], "budget_exhausted");
        assert_eq!(
            body["error"]["message"],
            "task budget of 50 tokens spent (60 used)"
        );
    }
}
