//! Task parameters as a client sends them, validated once into a [`TaskRequest`].

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::runner::TaskRequest;
use crate::request::{NetRequest, SandboxRequest};

/// One parameter that failed validation, named so a client can fix it.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidParam {
    pub field: &'static str,
    pub problem: String,
}

fn invalid(field: &'static str, problem: impl Into<String>) -> InvalidParam {
    InvalidParam {
        field,
        problem: problem.into(),
    }
}

/// The body of `POST /v1/tasks`. Unknown fields are refused rather than ignored: a typo in a
/// limit must not silently run with the default.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TaskParams {
    pub prompt: String,
    #[serde(default = "default_model")]
    pub model: String,
    #[serde(default = "default_max_steps")]
    pub max_steps: u32,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u64,
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// Absolute host directory mounted at /workspace; a private one when absent.
    #[serde(default)]
    pub workspace: Option<PathBuf>,
    /// Destinations besides the gateway: CIDR[:port] or domain[:port].
    #[serde(default)]
    pub allow: Vec<String>,
    /// A template (`hearth template ls`) the sandbox's root comes from; it needs python3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

/// Defaults shared by the API body and `hearth run`'s flags.
pub const DEFAULT_MODEL: &str = "gpt-4o-mini";
pub const DEFAULT_MAX_STEPS: u32 = 30;
pub const DEFAULT_MAX_TOKENS: u64 = 200_000;
pub const DEFAULT_TIMEOUT_S: f64 = 600.0;

fn default_model() -> String {
    DEFAULT_MODEL.into()
}
fn default_max_steps() -> u32 {
    DEFAULT_MAX_STEPS
}
fn default_max_tokens() -> u64 {
    DEFAULT_MAX_TOKENS
}
fn default_timeout_s() -> f64 {
    DEFAULT_TIMEOUT_S
}

impl TaskParams {
    /// Checks every field and builds the runner's request.
    pub fn validate(&self) -> Result<TaskRequest, InvalidParam> {
        if self.prompt.trim().is_empty() {
            return Err(invalid("prompt", "must not be empty"));
        }
        if self.model.trim().is_empty() {
            return Err(invalid("model", "must not be empty"));
        }
        if !(self.timeout_s.is_finite() && self.timeout_s > 0.0 && self.timeout_s <= 86_400.0) {
            return Err(invalid(
                "timeout_s",
                format!(
                    "{} is not a number of seconds in (0, 86400]",
                    self.timeout_s
                ),
            ));
        }
        if self.max_steps == 0 {
            return Err(invalid("max_steps", "must be at least 1"));
        }
        if self.max_tokens == 0 {
            return Err(invalid("max_tokens", "must be at least 1"));
        }
        // The task's sandbox, checked now so a bad one is refused before the task is queued;
        // the runner gives it the task's id.
        let request = SandboxRequest {
            workspace: self.workspace.clone(),
            net: NetRequest {
                allow: self.allow.clone(),
                ..NetRequest::default()
            },
            template: self.template.clone(),
            ..SandboxRequest::default()
        };
        let sandbox = request
            .validate()
            .map_err(|err| invalid(err.field(), err.to_string()))?;
        Ok(TaskRequest {
            prompt: self.prompt.clone(),
            model: self.model.clone(),
            max_steps: self.max_steps,
            max_tokens: self.max_tokens,
            timeout: Duration::from_secs_f64(self.timeout_s),
            sandbox,
        })
    }
}

/// The `spec` column of a task: what it was asked to do besides the prompt and model.
pub fn stored_spec(request: &TaskRequest) -> Value {
    json!({
        "workspace": request.sandbox.workspace, "max_steps": request.max_steps,
        "max_tokens": request.max_tokens, "timeout_s": request.timeout.as_secs_f64(),
        "net": request.sandbox.net,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(body: Value) -> Result<TaskParams, serde_json::Error> {
        serde_json::from_value(body)
    }

    #[test]
    fn defaults_and_each_bad_field_is_named() {
        let ok = params(json!({"prompt": "fix it"})).unwrap();
        assert_eq!(ok.max_steps, 30);
        assert!(ok.validate().is_ok());
        let unknown = params(json!({"prompt": "x", "max_stepz": 3})).unwrap_err();
        assert!(unknown.to_string().contains("max_stepz"), "{unknown}");
        let cases = [
            (json!({"prompt": "  "}), "prompt"),
            (json!({"prompt": "x", "timeout_s": -1}), "timeout_s"),
            (json!({"prompt": "x", "max_steps": 0}), "max_steps"),
            (json!({"prompt": "x", "workspace": "rel/dir"}), "workspace"),
            (
                json!({"prompt": "x", "workspace": "/no/such/dir"}),
                "workspace",
            ),
            (
                json!({"prompt": "x", "workspace": "/etc/hostname"}),
                "workspace",
            ),
            (json!({"prompt": "x", "allow": ["not a rule!"]}), "allow"),
        ];
        for (body, field) in cases {
            let err = params(body.clone()).unwrap().validate().unwrap_err();
            assert_eq!(err.field, field, "{body}: {err}");
        }
    }
}
