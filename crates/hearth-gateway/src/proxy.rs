//! The proxied endpoints: authenticate the task, check the request and the budget, forward with
//! the real key, charge the usage, record the call.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Method, Request};
use hyper::body::Incoming;
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::http_server::{read_capped, BodyError};
use crate::record::{recorded_body, scrub, GatewayCall};
use crate::registry::TaskEntry;
use crate::reply::{ApiError, Reply};
use crate::server::Shared;
use crate::upstream::UpstreamReply;

/// The fields of a chat request the gateway looks at; everything else passes through untouched.
#[derive(Deserialize)]
struct ChatRequestHead {
    model: Option<String>,
    messages: Option<Vec<IgnoredAny>>,
    stream: Option<bool>,
}

#[derive(Deserialize)]
struct ChatResponseHead {
    model: Option<String>,
    usage: Option<Usage>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    total_tokens: Option<u64>,
}

impl Usage {
    fn total(&self) -> u64 {
        self.total_tokens
            .unwrap_or(self.prompt_tokens.saturating_add(self.completion_tokens))
    }
}

/// What is known about a call so far, for its record.
#[derive(Default)]
struct CallDraft {
    request: Bytes,
    model: Option<String>,
    usage: Usage,
}

pub(crate) async fn chat_completions(
    shared: &Shared,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Reply {
    let started = Instant::now();
    let task = match authenticate(shared, request.headers()) {
        Ok(task) => task,
        Err(error) => {
            tracing::warn!(%peer, %error, "refused a model call without a valid gateway token");
            return error.reply();
        }
    };
    let mut draft = CallDraft::default();
    let reply = match forward_chat(shared, &task, request.into_body(), &mut draft).await {
        Ok(reply) => reply,
        Err(error) => {
            let status = error.status().as_u16();
            tracing::warn!(task_id = %task.task_id, status, error = %error.message(), "model call refused or failed");
            error.reply()
        }
    };
    let call = finish(shared, &task, draft, &reply, started);
    tracing::info!(
        task_id = %call.task_id,
        status = call.status,
        total_tokens = call.total_tokens,
        latency_ms = call.latency_ms,
        "model call"
    );
    shared.recorder.record(call);
    reply
}

async fn forward_chat(
    shared: &Shared,
    task: &TaskEntry,
    body: Incoming,
    draft: &mut CallDraft,
) -> Result<Reply, ApiError> {
    let bytes = read_capped(body, shared.config.max_request_bytes)
        .await
        .map_err(|error| match error {
            BodyError::TooLarge { limit } => ApiError::TooLarge { limit },
            BodyError::Read(source) => ApiError::BodyRead(source),
        })?;
    draft.request = bytes.clone();
    draft.model = Some(check_request(&bytes)?);
    let admission = task.budget.admit()?;
    let upstream = shared
        .upstream
        .send(Method::POST, "chat/completions", Some(bytes))
        .await?;
    let head = serde_json::from_slice::<ChatResponseHead>(&upstream.body).ok();
    if let Some(head) = head {
        draft.model = head.model.or(draft.model.take());
        if let Some(usage) = head.usage {
            admission.charge(usage.total());
            draft.usage = usage;
        } else if upstream.status.is_success() {
            // Nothing to charge: a budget hole, but refusing a good answer would be worse.
            tracing::warn!(task_id = %task.task_id, "upstream response has no usage; no tokens charged");
        }
    }
    Ok(forwarded(shared, upstream))
}

/// Checks the fields the gateway relies on and returns the model name.
fn check_request(body: &[u8]) -> Result<String, ApiError> {
    // Without this, serde would read a JSON array as the struct's fields in order and complain
    // about the wrong thing.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::BadRequest("the body must be a JSON object"));
    }
    let head: ChatRequestHead = serde_json::from_slice(body).map_err(|error| {
        if error.is_data() {
            ApiError::BadField(error)
        } else {
            ApiError::BadJson(error)
        }
    })?;
    // Usage arrives in the last chunk of a stream, so streaming would let a call run past the
    // budget unseen; the agent never streams, and refusing keeps the accounting exact.
    if head.stream == Some(true) {
        return Err(ApiError::StreamingUnsupported);
    }
    if head.messages.is_none() {
        return Err(ApiError::BadRequest("\"messages\" is missing"));
    }
    head.model
        .ok_or(ApiError::BadRequest("\"model\" is missing"))
}

pub(crate) async fn models(shared: &Shared, request: Request<Incoming>, peer: SocketAddr) -> Reply {
    if let Err(error) = authenticate(shared, request.headers()) {
        tracing::warn!(%peer, %error, "refused a models call without a valid gateway token");
        return error.reply();
    }
    match shared.upstream.send(Method::GET, "models", None).await {
        Ok(upstream) => forwarded(shared, upstream),
        Err(error) => {
            let error = ApiError::from(error);
            tracing::warn!(error = %error.message(), "models call failed");
            error.reply()
        }
    }
}

pub(crate) fn authenticate(
    shared: &Shared,
    headers: &HeaderMap,
) -> Result<Arc<TaskEntry>, ApiError> {
    let value = headers.get(AUTHORIZATION).ok_or(ApiError::MissingToken)?;
    let text = value.to_str().map_err(|_| ApiError::UnknownToken)?;
    let (scheme, token) = text.split_once(' ').ok_or(ApiError::UnknownToken)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::UnknownToken);
    }
    shared
        .tasks
        .authenticate(token.trim())
        .ok_or(ApiError::UnknownToken)
}

/// The upstream's answer as the sandbox gets it: status, content type and body, with the key
/// scrubbed in case an upstream error message quotes it.
fn forwarded(shared: &Shared, upstream: UpstreamReply) -> Reply {
    let body = match &shared.config.api_key {
        Some(key) => Bytes::from(scrub(&upstream.body, &[key.text()])),
        None => upstream.body,
    };
    Reply {
        status: upstream.status,
        content_type: upstream
            .content_type
            .unwrap_or(HeaderValue::from_static("application/json")),
        body,
    }
}

fn finish(
    shared: &Shared,
    task: &TaskEntry,
    draft: CallDraft,
    reply: &Reply,
    started: Instant,
) -> GatewayCall {
    let token = task.token_text();
    let key = shared.config.api_key.as_ref().map_or("", |key| key.text());
    let secrets = [key, token.as_str()];
    let cap = shared.config.record_cap_bytes;
    GatewayCall {
        task_id: task.task_id.clone(),
        model: draft.model,
        prompt_tokens: draft.usage.prompt_tokens,
        completion_tokens: draft.usage.completion_tokens,
        total_tokens: draft.usage.total(),
        latency_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        status: reply.status.as_u16(),
        request: recorded_body(&scrub(&draft.request, &secrets), cap),
        response: recorded_body(&scrub(&reply.body, &secrets), cap),
    }
}
