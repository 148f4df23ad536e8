//! Fixtures of model turns: what the scripted upstream replays, one assistant message per turn.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The demo fixture, "make the failing test pass" on [`DEMO_WORKSPACE_FILES`].
pub const DEMO_FIXTURE_JSON: &str = include_str!("../../fixtures/fix_failing_test.json");

/// The demo task's workspace (file name, content): a module with a bug and its failing test.
pub const DEMO_WORKSPACE_FILES: &[(&str, &str)] = &[
    (
        "mathutil.py",
        include_str!("../../fixtures/demo-workspace/mathutil.py"),
    ),
    (
        "test_mathutil.py",
        include_str!("../../fixtures/demo-workspace/test_mathutil.py"),
    ),
];

/// The demo task's prompt.
pub const DEMO_PROMPT: &str = "Make the failing test pass.";

#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("reading fixture {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("fixture is not valid: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("fixture {name:?} has no turns")]
    NoTurns { name: String },
    #[error("fixture {name:?}, turn {turn}: a turn needs content or tool calls")]
    EmptyTurn { name: String, turn: usize },
    #[error(
        "fixture {name:?}, turn {turn}: the arguments of tool call {call} must be a JSON object"
    )]
    ArgumentsNotObject {
        name: String,
        turn: usize,
        call: usize,
    },
}

/// A scripted conversation: the assistant's turns, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub turns: Vec<FixtureTurn>,
}

/// One assistant message: tool calls, final content, or both (content beside tool calls is
/// the model "thinking aloud").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureTurn {
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub tool_calls: Vec<FixtureToolCall>,
    pub usage: FixtureUsage,
    /// Held this long before answering; tests use it for timeouts.
    #[serde(default)]
    pub delay_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureToolCall {
    pub name: String,
    /// A JSON object; sent to the client as JSON text, as OpenAI does.
    pub arguments: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Fixture {
    pub fn parse(json: &str) -> Result<Self, FixtureError> {
        let fixture: Self = serde_json::from_str(json)?;
        fixture.validate()?;
        Ok(fixture)
    }

    pub fn load(path: &Path) -> Result<Self, FixtureError> {
        let json = std::fs::read_to_string(path).map_err(|source| FixtureError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&json)
    }

    /// The embedded demo fixture.
    pub fn demo() -> Self {
        Self::parse(DEMO_FIXTURE_JSON)
            .expect("the embedded demo fixture is valid (a unit test parses it)")
    }

    fn validate(&self) -> Result<(), FixtureError> {
        let name = || self.name.clone();
        if self.turns.is_empty() {
            return Err(FixtureError::NoTurns { name: name() });
        }
        for (turn, step) in self.turns.iter().enumerate() {
            if step.content.is_none() && step.tool_calls.is_empty() {
                return Err(FixtureError::EmptyTurn { name: name(), turn });
            }
            if let Some(call) = step
                .tool_calls
                .iter()
                .position(|c| !c.arguments.is_object())
            {
                return Err(FixtureError::ArgumentsNotObject {
                    name: name(),
                    turn,
                    call,
                });
            }
        }
        Ok(())
    }

    /// The chat-completion response for turn `turn` answering as `model`; `None` past the end.
    pub fn completion(&self, turn: usize, model: &str) -> Option<Value> {
        let step = self.turns.get(turn)?;
        let mut message = json!({ "role": "assistant", "content": step.content });
        if !step.tool_calls.is_empty() {
            let calls: Vec<Value> = step
                .tool_calls
                .iter()
                .enumerate()
                .map(|(i, call)| {
                    json!({
                        "id": format!("call_{turn}_{i}"),
                        "type": "function",
                        "function": { "name": call.name, "arguments": call.arguments.to_string() },
                    })
                })
                .collect();
            message["tool_calls"] = Value::Array(calls);
        }
        let finish = if step.tool_calls.is_empty() {
            "stop"
        } else {
            "tool_calls"
        };
        let usage = step.usage;
        Some(json!({
            "id": format!("chatcmpl-scripted-{turn}"),
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "system_fingerprint": "hearth-scripted",
            "choices": [{ "index": 0, "message": message, "finish_reason": finish }],
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_fixture_parses_and_uses_only_the_agents_tools() {
        let fixture = Fixture::demo();
        assert_eq!(fixture.name, "fix-failing-test");
        let known = ["shell", "read_file", "write_file", "edit_file", "list_dir"];
        for call in fixture.turns.iter().flat_map(|t| &t.tool_calls) {
            assert!(known.contains(&call.name.as_str()), "{}", call.name);
        }
        let last = fixture.turns.last().unwrap();
        assert!(
            last.tool_calls.is_empty() && last.content.is_some(),
            "ends with an answer"
        );
    }

    #[test]
    fn completions_have_openais_shape() {
        let completion = Fixture::demo().completion(1, "m").unwrap();
        assert_eq!(completion["model"], "m");
        assert_eq!(completion["choices"][0]["finish_reason"], "tool_calls");
        let call = &completion["choices"][0]["message"]["tool_calls"][1];
        assert_eq!(call["id"], "call_1_1");
        assert_eq!(
            call["function"]["arguments"],
            r#"{"path":"test_mathutil.py"}"#
        );
        assert_eq!(completion["usage"]["total_tokens"], 726);
        assert!(Fixture::demo().completion(6, "m").is_none());
    }

    #[test]
    fn invalid_fixtures_are_refused_with_the_reason() {
        let usage = r#""usage": {"prompt_tokens": 1, "completion_tokens": 1}"#;
        let cases = [
            (r#"{"name": "n", "turns": []}"#.to_owned(), "has no turns"),
            (
                format!(r#"{{"name": "n", "turns": [{{{usage}}}]}}"#),
                "needs content or tool calls",
            ),
            (
                format!(
                    r#"{{"name": "n", "turns": [{{"tool_calls": [{{"name": "shell", "arguments": "ls"}}], {usage}}}]}}"#
                ),
                "must be a JSON object",
            ),
            (
                r#"{"name": "n", "turns": [], "extra": 1}"#.to_owned(),
                "unknown field `extra`",
            ),
        ];
        for (json, says) in cases {
            let error = Fixture::parse(&json).unwrap_err().to_string();
            assert!(error.contains(says), "{json}: {error}");
        }
        let missing = Fixture::load(Path::new("/nonexistent/fixture.json")).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/fixture.json"));
    }
}
