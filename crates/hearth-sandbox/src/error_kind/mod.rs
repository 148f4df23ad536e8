//! What kind of failure an error is. The front ends turn a kind into an exit code (the CLI) or
//! an HTTP status (the API), each with one match, so that they cannot disagree about an error.
//!
//! Each error type says its own kind ([`Classify`]), and a wrapping error delegates to what it
//! wraps unless its layer knows better (to a sandbox create, any image problem is the host
//! lacking a usable image). Every match here names each variant, so a new variant does not
//! compile until someone has decided its kind.

mod backend;

use hearth_proto::ErrorKind as GuestErrorKind;

use crate::dirs::DirsError;
use crate::guest_client::GuestClientError;
use crate::net::FirewallError;
use crate::workspace::WorkspaceError;
use crate::IdError;

/// The kinds of failure, as a user (or a script) has to react to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is wrong as it stands (an invalid id, limit, path or policy, an action the
    /// target can never do): it fails the same way on any host.
    BadInput,
    /// What the request names does not exist: a sandbox, snapshot, task, a file in a sandbox.
    NotFound,
    /// What the request would create already exists.
    Exists,
    /// The host lacks something the request needs (an OCI runtime, a guest binary or image, a
    /// tool, free addresses or ids): the host's admin can fix it, the caller cannot.
    HostLacks,
    /// The sandbox failed: its runtime, VMM or guest errored, did not come up, or went away.
    SandboxFailed,
    /// A file, request body or output is over a limit.
    TooLarge,
    /// The target's current state forbids the request (a sandbox that exited or is still being
    /// created, a task already finished, a snapshot being taken): the same request is fine for
    /// a target in another state.
    Conflict,
    /// hearth itself failed: its store, its own files, a task it could not finish.
    Internal,
}

impl ErrorKind {
    pub const ALL: [Self; 8] = [
        Self::BadInput,
        Self::NotFound,
        Self::Exists,
        Self::HostLacks,
        Self::SandboxFailed,
        Self::TooLarge,
        Self::Conflict,
        Self::Internal,
    ];
}

/// An error that knows its [`ErrorKind`].
pub trait Classify {
    fn kind(&self) -> ErrorKind;
}

impl Classify for IdError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::BadInput
    }
}

impl Classify for DirsError {
    fn kind(&self) -> ErrorKind {
        match self {
            // The runtime or state directory the user chose is unusable as given.
            DirsError::SocketPathTooLong { .. }
            | DirsError::NotTraversable { .. }
            | DirsError::TooOpen { .. }
            | DirsError::Symlink { .. } => ErrorKind::BadInput,
            DirsError::SandboxExists { .. } => ErrorKind::Exists,
            DirsError::Create { .. }
            | DirsError::Inspect { .. }
            | DirsError::NotADirectory { .. }
            | DirsError::WrongOwner { .. }
            | DirsError::Remove { .. }
            | DirsError::Chmod { .. }
            | DirsError::Mounts(_) => ErrorKind::Internal,
        }
    }
}

impl Classify for WorkspaceError {
    fn kind(&self) -> ErrorKind {
        match self {
            WorkspaceError::NotADirectory { .. } | WorkspaceError::Inspect { .. } => {
                ErrorKind::BadInput
            }
            // No mkfs or mount, no free loop device, a failing mount: the host's to fix.
            WorkspaceError::Spawn { .. } | WorkspaceError::Command { .. } => ErrorKind::HostLacks,
            WorkspaceError::Create { .. } | WorkspaceError::Userns(_) => ErrorKind::SandboxFailed,
        }
    }
}

impl Classify for GuestClientError {
    fn kind(&self) -> ErrorKind {
        match self {
            GuestClientError::TooLarge { .. } => ErrorKind::TooLarge,
            GuestClientError::Guest { kind, .. } | GuestClientError::ExecFailed { kind, .. } => {
                guest_kind(*kind)
            }
            GuestClientError::Connect { .. }
            | GuestClientError::Untrusted { .. }
            | GuestClientError::Http { .. }
            | GuestClientError::UnexpectedStatus { .. }
            | GuestClientError::Decode { .. }
            | GuestClientError::EventTooLong
            | GuestClientError::NoExit
            | GuestClientError::NotReady { .. }
            | GuestClientError::Request { .. } => ErrorKind::SandboxFailed,
        }
    }
}

/// What a refusal by the guest means for the host's caller.
fn guest_kind(kind: GuestErrorKind) -> ErrorKind {
    match kind {
        GuestErrorKind::NotFound => ErrorKind::NotFound,
        GuestErrorKind::TooLarge => ErrorKind::TooLarge,
        // A path of the wrong type or mode, an existing file in the way: the caller's request.
        GuestErrorKind::BadRequest
        | GuestErrorKind::NotADirectory
        | GuestErrorKind::IsADirectory
        | GuestErrorKind::PermissionDenied
        | GuestErrorKind::AlreadyExists => ErrorKind::BadInput,
        GuestErrorKind::Busy => ErrorKind::Conflict,
        GuestErrorKind::NoSpace
        | GuestErrorKind::UnknownEndpoint
        | GuestErrorKind::MethodNotAllowed
        | GuestErrorKind::Io
        | GuestErrorKind::Internal
        | GuestErrorKind::Unknown => ErrorKind::SandboxFailed,
    }
}

impl Classify for FirewallError {
    fn kind(&self) -> ErrorKind {
        match self {
            FirewallError::Policy(_) => ErrorKind::BadInput,
            // Namespaces, links, nftables, sysctls and addresses are the host's: without root,
            // nftables or a free address no sandbox gets a network here.
            FirewallError::Pool(_)
            | FirewallError::Netns(_)
            | FirewallError::Link(_)
            | FirewallError::Nft(_)
            | FirewallError::SlotStore(_)
            | FirewallError::PoolExhausted { .. }
            | FirewallError::SlotOutOfRange { .. }
            | FirewallError::LogGroupRange { .. }
            | FirewallError::PeerMissing { .. }
            | FirewallError::Sysctl { .. }
            | FirewallError::Teardown { .. }
            | FirewallError::Reconcile { .. } => ErrorKind::HostLacks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::oci::{BundleError, OciError, OciRuntimeKind, RuntimeError};
    use crate::backend::BackendError;

    #[test]
    fn a_guest_refusal_is_the_kind_the_guest_named() {
        let refused = |kind| GuestClientError::Guest {
            status: 400,
            kind,
            message: String::new(),
        };
        for (guest, kind) in [
            (GuestErrorKind::NotFound, ErrorKind::NotFound),
            (GuestErrorKind::TooLarge, ErrorKind::TooLarge),
            (GuestErrorKind::IsADirectory, ErrorKind::BadInput),
            (GuestErrorKind::Busy, ErrorKind::Conflict),
            (GuestErrorKind::Io, ErrorKind::SandboxFailed),
            (GuestErrorKind::Unknown, ErrorKind::SandboxFailed),
        ] {
            assert_eq!(refused(guest).kind(), kind, "{guest:?}");
        }
        let cut = GuestClientError::TooLarge {
            what: "output",
            limit: 1,
        };
        assert_eq!(cut.kind(), ErrorKind::TooLarge);
        assert_eq!(GuestClientError::NoExit.kind(), ErrorKind::SandboxFailed);
    }

    #[test]
    fn what_the_host_lacks_is_told_apart_from_what_failed() {
        let oci = |err: OciError| BackendError::Oci(err).kind();
        let missing = RuntimeError::NotInstalled {
            kind: OciRuntimeKind::Runc,
        };
        assert_eq!(oci(missing.into()), ErrorKind::HostLacks);
        let guest = BundleError::GuestBinaryMissing {
            path: "/nonexistent".into(),
        };
        assert_eq!(oci(guest.into()), ErrorKind::HostLacks);
        let failed = RuntimeError::Failed {
            kind: OciRuntimeKind::Runc,
            command: "create",
            message: "boom".into(),
        };
        assert_eq!(oci(failed.into()), ErrorKind::SandboxFailed);
        assert_eq!(
            oci(RuntimeError::UnknownKind("kata".into()).into()),
            ErrorKind::BadInput
        );
    }
}
