//! Exit codes: each kind of failure has its own, so scripts can tell them apart. The codes 3 to
//! 10 are the [`ErrorKind`]s, picked by [`code`] alone; the API maps the same kinds to HTTP
//! statuses (`api::status`), so both front ends report an error as the same kind.
//!
//! | code | meaning |
//! |------|---------|
//! | 0    | success |
//! | 2    | bad command line (clap) |
//! | 3    | bad input: an invalid id, limit, path or file, an action the sandbox cannot do |
//! | 4    | no such sandbox or snapshot, or no such file inside a sandbox |
//! | 5    | the sandbox or snapshot already exists |
//! | 6    | the host lacks something (OCI runtime, guest binary or image, tools, permissions) |
//! | 7    | the sandbox failed (runtime error, guest not ready or gone) |
//! | 8    | a file or output limit was exceeded |
//! | 9    | the sandbox's state forbids it (exited, being created, a snapshot under way) |
//! | 10   | internal error (store, I/O) |
//! | 141  | stdout or stderr was closed (`hearth ... \| head`): the command stopped quietly |
//!
//! `hearth sandbox exec` exits with the command's own code; 128+N when it died of signal N,
//! 124 when its timeout fired and 127 when the command does not exist.
//!
//! A closed output is 141, what a shell reports for a command SIGPIPE killed, and not 0: the
//! output was cut short, and a `hearth run` it cancelled did not succeed. hearth itself ignores
//! SIGPIPE (see `cli/output.rs`), so it cleans up before it exits.

pub use hearth_sandbox::{Classify, ErrorKind};

use hearth_image::kernel::KernelError;
use hearth_image::ImageError;
use hearth_sandbox::guest_client::GuestClientError;

use crate::sandboxes::SandboxError;
use crate::store::{SnapshotNameError, StoreError};

pub const TIMED_OUT: u8 = 124;
pub const COMMAND_NOT_FOUND: u8 = 127;
/// 128 + SIGPIPE.
pub const OUTPUT_CLOSED: u8 = 141;

/// The exit code of each kind of error: the only place the CLI picks one (the API's
/// counterpart is `api::status`).
pub fn code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::BadInput => 3,
        ErrorKind::NotFound => 4,
        ErrorKind::Exists => 5,
        ErrorKind::HostLacks => 6,
        ErrorKind::SandboxFailed => 7,
        ErrorKind::TooLarge => 8,
        ErrorKind::Conflict => 9,
        ErrorKind::Internal => 10,
    }
}

/// An error the CLI reports: the message and the kind chosen where it was understood.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    pub message: String,
    pub kind: ErrorKind,
}

impl CliError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind,
        }
    }
}

impl Classify for CliError {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
}

/// Picks the exit code for an error that reached `main`.
pub fn code_for(err: &anyhow::Error) -> u8 {
    code(kind_of(err))
}

/// The kind of an error that reached `main`: its own, if it is one hearth classifies; anything
/// else is an internal failure.
fn kind_of(err: &anyhow::Error) -> ErrorKind {
    fn of<E: Classify + std::fmt::Display + std::fmt::Debug + Send + Sync + 'static>(
        err: &anyhow::Error,
    ) -> Option<ErrorKind> {
        err.downcast_ref::<E>().map(Classify::kind)
    }
    of::<CliError>(err)
        .or_else(|| of::<SandboxError>(err))
        .or_else(|| of::<GuestClientError>(err))
        .or_else(|| of::<hearth_sandbox::IdError>(err))
        .or_else(|| of::<SnapshotNameError>(err))
        .or_else(|| of::<StoreError>(err))
        .or_else(|| of::<hearth_sandbox::dirs::DirsError>(err))
        .or_else(|| of::<ImageError>(err))
        .or_else(|| of::<KernelError>(err))
        .unwrap_or(ErrorKind::Internal)
}

/// The error and its causes on one line: `a: b: c`, without repeating a cause a message
/// already includes.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}
