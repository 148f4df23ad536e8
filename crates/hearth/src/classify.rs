//! The [`ErrorKind`] of hearth's own errors (the sandbox library classifies its own in
//! `hearth_sandbox::error_kind`). `exit::code` and `api::status` turn a kind into an exit code
//! and an HTTP status; nothing else decides either.

use hearth_sandbox::{Classify, ErrorKind};

use crate::sandboxes::SandboxError;
use crate::store::{SnapshotNameError, StatusError, StoreError};
use crate::supervisor::SupervisorError;
use crate::tasks::params::InvalidParam;
use crate::tasks::queue::QueueError;

impl Classify for SandboxError {
    fn kind(&self) -> ErrorKind {
        match self {
            SandboxError::NotFound(_) | SandboxError::SnapshotNotFound(_) => ErrorKind::NotFound,
            SandboxError::AlreadyExists(_) | SandboxError::SnapshotExists(_) => ErrorKind::Exists,
            SandboxError::Status { source, .. } => source.kind(),
            // The request contradicts what the sandbox or snapshot is; no state change helps.
            SandboxError::NotAVm { .. }
            | SandboxError::WorkspaceUnsupported(_)
            | SandboxError::SnapshotConflict(_)
            | SandboxError::SnapshotDirUnsafe { .. }
            | SandboxError::TemplateUserOnVm { .. } => ErrorKind::BadInput,
            SandboxError::Template(err) => template_kind(err),
            SandboxError::BackendUnavailable(_)
            | SandboxError::BackendMissing { .. }
            | SandboxError::NoStaticGuest => ErrorKind::HostLacks,
            SandboxError::Cleanup { .. } | SandboxError::NoHostIds(_) => ErrorKind::SandboxFailed,
            SandboxError::SnapshotFiles { .. } | SandboxError::Join(_) => ErrorKind::Internal,
            SandboxError::Store(err) => err.kind(),
            SandboxError::Dirs(err) => err.kind(),
            SandboxError::Net(err) => err.kind(),
            SandboxError::Backend(err) => err.kind(),
            SandboxError::Guest(err) => err.kind(),
            SandboxError::Supervisor(err) => err.kind(),
            SandboxError::Workspace(err) => err.kind(),
        }
    }
}

/// A template that is not there is not found; refused content or names are bad input.
pub fn template_kind(err: &hearth_template::TemplateError) -> ErrorKind {
    match err {
        hearth_template::TemplateError::NotFound(_) => ErrorKind::NotFound,
        hearth_template::TemplateError::InUse { .. } => ErrorKind::Conflict,
        err if err.is_bad_input() => ErrorKind::BadInput,
        hearth_template::TemplateError::Source(_) => ErrorKind::HostLacks,
        _ => ErrorKind::Internal,
    }
}

/// A lifecycle step the sandbox's status does not allow (yet, or any more).
impl Classify for StatusError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Conflict
    }
}

impl Classify for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            StoreError::SandboxExists(_) | StoreError::SnapshotExists(_) => ErrorKind::Exists,
            StoreError::IdBlocksExhausted { .. } => ErrorKind::HostLacks,
            StoreError::StateDir { .. }
            | StoreError::Open { .. }
            | StoreError::Migrate { .. }
            | StoreError::Query(_)
            | StoreError::Corrupt { .. } => ErrorKind::Internal,
        }
    }
}

impl Classify for SnapshotNameError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::BadInput
    }
}

/// The seccomp supervisor is part of the sandbox: whatever stops it, the sandbox fails.
impl Classify for SupervisorError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::SandboxFailed
    }
}

impl Classify for InvalidParam {
    fn kind(&self) -> ErrorKind {
        ErrorKind::BadInput
    }
}

impl Classify for QueueError {
    fn kind(&self) -> ErrorKind {
        match self {
            QueueError::NotFound(_) => ErrorKind::NotFound,
            QueueError::AlreadyFinal { .. } | QueueError::NotOurs { .. } => ErrorKind::Conflict,
            // The daemon is going away: this host has no one left to run the task.
            QueueError::ShuttingDown => ErrorKind::HostLacks,
            QueueError::Store(err) => err.kind(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use hearth_sandbox::backend::oci::{OciError, OciRuntimeKind, RuntimeError};
    use hearth_sandbox::backend::{BackendError, BackendKind, FirecrackerError};
    use hearth_sandbox::guest_client::GuestClientError;
    use hearth_sandbox::SandboxId;

    use crate::api::ApiError;
    use crate::store::SandboxStatus;

    /// The one table both front ends follow: kind, exit code, HTTP status and error type.
    const TABLE: [(ErrorKind, u8, u16, &str); 8] = [
        (ErrorKind::BadInput, 3, 422, "invalid_request"),
        (ErrorKind::NotFound, 4, 404, "not_found"),
        (ErrorKind::Exists, 5, 409, "already_exists"),
        (ErrorKind::HostLacks, 6, 503, "unavailable"),
        (ErrorKind::SandboxFailed, 7, 500, "sandbox_failed"),
        (ErrorKind::TooLarge, 8, 413, "too_large"),
        (ErrorKind::Conflict, 9, 409, "conflict"),
        (ErrorKind::Internal, 10, 500, "internal"),
    ];

    #[test]
    fn each_kind_is_one_exit_code_and_one_status() {
        for (kind, code, status, kind_type) in TABLE {
            assert_eq!(crate::exit::code(kind), code, "{kind:?}");
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(crate::api::status(kind), (status, kind_type), "{kind:?}");
        }
        // Every kind is in the table once, and no two share an exit code or a type.
        let kinds: Vec<_> = TABLE.iter().map(|row| row.0).collect();
        assert_eq!(kinds, ErrorKind::ALL);
        let mut codes: Vec<_> = TABLE.iter().map(|row| row.1).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), TABLE.len());
        let mut types: Vec<_> = TABLE.iter().map(|row| row.3).collect();
        types.sort_unstable();
        types.dedup();
        assert_eq!(types.len(), TABLE.len());
    }

    /// The exit code `main` picks and the status the API answers for one error.
    fn both(cli: anyhow::Error, api: ApiError) -> (u8, u16) {
        let code = crate::exit::code_for(&cli);
        (code, api.into_response().status().as_u16())
    }

    fn sandbox(make: impl Fn() -> SandboxError) -> (u8, u16) {
        both(make().into(), ApiError::Sandbox(make()))
    }

    fn id() -> SandboxId {
        SandboxId::parse("ek-unit").unwrap()
    }

    #[test]
    fn an_internal_error_is_exit_10_and_a_500() {
        let corrupt = || {
            SandboxError::Store(StoreError::Corrupt {
                id: "ek-unit".into(),
                problem: "no spec".into(),
            })
        };
        assert_eq!(corrupt().kind(), ErrorKind::Internal);
        assert_eq!(sandbox(corrupt), (10, 500));
        // An error nobody classified is internal too.
        assert_eq!(crate::exit::code_for(&anyhow::anyhow!("surprise")), 10);
    }

    #[test]
    fn a_guest_reply_over_the_limit_is_too_large_on_both() {
        let over = || GuestClientError::TooLarge {
            what: "file",
            limit: 64 << 20,
        };
        assert_eq!(both(over().into(), ApiError::Guest(over())), (8, 413));
        let refused = || GuestClientError::Guest {
            status: 413,
            kind: hearth_proto::ErrorKind::TooLarge,
            message: "over".into(),
        };
        assert_eq!(both(refused().into(), ApiError::Guest(refused())), (8, 413));
    }

    /// Errors the two front ends used to classify differently.
    #[test]
    fn former_disagreements_agree() {
        let runtime = || {
            SandboxError::Backend(BackendError::Oci(OciError::Runtime(
                RuntimeError::NotInstalled {
                    kind: OciRuntimeKind::Runc,
                },
            )))
        };
        assert_eq!(sandbox(runtime), (6, 503), "was 6 and 500");
        let unavailable = || SandboxError::BackendUnavailable(BackendKind::Qemu);
        assert_eq!(sandbox(unavailable), (6, 503), "was 6 and 422");
        let exited = || SandboxError::Status {
            id: id(),
            source: StatusError {
                status: SandboxStatus::Exited,
                action: "run commands",
            },
        };
        assert_eq!(sandbox(exited), (9, 409), "was 7 and 409");
        let busy = || {
            SandboxError::Backend(BackendError::Firecracker(FirecrackerError::SnapshotBusy {
                id: id(),
            }))
        };
        assert_eq!(sandbox(busy), (9, 409), "was 7 and 409");
        let not_a_vm = || SandboxError::NotAVm {
            id: id(),
            backend: BackendKind::Oci,
            action: "be paused",
        };
        assert_eq!(sandbox(not_a_vm), (3, 422), "was 3 and 409");
        let name = || crate::store::SnapshotName::parse("snap-x").unwrap();
        assert_eq!(
            sandbox(|| SandboxError::SnapshotNotFound(name())),
            (4, 404),
            "was 4 and 500"
        );
        assert_eq!(
            sandbox(|| SandboxError::SnapshotExists(name())),
            (5, 409),
            "was 5 and 500"
        );
        let bad_id = SandboxId::parse("Bad_Id").unwrap_err();
        let api = ApiError::BadId {
            raw: "Bad_Id".into(),
            source: bad_id.clone(),
        };
        assert_eq!(both(bad_id.into(), api), (3, 422), "was 3 and 400");
    }
}
