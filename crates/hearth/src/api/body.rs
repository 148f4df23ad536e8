//! Request bodies: read under a size limit, JSON parsed with errors that name the problem.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_LENGTH;
use serde::de::DeserializeOwned;

use super::ApiError;

/// JSON request bodies (task and sandbox creation, exec).
pub const JSON_LIMIT: usize = 1 << 20;
/// File uploads: the same limit as `hearth sandbox cp`.
pub const FILE_LIMIT: usize = 64 << 20;

/// A JSON body of type `T`; refused with 400 (syntax), 422 (shape) or 413 (size).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, ApiError> {
        let bytes = read_limited(request, JSON_LIMIT).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// The whole body, refused early when its declared length is over `limit`.
pub async fn read_limited(request: Request, limit: usize) -> Result<Bytes, ApiError> {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::TooLarge { limit });
    }
    let body: Body = request.into_body();
    axum::body::to_bytes(body, limit).await.map_err(|err| {
        let over = std::error::Error::source(&err)
            .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
        if over {
            ApiError::TooLarge { limit }
        } else {
            ApiError::Body(err)
        }
    })
}

/// Syntax errors are the client's malformed JSON; data errors (unknown field, wrong type,
/// missing field) are a well-formed body of the wrong shape.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|err| match err.classify() {
        serde_json::error::Category::Data => ApiError::InvalidBody(err),
        _ => ApiError::MalformedJson(err),
    })
}
