//! The control plane: sandboxes' lifecycle as E2B's `Sandbox.create/connect/list/kill/
//! set_timeout/get_info/pause/resume` call it. Field names and statuses are the ones the SDKs
//! parse (201 for create, 204 for kill, timeout and pause, `x-next-token` for list pages).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hearth_sandbox::SandboxId;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::mapping::{checked_map, timeout_of, NewSandbox};
use super::{E2bState, RestError, CLIENT_ID, ENVD_VERSION};
use crate::sandboxes::SandboxError;
use crate::store::{now_ms, E2bSandbox, SandboxRecord};

/// The deadline `secs` seconds from now, in Unix ms.
fn deadline_after(secs: u64) -> i64 {
    now_ms().saturating_add(i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX))
}

pub(super) fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn json_body<T: DeserializeOwned>(raw: &Bytes) -> Result<T, RestError> {
    let raw: &[u8] = if raw.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        raw
    };
    serde_json::from_slice(raw).map_err(|err| RestError::bad(format!("request body: {err}")))
}

/// An id from the path: hearth's ids are `[a-z0-9-]`; anything else names no sandbox.
fn parse_id(raw: &str) -> Result<SandboxId, RestError> {
    SandboxId::parse(raw).map_err(|_| RestError::not_found(raw))
}

/// The E2B row of `raw`, or 404 (also for hearth sandboxes not made through this API).
async fn row_of(state: &E2bState, raw: &str) -> Result<E2bSandbox, RestError> {
    let id = parse_id(raw)?;
    state
        .manager
        .store
        .get_e2b(&id)
        .await?
        .ok_or_else(|| RestError::not_found(raw))
}

/// `Sandbox`: what create and connect answer.
fn sandbox_json(row: &E2bSandbox) -> Value {
    json!({
        "templateID": row.template_id,
        "sandboxID": row.id.as_str(),
        "clientID": CLIENT_ID,
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": row.access_token,
        "domain": null,
    })
}

/// `SandboxDetail` / `ListedSandbox`.
fn detail_json(row: &E2bSandbox, record: &SandboxRecord) -> Value {
    let limits = &record.spec.limits;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let cpus = limits.cpus.0.ceil().max(1.0) as u64;
    json!({
        "templateID": row.template_id,
        "sandboxID": row.id.as_str(),
        "clientID": CLIENT_ID,
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": row.access_token,
        "startedAt": rfc3339(row.started_at),
        // A paused sandbox has no deadline; "now" is the honest answer to "ends at".
        "endAt": rfc3339(row.end_at.unwrap_or_else(now_ms)),
        "cpuCount": cpus,
        "memoryMB": limits.memory.0 >> 20,
        "diskSizeMB": limits.disk.0 >> 20,
        "state": if row.paused { "paused" } else { "running" },
        "metadata": row.metadata,
        // `allowInternetAccess` is left out: under hearth's default-deny firewall it is never
        // true in E2B's sense (an open internet).
        "domain": null,
    })
}

pub async fn create(State(state): State<E2bState>, raw: Bytes) -> Result<Response, RestError> {
    let body: NewSandbox = json_body(&raw)?;
    let request = body.request()?;
    let timeout = timeout_of(body.timeout)?;
    let metadata = checked_map("metadata", body.metadata.clone(), false)?;
    let env_vars = checked_map("envVars", body.env_vars.clone(), true)?;
    let spec = request
        .validate()
        .map_err(|err| RestError::bad(err.to_string()))?;
    let template_id = body.template_id.unwrap_or_else(|| "base".to_owned());
    // On a task of its own: a client that hangs up during a slow create (a microVM boot) drops
    // this handler, and the sandbox must not be left without the row that expires it.
    let task_state = state.clone();
    let made = tokio::spawn(async move {
        let state = task_state;
        let record = state.manager.create(&spec).await?;
        let started_at = now_ms();
        let row = E2bSandbox {
            id: record.id.clone(),
            template_id,
            metadata,
            env_vars,
            access_token: crate::api::auth::random_token(),
            started_at,
            end_at: Some(deadline_after(timeout)),
            paused: false,
        };
        if let Err(err) = state.manager.store.insert_e2b(&row).await {
            // Without its row nobody could reach or expire it: take it back down.
            if let Err(rm) = state.manager.remove(&record.id, true).await {
                tracing::error!(id = %record.id, error = %rm, "cannot remove a sandbox whose E2B record failed");
            }
            return Err(RestError::from(err));
        }
        state.deadlines_changed.notify_one();
        Ok(row)
    });
    let row = made
        .await
        .map_err(|err| RestError::new(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))??;
    tracing::info!(id = %row.id, template = %row.template_id, timeout, "E2B sandbox created");
    Ok((StatusCode::CREATED, Json(sandbox_json(&row))).into_response())
}

pub async fn get(
    State(state): State<E2bState>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, RestError> {
    let row = row_of(&state, &raw).await?;
    let record = state.manager.get(&row.id).await.map_err(|err| match err {
        SandboxError::NotFound(_) => RestError::not_found(&raw),
        other => other.into(),
    })?;
    Ok(Json(detail_json(&row, &record)))
}

/// `GET /v2/sandboxes` (and the older `GET /sandboxes`): `state=running,paused`,
/// `metadata=<url-encoded k=v&...>`, `template`, `startedAfter` (RFC 3339), `order=asc|desc`
/// (by start), `limit`, `nextToken` (the last id of the previous page).
pub async fn list(
    State(state): State<E2bState>,
    RawQuery(query): RawQuery,
) -> Result<Response, RestError> {
    let pairs = hearth_proto::query::parse(query.as_deref().unwrap_or(""))
        .map_err(|err| RestError::bad(format!("query: {err}")))?;
    const KNOWN: [&str; 7] = [
        "state",
        "metadata",
        "template",
        "startedAfter",
        "order",
        "limit",
        "nextToken",
    ];
    if let Some((unknown, _)) = pairs.iter().find(|(k, _)| !KNOWN.contains(&k.as_str())) {
        return Err(RestError::bad(format!(
            "query parameter {unknown:?} is not supported by hearth"
        )));
    }
    let param = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let template = param("template");
    let started_after = match param("startedAfter") {
        Some(raw) => Some(
            chrono::DateTime::parse_from_rfc3339(&raw)
                .map_err(|err| RestError::bad(format!("startedAfter {raw:?}: {err}")))?
                .timestamp_millis(),
        ),
        None => None,
    };
    let descending = match param("order").as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(other) => return Err(RestError::bad(format!("order {other:?}: asc or desc"))),
    };
    let states: Vec<String> = param("state")
        .map(|raw| raw.split(',').map(str::to_owned).collect())
        .unwrap_or_else(|| vec!["running".into(), "paused".into()]);
    if let Some(bad) = states
        .iter()
        .find(|s| !matches!(s.as_str(), "running" | "paused"))
    {
        return Err(RestError::bad(format!(
            "state {bad:?}: only running and paused are known"
        )));
    }
    let wanted_metadata = match param("metadata") {
        Some(raw) => metadata_filter(&raw)?,
        None => BTreeMap::new(),
    };
    let limit = match param("limit") {
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| RestError::bad(format!("limit {raw:?} is not 1 to 10000")))?,
        None => usize::MAX,
    };
    let after = param("nextToken");
    let mut items = Vec::new();
    let mut more = false;
    let mut rows = state.manager.store.list_e2b().await?;
    if descending {
        rows.reverse();
    }
    // A page continues after the last id of the previous one, in the same order.
    if let Some(after) = &after {
        match rows.iter().position(|row| row.id.as_str() == after) {
            Some(at) => drop(rows.drain(..=at)),
            None => return Err(RestError::bad(format!("nextToken {after:?} is not known"))),
        }
    }
    for row in rows {
        if template.as_ref().is_some_and(|t| *t != row.template_id)
            || started_after.is_some_and(|t| row.started_at <= t)
        {
            continue;
        }
        let state_name = if row.paused { "paused" } else { "running" };
        if !states.iter().any(|s| s == state_name)
            || !wanted_metadata
                .iter()
                .all(|(k, v)| row.metadata.get(k) == Some(v))
        {
            continue;
        }
        // A row whose sandbox is gone is the deadline loop's to sweep, not a listing's.
        let Ok(record) = state.manager.get(&row.id).await else {
            continue;
        };
        if items.len() == limit {
            more = true;
            break;
        }
        items.push((row.id.clone(), detail_json(&row, &record)));
    }
    let next = more
        .then(|| items.last().map(|(id, _)| id.to_string()))
        .flatten();
    let body: Vec<Value> = items.into_iter().map(|(_, v)| v).collect();
    let mut response = Json(body).into_response();
    if let Some(next) = next.and_then(|n| HeaderValue::from_str(&n).ok()) {
        response.headers_mut().insert("x-next-token", next);
    }
    Ok(response)
}

/// The SDK url-encodes each key and value, url-encodes the joined `k=v&...` string, and its HTTP
/// client encodes that as the parameter: the query parser undid the last, this undoes the
/// other two.
fn metadata_filter(raw: &str) -> Result<BTreeMap<String, String>, RestError> {
    let pairs = hearth_proto::query::parse(raw)
        .map_err(|err| RestError::bad(format!("metadata filter: {err}")))?;
    pairs
        .into_iter()
        .map(|(k, v)| {
            let decode = |s: &str| {
                hearth_proto::query::parse(&format!("x={s}"))
                    .ok()
                    .and_then(|mut p| p.pop())
                    .map(|(_, v)| v)
                    .ok_or_else(|| RestError::bad(format!("metadata filter: {s:?}")))
            };
            Ok((decode(&k)?, decode(&v)?))
        })
        .collect()
}

pub async fn kill(
    State(state): State<E2bState>,
    Path(raw): Path<String>,
) -> Result<StatusCode, RestError> {
    let row = row_of(&state, &raw).await?;
    remove(&state, &row.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes the sandbox and everything the E2B front end keeps about it.
pub async fn remove(state: &E2bState, id: &SandboxId) -> Result<(), RestError> {
    state.processes.forget(id);
    state.watchers.forget(id);
    match state.manager.remove(id, true).await {
        Ok(()) | Err(SandboxError::NotFound(_)) => {}
        Err(err) => return Err(err.into()),
    }
    state.manager.store.delete_e2b(id).await?;
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
struct TimeoutBody {
    timeout: Option<u64>,
}

pub async fn set_timeout(
    State(state): State<E2bState>,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<StatusCode, RestError> {
    let body: TimeoutBody = json_body(&body)?;
    let secs = body
        .timeout
        .ok_or_else(|| RestError::bad("the body needs {\"timeout\": seconds}"))?;
    extend(&state, &raw, secs).await
}

/// Moves a running sandbox's deadline to `secs` from now.
async fn extend(state: &E2bState, raw: &str, secs: u64) -> Result<StatusCode, RestError> {
    let row = row_of(state, raw).await?;
    let timeout = timeout_of(Some(secs))?;
    if !state
        .manager
        .store
        .set_e2b_deadline(&row.id, deadline_after(timeout))
        .await?
    {
        return Err(RestError::new(
            StatusCode::CONFLICT,
            format!("sandbox {raw} is paused; connect to it with a timeout to resume it"),
        ));
    }
    state.deadlines_changed.notify_one();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize)]
struct ConnectBody {
    timeout: Option<u64>,
    /// `false`: resume by rebooting instead of from memory, which hearth does not do.
    memory: Option<bool>,
}

/// Connect: resumes a paused sandbox, and keeps it alive at least `timeout` more seconds.
pub async fn connect(
    State(state): State<E2bState>,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<Response, RestError> {
    let body: ConnectBody = json_body(&body)?;
    if body.memory == Some(false) {
        return Err(RestError::bad(
            "connect with on_resume=\"reboot\" is not supported by hearth: a sandbox resumes \
             where it paused",
        ));
    }
    let row = row_of(&state, &raw).await?;
    let timeout = timeout_of(body.timeout)?;
    let resumed = row.paused;
    if resumed {
        state.manager.set_paused(&row.id, false).await?;
    }
    let wanted = deadline_after(timeout);
    let end = row.end_at.map_or(wanted, |end| end.max(wanted));
    state
        .manager
        .store
        .set_e2b_state(&row.id, Some(end), false)
        .await?;
    state.deadlines_changed.notify_one();
    let row = E2bSandbox {
        end_at: Some(end),
        paused: false,
        ..row
    };
    let status = if resumed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(sandbox_json(&row))).into_response())
}

/// The older resume route: as connect, but only for a paused sandbox.
pub async fn resume(
    State(state): State<E2bState>,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<Response, RestError> {
    let row = row_of(&state, &raw).await?;
    if !row.paused {
        return Err(RestError::new(
            StatusCode::CONFLICT,
            format!("sandbox {raw} is not paused"),
        ));
    }
    connect(State(state), Path(raw), body).await
}

/// Pause: a microVM's vCPUs stop (its memory stays with the VMM, on this host); the timeout
/// stops running until connect resumes it. OCI sandboxes are refused.
pub async fn pause(
    State(state): State<E2bState>,
    Path(raw): Path<String>,
    _body: Bytes,
) -> Result<StatusCode, RestError> {
    let row = row_of(&state, &raw).await?;
    if row.paused {
        return Err(RestError::new(
            StatusCode::CONFLICT,
            format!("sandbox {raw} is already paused"),
        ));
    }
    let record = state.manager.get(&row.id).await?;
    if !record.spec.backend.is_vm() {
        return Err(RestError::bad(format!(
            "sandbox {raw} is an OCI sandbox (template {:?}); hearth pauses microVM sandboxes \
             only (template \"qemu\" or \"firecracker\")",
            row.template_id
        )));
    }
    state.manager.set_paused(&row.id, true).await?;
    state
        .manager
        .store
        .set_e2b_state(&row.id, None, true)
        .await?;
    state.deadlines_changed.notify_one();
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sandboxes/{id}/refreshes` (`duration` seconds): keep-alive from older SDKs.
pub async fn refresh(
    State(state): State<E2bState>,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<StatusCode, RestError> {
    #[derive(Debug, Default, Deserialize)]
    struct RefreshBody {
        duration: Option<u64>,
    }
    let body: RefreshBody = json_body(&body)?;
    extend(&state, &raw, timeout_of(body.duration)?).await
}

pub async fn unsupported_network(Path(raw): Path<String>, _headers: HeaderMap) -> RestError {
    RestError::new(
        StatusCode::NOT_IMPLEMENTED,
        format!(
            "changing the network of running sandbox {raw} is not supported by hearth yet; \
             create a sandbox with the network it needs"
        ),
    )
}

pub async fn unsupported_metrics(Path(raw): Path<String>) -> RestError {
    RestError::new(
        StatusCode::NOT_IMPLEMENTED,
        format!("metrics of sandbox {raw} are not served by hearth's E2B API"),
    )
}
