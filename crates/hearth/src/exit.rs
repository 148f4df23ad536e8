//! Exit codes: each kind of failure has its own, so scripts can tell them apart.
//!
//! | code | meaning |
//! |------|---------|
//! | 0    | success |
//! | 2    | bad command line (clap) |
//! | 3    | bad input: an invalid id, limit, path or file |
//! | 4    | no such sandbox or snapshot, or no such file inside a sandbox |
//! | 5    | the sandbox or snapshot already exists |
//! | 6    | the host lacks something (OCI runtime, guest binary, permissions) |
//! | 7    | the sandbox failed (runtime error, guest not ready, exited) |
//! | 8    | a file or output limit was exceeded |
//! | 10   | internal error (store, I/O) |
//! | 141  | stdout or stderr was closed (`hearth ... \| head`): the command stopped quietly |
//!
//! `hearth sandbox exec` exits with the command's own code; 128+N when it died of signal N,
//! 124 when its timeout fired and 127 when the command does not exist.
//!
//! A closed output is 141, what a shell reports for a command SIGPIPE killed, and not 0: the
//! output was cut short, and a `hearth run` it cancelled did not succeed. hearth itself ignores
//! SIGPIPE (see `cli/output.rs`), so it cleans up before it exits.

use hearth_net::FirewallError;
use hearth_sandbox::backend::oci::{OciError, RuntimeError};
use hearth_sandbox::backend::qemu::QemuError;
use hearth_sandbox::backend::{BackendError, FirecrackerError};
use hearth_sandbox::dirs::DirsError;
use hearth_sandbox::guest_client::GuestClientError;
use hearth_sandbox::workspace::WorkspaceError;

use crate::sandboxes::SandboxError;

pub const BAD_INPUT: u8 = 3;
pub const NOT_FOUND: u8 = 4;
pub const EXISTS: u8 = 5;
pub const HOST: u8 = 6;
pub const SANDBOX_FAILED: u8 = 7;
pub const TOO_LARGE: u8 = 8;
pub const INTERNAL: u8 = 10;
pub const TIMED_OUT: u8 = 124;
pub const COMMAND_NOT_FOUND: u8 = 127;
/// 128 + SIGPIPE.
pub const OUTPUT_CLOSED: u8 = 141;

/// An error the CLI reports: the message and the exit code chosen where it was understood.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    pub message: String,
    pub code: u8,
}

impl CliError {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code,
        }
    }
}

/// Picks the exit code for an error that reached `main`.
pub fn code_for(err: &anyhow::Error) -> u8 {
    if let Some(cli) = err.downcast_ref::<CliError>() {
        return cli.code;
    }
    if let Some(sandbox) = err.downcast_ref::<SandboxError>() {
        return sandbox_code(sandbox);
    }
    if err.downcast_ref::<hearth_sandbox::IdError>().is_some()
        || err
            .downcast_ref::<crate::store::SnapshotNameError>()
            .is_some()
    {
        return BAD_INPUT;
    }
    if let Some(guest) = err.downcast_ref::<GuestClientError>() {
        return guest_code(guest);
    }
    INTERNAL
}

fn sandbox_code(err: &SandboxError) -> u8 {
    match err {
        SandboxError::NotFound(_) => NOT_FOUND,
        SandboxError::AlreadyExists(_) => EXISTS,
        SandboxError::Status { .. } | SandboxError::Cleanup { .. } => SANDBOX_FAILED,
        SandboxError::Dirs(
            DirsError::SocketPathTooLong { .. }
            | DirsError::TooOpen { .. }
            | DirsError::Symlink { .. },
        ) => BAD_INPUT,
        SandboxError::Dirs(DirsError::SandboxExists { .. }) => EXISTS,
        SandboxError::Backend(BackendError::Oci(OciError::Runtime(
            RuntimeError::NoneFound { .. }
            | RuntimeError::NotInstalled { .. }
            | RuntimeError::UnsupportedCgroups { .. },
        ))) => HOST,
        SandboxError::Backend(BackendError::Oci(OciError::Bundle(bundle))) => {
            use hearth_sandbox::backend::oci::BundleError;
            match bundle {
                BundleError::GuestBinaryMissing { .. } => HOST,
                _ => SANDBOX_FAILED,
            }
        }
        SandboxError::Backend(BackendError::Firecracker(
            FirecrackerError::NoImage | FirecrackerError::ImageFileMissing { .. },
        )) => HOST,
        SandboxError::Backend(BackendError::Firecracker(FirecrackerError::Dirs(
            DirsError::SocketPathTooLong { .. },
        ))) => BAD_INPUT,
        SandboxError::Backend(
            BackendError::Qemu(QemuError::SnapshotMismatch { .. })
            | BackendError::Firecracker(
                FirecrackerError::SnapshotMismatch { .. } | FirecrackerError::NoLaunchRecord { .. },
            ),
        ) => BAD_INPUT,
        SandboxError::Backend(
            BackendError::Firecracker(FirecrackerError::VersionUnknown { .. })
            | BackendError::Image(_)
            | BackendError::SavedImage { .. },
        ) => HOST,
        SandboxError::Backend(_) => SANDBOX_FAILED,
        SandboxError::SnapshotNotFound(_) => NOT_FOUND,
        SandboxError::SnapshotExists(_) => EXISTS,
        SandboxError::SnapshotConflict(_) | SandboxError::SnapshotDirUnsafe { .. } => BAD_INPUT,
        SandboxError::SnapshotFiles { .. } => INTERNAL,
        SandboxError::BackendUnavailable(_) | SandboxError::BackendMissing { .. } => HOST,
        SandboxError::NotAVm { .. } | SandboxError::WorkspaceUnsupported(_) => BAD_INPUT,
        SandboxError::Guest(guest) => guest_code(guest),
        SandboxError::Workspace(
            WorkspaceError::NotADirectory { .. } | WorkspaceError::Inspect { .. },
        ) => BAD_INPUT,
        // No mkfs or mount, no free loop device, a failing mount: the host's to fix.
        SandboxError::Workspace(WorkspaceError::Spawn { .. } | WorkspaceError::Command { .. }) => {
            HOST
        }
        SandboxError::Store(crate::store::StoreError::IdBlocksExhausted { .. }) => HOST,
        SandboxError::Workspace(_) | SandboxError::NoHostIds(_) => SANDBOX_FAILED,
        SandboxError::Supervisor(_) => SANDBOX_FAILED,
        SandboxError::Net(FirewallError::Policy(_)) => BAD_INPUT,
        SandboxError::Net(_) => HOST,
        SandboxError::Join(_) => INTERNAL,
        SandboxError::Store(_) | SandboxError::Dirs(_) => INTERNAL,
    }
}

fn guest_code(err: &GuestClientError) -> u8 {
    use hearth_proto::ErrorKind;
    if matches!(err, GuestClientError::TooLarge { .. }) {
        return TOO_LARGE;
    }
    match err.guest_kind() {
        Some(ErrorKind::NotFound) => NOT_FOUND,
        Some(ErrorKind::TooLarge) => TOO_LARGE,
        Some(
            ErrorKind::BadRequest
            | ErrorKind::NotADirectory
            | ErrorKind::IsADirectory
            | ErrorKind::PermissionDenied
            | ErrorKind::AlreadyExists,
        ) => BAD_INPUT,
        _ => SANDBOX_FAILED,
    }
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
