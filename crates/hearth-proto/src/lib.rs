//! Messages exchanged between the host (`hearth`) and the in-sandbox daemon (`hearth-guest`).
//!
//! The transport is HTTP/1.1 with JSON bodies over a stream (a Unix socket for OCI sandboxes,
//! vsock or a serial port for microVMs), so these types are the whole contract between both sides.
//! The endpoints themselves are documented in `hearth-guest`'s `server` module; this crate only
//! knows the shapes of the bodies, so it carries no HTTP dependency.
//!
//! Binary data (stdin, stdout and stderr chunks) travels as standard base64 strings inside JSON;
//! in Rust it is a plain `Vec<u8>`.

pub mod bpf;
pub mod query;
pub mod vm;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the wire protocol; bumped on any incompatible change to these types or endpoints.
pub const PROTOCOL_VERSION: u32 = 1;

pub use vm::{
    VmGuestConfig, VmNetIdentity, VmThaw, GUEST_SERIAL_PORT_NAME, GUEST_VSOCK_PORT, VM_CONFIG_SIZE,
};

/// Media type of the streamed exec response: one JSON [`ExecEvent`] per line.
pub const NDJSON: &str = "application/x-ndjson";

/// `POST /v1/exec` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Program and arguments; `argv[0]` is looked up in the child's `PATH` unless it has a `/`.
    pub argv: Vec<String>,
    /// The child's whole environment. The daemon's own environment is never passed through; a
    /// default `PATH` is added only when this map has none.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Absolute working directory; `/` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Bytes written to the child's stdin, which is then closed; stdin is `/dev/null` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "base64_opt")]
    pub stdin: Option<Vec<u8>>,
    /// Wall-clock limit; on expiry the whole process group gets SIGKILL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Keep stdin a pipe after `stdin` is written, for `POST /v1/procs/input` to feed later
    /// (until `POST /v1/procs/close-stdin` or the process ends).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin_open: bool,
}

/// What a template sets for every command the guest starts: its image's environment and
/// working directory. A request's own env entries and cwd win.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecDefaults {
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

impl ExecDefaults {
    /// Fills what `req` leaves unset.
    pub fn apply(&self, req: &mut ExecRequest) {
        for (name, value) in &self.env {
            req.env.entry(name.clone()).or_insert_with(|| value.clone());
        }
        if req.cwd.is_none() {
            req.cwd.clone_from(&self.cwd);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.env.is_empty() && self.cwd.is_none()
    }
}

/// Which output stream a chunk or a truncation belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamName {
    Stdout,
    Stderr,
}

impl StreamName {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamName::Stdout => "stdout",
            StreamName::Stderr => "stderr",
        }
    }
}

/// One line of the `POST /v1/exec` response stream.
///
/// Order: `started`, then `stdout`/`stderr` chunks as they arrive, then at most one `truncated`
/// per stream (sent when that stream closes, carrying the total it discarded), then exactly one
/// `exit` (or `error` if the daemon itself failed mid-run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecEvent {
    Started {
        pid: u32,
    },
    Stdout {
        #[serde(with = "base64_vec")]
        data: Vec<u8>,
    },
    Stderr {
        #[serde(with = "base64_vec")]
        data: Vec<u8>,
    },
    Truncated {
        stream: StreamName,
        dropped_bytes: u64,
    },
    Exit(ExitStatus),
    Error(ErrorInfo),
}

/// How an exec'd process ended. Exactly one of `code` and `signal` is set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The daemon killed the process group because `timeout_ms` expired.
    #[serde(default)]
    pub timed_out: bool,
    /// The process died of SIGKILL and the sandbox cgroup's `oom_kill` counter rose meanwhile.
    #[serde(default)]
    pub oom_killed: bool,
}

impl ExitStatus {
    /// The conventional shell exit code: `code`, or 128 + signal number.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(code), _) => code,
            (None, Some(sig)) => 128 + sig,
            (None, None) => 255,
        }
    }

    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Kind of a filesystem object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// One entry of `GET /v1/dirs`. Symlinks are not followed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// File name; bytes that are not UTF-8 are replaced with U+FFFD.
    pub name: String,
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    /// Modification time, milliseconds since the Unix epoch.
    #[serde(default)]
    pub mtime_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
}

/// `GET /v1/dirs` response, entries sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirListing {
    pub path: String,
    pub entries: Vec<DirEntry>,
}

/// `GET /v1/stat` response. Symlinks are not followed (`lstat`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    pub path: String,
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, milliseconds since the Unix epoch.
    pub mtime_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
}

/// `GET /v1/health` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Always `"ok"` when the daemon answers at all.
    pub status: String,
    pub pid: u32,
    pub uptime_ms: u64,
    /// Exec'd processes still running.
    pub running: usize,
}

/// `GET /v1/version` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub name: String,
    pub version: String,
    pub protocol_version: u32,
}

/// What happened to a watched path (`GET /v1/watch`), in inotify's terms folded as fsnotify
/// (and so E2B's envd) reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchOp {
    Create,
    Write,
    Remove,
    Rename,
    Chmod,
}

/// One line of the `GET /v1/watch` stream: `started` once the watches are in place, then one
/// `event` per change, and `error` if the watch cannot go on (then the stream ends).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WatchEvent {
    Started,
    Event {
        op: WatchOp,
        /// The path relative to the watched directory.
        name: String,
    },
    Error(ErrorInfo),
}

/// `POST /v1/mkdir` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MkdirResult {
    pub path: String,
    /// False when the directory was already there.
    pub created: bool,
}

/// `PUT /v1/files` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResult {
    pub path: String,
    pub size: u64,
}

/// Machine-readable class of an error; clients map these to exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    BadRequest,
    NotFound,
    PermissionDenied,
    AlreadyExists,
    NotADirectory,
    IsADirectory,
    TooLarge,
    NoSpace,
    UnknownEndpoint,
    MethodNotAllowed,
    Io,
    Internal,
    /// Something in the sandbox still uses what the request needs (e.g. the workspace before a
    /// snapshot).
    Busy,
    /// A kind this side does not know yet (a newer peer).
    #[serde(other)]
    Unknown,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::NotFound => "not_found",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::NotADirectory => "not_a_directory",
            ErrorKind::IsADirectory => "is_a_directory",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::NoSpace => "no_space",
            ErrorKind::UnknownEndpoint => "unknown_endpoint",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::Io => "io",
            ErrorKind::Internal => "internal",
            ErrorKind::Busy => "busy",
            ErrorKind::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `error` member of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub kind: ErrorKind,
    pub message: String,
}

/// Body of every non-2xx response: `{"error":{"kind":..,"message":..}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorInfo,
}

impl ErrorBody {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorInfo {
                kind,
                message: message.into(),
            },
        }
    }
}

mod base64_vec {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(data))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

mod base64_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match data {
            Some(bytes) => super::base64_vec::serialize(bytes, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super::base64_vec")] Vec<u8>);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_events_have_the_documented_shape() {
        let line = serde_json::to_string(&ExecEvent::Stdout {
            data: b"hi\n".to_vec(),
        })
        .unwrap();
        assert_eq!(line, r#"{"type":"stdout","data":"aGkK"}"#);

        let exit = ExecEvent::Exit(ExitStatus {
            signal: Some(9),
            timed_out: true,
            ..ExitStatus::default()
        });
        let line = serde_json::to_string(&exit).unwrap();
        assert_eq!(
            line,
            r#"{"type":"exit","signal":9,"timed_out":true,"oom_killed":false}"#
        );
        assert_eq!(serde_json::from_str::<ExecEvent>(&line).unwrap(), exit);

        let parsed: ExecEvent = serde_json::from_str(r#"{"type":"exit","code":3}"#).unwrap();
        assert_eq!(
            parsed,
            ExecEvent::Exit(ExitStatus {
                code: Some(3),
                ..ExitStatus::default()
            })
        );
    }

    #[test]
    fn exec_request_decodes_base64_stdin_and_rejects_unknown_fields() {
        let req: ExecRequest =
            serde_json::from_str(r#"{"argv":["cat"],"stdin":"aGVsbG8="}"#).unwrap();
        assert_eq!(req.stdin.as_deref(), Some(&b"hello"[..]));
        assert!(req.env.is_empty());
        let back = serde_json::to_string(&req).unwrap();
        assert_eq!(back, r#"{"argv":["cat"],"env":{},"stdin":"aGVsbG8="}"#);

        let err = serde_json::from_str::<ExecRequest>(r#"{"argv":["x"],"stdn":""}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("stdn"), "{err}");
        assert!(serde_json::from_str::<ExecRequest>(r#"{"argv":["x"],"stdin":"!!"}"#).is_err());
    }

    #[test]
    fn unknown_error_kinds_from_newer_peers_still_parse() {
        let body: ErrorBody =
            serde_json::from_str(r#"{"error":{"kind":"quota_exceeded","message":"m"}}"#).unwrap();
        assert_eq!(body.error.kind, ErrorKind::Unknown);
        let json = serde_json::to_string(&ErrorBody::new(ErrorKind::NotFound, "x")).unwrap();
        assert_eq!(json, r#"{"error":{"kind":"not_found","message":"x"}}"#);
    }

    #[test]
    fn shell_code_follows_the_128_plus_signal_convention() {
        let st = ExitStatus {
            signal: Some(15),
            ..ExitStatus::default()
        };
        assert_eq!(st.shell_code(), 143);
        assert!(!st.success());
    }
}
