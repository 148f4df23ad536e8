//! `/v1/sandboxes`: create, exec, files and remove, as the `hearth sandbox` commands do them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use hearth_proto::ExecRequest;
use hearth_sandbox::guest_client::OutputChunk;
use hearth_sandbox::spec::{Cpus, MemoryBytes};
use hearth_sandbox::SandboxId;
use serde::{Deserialize, Serialize};

use super::body::{read_limited, JsonBody, FILE_LIMIT};
use super::server::AppState;
use super::ApiError;
use crate::request::{NetRequest, RequestError, SandboxRequest, SeccompRequest};
use crate::store::{SandboxRecord, TaskId};
use crate::tasks::params::InvalidParam;

/// Output kept per stream of one exec; beyond it bytes are counted, not kept.
const EXEC_OUTPUT_LIMIT: usize = 8 << 20;

fn invalid(field: &'static str, problem: impl Into<String>) -> ApiError {
    ApiError::InvalidParam(InvalidParam {
        field,
        problem: problem.into(),
    })
}

fn parse_id(raw: &str) -> Result<SandboxId, ApiError> {
    SandboxId::parse(raw).map_err(|source| ApiError::BadId {
        raw: raw.to_owned(),
        source,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    id: Option<String>,
    /// `512M`, `2G` or bytes.
    memory: Option<String>,
    cpus: Option<f64>,
    pids: Option<u32>,
    /// Size of the private workspace: `4G`, `512M` or bytes.
    disk: Option<String>,
    workspace: Option<PathBuf>,
    /// `none`, `gateway` (the default) or `allowlist`.
    net: Option<String>,
    #[serde(default)]
    allow: Vec<String>,
    /// A seccomp profile name or policy file (default `default`).
    seccomp: Option<String>,
    /// A template (`hearth template ls`) the sandbox's root comes from.
    template: Option<String>,
}

pub async fn create(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateSandbox>,
) -> Result<(StatusCode, Json<SandboxRecord>), ApiError> {
    let spec = body.request()?.validate().map_err(refused)?;
    let record = state.manager.create(&spec).await?;
    Ok((StatusCode::CREATED, Json(record)))
}

impl CreateSandbox {
    /// The body as a [`SandboxRequest`]: sizes parse as the CLI's flags do.
    fn request(&self) -> Result<SandboxRequest, ApiError> {
        let size = |field, raw: &Option<String>| {
            raw.as_deref()
                .map(str::parse::<MemoryBytes>)
                .transpose()
                .map_err(|e| invalid(field, e.to_string()))
        };
        Ok(SandboxRequest {
            id: self.id.clone(),
            backend: hearth_sandbox::backend::BackendKind::default(),
            memory: size("memory", &self.memory)?,
            cpus: self
                .cpus
                .map(|n| n.to_string().parse::<Cpus>())
                .transpose()
                .map_err(|e| invalid("cpus", e.to_string()))?,
            pids: self.pids,
            disk: size("disk", &self.disk)?,
            workspace: self.workspace.clone(),
            seccomp: SeccompRequest::Profile(
                self.seccomp
                    .clone()
                    .unwrap_or_else(|| crate::request::DEFAULT_PROFILE.to_owned()),
            ),
            guest_seccomp: None,
            template: self.template.clone(),
            net: NetRequest {
                mode: self.net.clone(),
                allow: self.allow.clone(),
                ..NetRequest::default()
            },
        })
    }
}

/// A refused request: a bad id as for every route taking one, any other field by name.
fn refused(err: RequestError) -> ApiError {
    match err {
        RequestError::Id { raw, source } => ApiError::BadId { raw, source },
        other => invalid(other.field(), other.to_string()),
    }
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<SandboxRecord>>, ApiError> {
    Ok(Json(state.manager.list().await?))
}

pub async fn get(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<SandboxRecord>, ApiError> {
    Ok(Json(state.manager.get(&parse_id(&raw)?).await?))
}

/// Removing a running task's sandbox from under it would fail the task for an unclear reason;
/// the task's cancel says what happened.
pub async fn remove(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&raw)?;
    if let Ok(task_id) = TaskId::parse(id.as_str()) {
        if let Some(task) = state.store().get_task(&task_id).await? {
            if !task.status.is_final() {
                return Err(ApiError::TaskSandbox {
                    id: raw,
                    status: task.status,
                });
            }
        }
    }
    state.manager.get(&id).await?;
    state.manager.remove(&id, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    argv: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    /// Text for the command's stdin.
    stdin: Option<String>,
    timeout_s: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct ExecOutput {
    exit_code: i32,
    signal: Option<i32>,
    timed_out: bool,
    oom_killed: bool,
    stdout: String,
    stderr: String,
    /// `utf8`, or `base64` when a stream is not valid UTF-8 (then both are base64).
    encoding: &'static str,
    /// Bytes dropped beyond the output limits, per stream.
    stdout_dropped: u64,
    stderr_dropped: u64,
}

pub async fn exec(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody<ExecBody>,
) -> Result<Json<ExecOutput>, ApiError> {
    let id = parse_id(&raw)?;
    if body.argv.first().is_none_or(|a| a.is_empty()) {
        return Err(invalid("argv", "must name a program"));
    }
    let timeout_ms = match body.timeout_s {
        Some(s) if s.is_finite() && s > 0.0 => {
            Some(std::time::Duration::from_secs_f64(s.min(86_400.0)).as_millis())
        }
        Some(s) => {
            return Err(invalid(
                "timeout_s",
                format!("{s} is not a positive number of seconds"),
            ))
        }
        None => None,
    };
    let request = ExecRequest {
        argv: body.argv,
        env: body.env,
        cwd: Some(body.cwd.unwrap_or_else(|| "/workspace".into())),
        stdin: body.stdin.map(String::into_bytes),
        timeout_ms: timeout_ms.map(|ms| u64::try_from(ms).unwrap_or(u64::MAX)),
        stdin_open: false,
    };
    let client = state.manager.guest(&id).await?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut result = ExecOutput::default();
    let status = client
        .exec(&request, |chunk| match chunk {
            OutputChunk::Stdout(data) => keep(&mut out, &data, &mut result.stdout_dropped),
            OutputChunk::Stderr(data) => keep(&mut err, &data, &mut result.stderr_dropped),
            OutputChunk::Truncated {
                stream,
                dropped_bytes,
            } => match stream {
                hearth_proto::StreamName::Stdout => result.stdout_dropped += dropped_bytes,
                hearth_proto::StreamName::Stderr => result.stderr_dropped += dropped_bytes,
            },
        })
        .await;
    let status = match status {
        Ok(status) => status,
        // As the shell (and `hearth sandbox exec`) report a missing program.
        Err(e) if e.guest_kind() == Some(hearth_proto::ErrorKind::NotFound) => {
            err = e.to_string().into_bytes();
            hearth_proto::ExitStatus {
                code: Some(127),
                ..Default::default()
            }
        }
        Err(e) => return Err(e.into()),
    };
    state
        .manager
        .record_exit(&id, &request.argv[0], &status)
        .await;
    result.exit_code = status.shell_code();
    result.signal = status.signal;
    result.timed_out = status.timed_out;
    result.oom_killed = status.oom_killed;
    match (String::from_utf8(out), String::from_utf8(err)) {
        (Ok(o), Ok(e)) => (result.stdout, result.stderr, result.encoding) = (o, e, "utf8"),
        (o, e) => {
            let b64 = |r: Result<String, std::string::FromUtf8Error>| {
                let bytes = r.map_or_else(|e| e.into_bytes(), String::into_bytes);
                base64::engine::general_purpose::STANDARD.encode(bytes)
            };
            (result.stdout, result.stderr, result.encoding) = (b64(o), b64(e), "base64");
        }
    }
    Ok(Json(result))
}

fn keep(buffer: &mut Vec<u8>, data: &[u8], dropped: &mut u64) {
    let room = EXEC_OUTPUT_LIMIT
        .saturating_sub(buffer.len())
        .min(data.len());
    buffer.extend_from_slice(&data[..room]);
    *dropped += (data.len() - room) as u64;
}

/// `path` (absolute, required) and `mode` (octal, optional) from the query.
fn file_query(query: Option<&str>) -> Result<(String, u32), ApiError> {
    let pairs = hearth_proto::query::parse(query.unwrap_or(""))
        .map_err(|e| invalid("path", e.to_string()))?;
    let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let path =
        get("path").ok_or_else(|| invalid("path", "the query needs ?path=/absolute/path"))?;
    if !path.starts_with('/') {
        return Err(invalid("path", format!("{path:?} is not absolute")));
    }
    let mode = match get("mode") {
        Some(raw) => u32::from_str_radix(&raw, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| invalid("mode", format!("{raw:?} is not an octal file mode")))?,
        None => 0o644,
    };
    Ok((path, mode))
}

pub async fn read_file(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    let (path, _) = file_query(query.as_deref())?;
    let bytes = state.manager.guest(&id).await?.read_file(&path).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from(bytes),
    )
        .into_response())
}

pub async fn write_file(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Json<hearth_proto::WriteResult>, ApiError> {
    let id = parse_id(&raw)?;
    let (path, mode) = file_query(query.as_deref())?;
    let bytes = read_limited(request, FILE_LIMIT).await?;
    let client = state.manager.guest(&id).await?;
    Ok(Json(client.write_file(&path, bytes, mode).await?))
}
