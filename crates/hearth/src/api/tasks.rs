//! `/v1/tasks`: submit, list, show and cancel agent tasks.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::body::JsonBody;
use super::server::AppState;
use super::ApiError;
use crate::store::{TaskId, TaskRecord};
use crate::tasks::params::TaskParams;

/// How long a cancel waits for the agent to stop and the sandbox to be removed before it
/// answers with the task as it is then.
const CANCEL_WAIT: Duration = Duration::from_secs(60);

pub fn parse_id(raw: &str) -> Result<TaskId, ApiError> {
    TaskId::parse(raw).map_err(|source| ApiError::BadId {
        raw: raw.to_owned(),
        source,
    })
}

pub async fn create(
    State(state): State<AppState>,
    JsonBody(params): JsonBody<TaskParams>,
) -> Result<(StatusCode, Json<TaskRecord>), ApiError> {
    let request = params.validate()?;
    let record = state.queue.submit(request).await?;
    tracing::info!(task = %record.id, "task accepted");
    Ok((StatusCode::ACCEPTED, Json(record)))
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<TaskRecord>>, ApiError> {
    Ok(Json(state.store().list_tasks().await?))
}

pub async fn get(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<TaskRecord>, ApiError> {
    let id = parse_id(&raw)?;
    let task = state.store().get_task(&id).await?;
    task.map(Json).ok_or(ApiError::TaskNotFound(id))
}

pub async fn cancel(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<TaskRecord>, ApiError> {
    let id = parse_id(&raw)?;
    Ok(Json(state.queue.cancel(&id, CANCEL_WAIT).await?))
}
