//! envd's `process` and `filesystem` messages in their proto3 JSON form (camelCase names, bytes
//! as base64, enums by name, int64 as strings), written from the descriptors in E2B's SDK.
//! Fields hearth does not know are ignored on input, as proto3 JSON readers do: a newer SDK
//! may add fields, and the ones that change behaviour are refused where they are read.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize};

pub mod b64 {
    use super::*;

    /// Standard or URL-safe, padded or not: proto3 JSON readers accept all four.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        let trimmed = text.trim_end_matches('=');
        let engine = if trimmed.contains(['-', '_']) {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
        } else {
            base64::engine::general_purpose::STANDARD_NO_PAD
        };
        engine.decode(trimmed).map_err(serde::de::Error::custom)
    }
}

// ---- process ----

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProcessConfig {
    pub cmd: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub envs: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// `oneof selector { pid | tag }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProcessSelector {
    pub pid: Option<u32>,
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StartRequest {
    pub process: ProcessConfig,
    pub pty: Option<serde_json::Value>,
    pub tag: Option<String>,
    pub stdin: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SelectRequest {
    pub process: ProcessSelector,
}

/// `oneof input { stdin | pty }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProcessInput {
    #[serde(deserialize_with = "opt_b64")]
    pub stdin: Option<Vec<u8>>,
    #[serde(deserialize_with = "opt_b64")]
    pub pty: Option<Vec<u8>>,
}

fn opt_b64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    #[derive(Deserialize)]
    struct Wrap(#[serde(deserialize_with = "b64::deserialize")] Vec<u8>);
    Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SendInputRequest {
    pub process: ProcessSelector,
    pub input: ProcessInput,
}

/// One message of the client-streaming `StreamInput`: `oneof event { start | data | keepalive }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StreamInputRequest {
    pub start: Option<SelectRequest>,
    pub data: Option<StreamInputData>,
    pub keepalive: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StreamInputData {
    pub input: ProcessInput,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SendSignalRequest {
    pub process: ProcessSelector,
    /// `SIGNAL_SIGTERM`, `SIGNAL_SIGKILL` (or their numbers).
    pub signal: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UpdateRequest {
    pub process: ProcessSelector,
    pub pty: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessInfo {
    pub config: ProcessConfig,
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListResponse {
    pub processes: Vec<ProcessInfo>,
}

/// `EndEvent`: how the process ended, as envd (Go's `ProcessState`) reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndEvent {
    pub exit_code: i32,
    pub exited: bool,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A `ProcessEvent` wrapped as `StartResponse`/`ConnectResponse` (`{"event":{..}}`).
pub fn start_event(pid: u32) -> serde_json::Value {
    serde_json::json!({"event": {"start": {"pid": pid}}})
}

pub fn data_event(stream: &str, data: &[u8]) -> serde_json::Value {
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    serde_json::json!({"event": {"data": {stream: encoded}}})
}

pub fn end_event(end: &EndEvent) -> serde_json::Value {
    serde_json::json!({"event": {"end": end}})
}

pub fn keepalive_event() -> serde_json::Value {
    serde_json::json!({"event": {"keepalive": {}}})
}

// ---- filesystem ----

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PathRequest {
    pub path: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MoveRequest {
    pub source: String,
    pub destination: String,
}

/// `WatchDirRequest` and `CreateWatcherRequest`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WatchRequest {
    pub path: String,
    pub recursive: bool,
    pub include_entry: bool,
    pub allow_network_mounts: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WatcherRequest {
    pub watcher_id: String,
}

/// `FilesystemEvent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FilesystemEvent {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ListDirRequest {
    pub path: String,
    pub depth: u32,
}

/// `EntryInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub path: String,
    /// int64: a string in proto3 JSON.
    pub size: String,
    pub mode: u32,
    pub permissions: String,
    pub owner: String,
    pub group: String,
    pub modified_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
    pub is_symlink: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct EntryResponse {
    pub entry: EntryInfo,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListDirResponse {
    pub entries: Vec<EntryInfo>,
}

/// `{}`: the answer of calls that return nothing, and the request of calls that take nothing
/// (any fields are ignored).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Empty {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_decode_every_base64_flavour_and_ignore_unknown_fields() {
        for text in ["aGk+Pz8=", "aGk+Pz8", "aGk-Pz8"] {
            let raw = format!(r#"{{"process":{{"pid":7}},"input":{{"stdin":"{text}"}},"new":1}}"#);
            let req: SendInputRequest = serde_json::from_str(&raw).unwrap();
            assert_eq!(req.process.pid, Some(7));
            assert_eq!(req.input.stdin.as_deref(), Some(&b"hi>??"[..]), "{text}");
        }
    }

    #[test]
    fn events_have_the_proto3_json_shape() {
        assert_eq!(
            data_event("stdout", b"hi").to_string(),
            r#"{"event":{"data":{"stdout":"aGk="}}}"#
        );
        let end = EndEvent {
            exit_code: 3,
            exited: true,
            status: "exit status 3".into(),
            error: None,
        };
        assert_eq!(
            end_event(&end).to_string(),
            r#"{"event":{"end":{"exitCode":3,"exited":true,"status":"exit status 3"}}}"#
        );
    }
}
