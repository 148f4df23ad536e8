//! What the gateway records: one [`GatewayCall`] per chat-completions call of a known task,
//! handed to a [`CallRecorder`] (the host persists them to the task's timeline).

use std::fmt;
use std::sync::{Mutex, PoisonError};

use serde::Serialize;
use serde_json::{json, Value};

use crate::task::TaskId;

/// Replaces every secret in recorded and forwarded bodies.
pub const REDACTED: &str = "[REDACTED]";

/// One chat-completions call, whether it reached the upstream or was refused by the gateway.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GatewayCall {
    pub task_id: TaskId,
    /// The model the upstream says answered, else the one the request named.
    pub model: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// What was charged to the task's budget.
    pub total_tokens: u64,
    pub latency_ms: u64,
    /// The HTTP status the sandbox got.
    pub status: u16,
    /// The request body, secrets replaced with [`REDACTED`], cut at the record cap.
    pub request: Value,
    /// The response body the sandbox got (the upstream's or the gateway's error), capped.
    pub response: Value,
}

/// Receives every call. Called on the request path: implementations must not block (send to a
/// channel and persist elsewhere).
pub trait CallRecorder: Send + Sync + fmt::Debug {
    fn record(&self, call: GatewayCall);
}

/// Keeps calls in memory; for tests and the benchmark.
#[derive(Debug, Default)]
pub struct MemoryRecorder {
    calls: Mutex<Vec<GatewayCall>>,
}

impl MemoryRecorder {
    pub fn calls(&self) -> Vec<GatewayCall> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl CallRecorder for MemoryRecorder {
    fn record(&self, call: GatewayCall) {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(call);
    }
}

/// Replaces every occurrence of each (non-empty) secret in `body`.
pub(crate) fn scrub(body: &[u8], secrets: &[&str]) -> Vec<u8> {
    let mut out = body.to_vec();
    for secret in secrets
        .iter()
        .map(|s| s.as_bytes())
        .filter(|s| !s.is_empty())
    {
        out = replace_all(&out, secret, REDACTED.as_bytes());
    }
    out
}

fn replace_all(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(at) = rest.windows(needle.len()).position(|w| w == needle) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(with);
        rest = &rest[at + needle.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// A body as recorded: its JSON when it is JSON and fits in `cap`, otherwise a marker with the
/// size and the first `cap` bytes as text, so a huge prompt cannot bloat the timeline.
pub(crate) fn recorded_body(body: &[u8], cap: usize) -> Value {
    if body.len() <= cap {
        if let Ok(value) = serde_json::from_slice::<Value>(body) {
            return value;
        }
    }
    let head = String::from_utf8_lossy(&body[..body.len().min(cap)]).into_owned();
    json!({ "truncated": body.len() > cap, "bytes": body.len(), "text": head })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_replaces_every_occurrence() {
        let body = br#"{"a":"sk-1 and sk-1","b":"tok"}"#;
        let out = scrub(body, &["sk-1", "tok", ""]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":"[REDACTED] and [REDACTED]","b":"[REDACTED]"}"#
        );
    }

    #[test]
    fn recorded_bodies_are_capped() {
        assert_eq!(recorded_body(br#"{"a":1}"#, 100), json!({"a": 1}));
        let big = recorded_body(br#"{"a":"0123456789"}"#, 5);
        assert_eq!(big["truncated"], true);
        assert_eq!(big["text"], r#"{"a":"#);
        let text = recorded_body(b"not json", 100);
        assert_eq!(text["truncated"], false);
        assert_eq!(text["text"], "not json");
    }
}
