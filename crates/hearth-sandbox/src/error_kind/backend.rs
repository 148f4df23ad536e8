//! The kinds of the backends' errors: what the runtime or VMM lacked, refused, or failed at.

use super::{Classify, ErrorKind};
use crate::backend::oci::{BundleError, OciError, RuntimeError};
use crate::backend::qemu::QemuError;
use crate::backend::{BackendError, FirecrackerError};

impl Classify for BackendError {
    fn kind(&self) -> ErrorKind {
        match self {
            BackendError::Oci(err) => err.kind(),
            BackendError::Firecracker(err) => err.kind(),
            BackendError::Qemu(err) => err.kind(),
            BackendError::Guest(err) => err.kind(),
            BackendError::GuestNotReady { .. } => ErrorKind::SandboxFailed,
            // A VM needs an image: without one (or the one a saved VM had), the host lacks it.
            BackendError::Image(_) | BackendError::SavedImage { .. } => ErrorKind::HostLacks,
            BackendError::SavedVmMissing { .. } => ErrorKind::NotFound,
            BackendError::SavedVmExists { .. } => ErrorKind::Exists,
            BackendError::SavedVmConflict(_) => ErrorKind::BadInput,
            BackendError::Blocking(_) => ErrorKind::Internal,
        }
    }
}

impl Classify for OciError {
    fn kind(&self) -> ErrorKind {
        match self {
            OciError::Bundle(err) => err.kind(),
            OciError::Runtime(err) => err.kind(),
            OciError::Dirs(err) => err.kind(),
            OciError::GuestSocket { .. }
            | OciError::Sysfs { .. }
            | OciError::Netns(_)
            | OciError::WorkloadCgroup(_) => ErrorKind::SandboxFailed,
        }
    }
}

impl Classify for RuntimeError {
    fn kind(&self) -> ErrorKind {
        match self {
            RuntimeError::UnknownKind(_) => ErrorKind::BadInput,
            RuntimeError::NoneFound { .. }
            | RuntimeError::NotInstalled { .. }
            | RuntimeError::UnsupportedCgroups { .. } => ErrorKind::HostLacks,
            RuntimeError::Spawn { .. }
            | RuntimeError::Log { .. }
            | RuntimeError::Failed { .. }
            | RuntimeError::Parse { .. } => ErrorKind::SandboxFailed,
        }
    }
}

impl Classify for BundleError {
    fn kind(&self) -> ErrorKind {
        match self {
            BundleError::GuestBinaryMissing { .. } => ErrorKind::HostLacks,
            // A policy the OCI format cannot say (requests check this before anything is made).
            BundleError::Seccomp(_) => ErrorKind::BadInput,
            BundleError::Write { .. }
            | BundleError::HostPath { .. }
            | BundleError::Spec(_)
            | BundleError::Json(_) => ErrorKind::SandboxFailed,
        }
    }
}

impl Classify for QemuError {
    fn kind(&self) -> ErrorKind {
        match self {
            QemuError::NoImage | QemuError::ImageFileMissing { .. } => ErrorKind::HostLacks,
            QemuError::WorkspaceNotDir { .. }
            | QemuError::SocketPathTooLong { .. }
            // The request asks for a VM other than the one the snapshot holds.
            | QemuError::SnapshotMismatch { .. } => ErrorKind::BadInput,
            QemuError::SnapshotExists { .. } => ErrorKind::Exists,
            QemuError::Dirs(err) => err.kind(),
            QemuError::Spawn { .. }
            | QemuError::File { .. }
            | QemuError::ConfigDrive(_)
            | QemuError::Netns(_)
            | QemuError::Tap(_)
            | QemuError::Qmp(_)
            | QemuError::Pidfd(_)
            | QemuError::Cgroup(_)
            | QemuError::Userns(_)
            | QemuError::Exited { .. }
            | QemuError::StartTimeout { .. }
            | QemuError::DiedBooting { .. }
            | QemuError::BootTimeout { .. }
            | QemuError::NotRunning { .. }
            | QemuError::SnapshotManifest { .. }
            | QemuError::Migration { .. } => ErrorKind::SandboxFailed,
        }
    }
}

impl Classify for FirecrackerError {
    fn kind(&self) -> ErrorKind {
        match self {
            FirecrackerError::NoImage
            | FirecrackerError::ImageFileMissing { .. }
            | FirecrackerError::VersionUnknown { .. } => ErrorKind::HostLacks,
            // A snapshot of another host's Firecracker, or of a sandbox that cannot have one.
            FirecrackerError::SnapshotMismatch { .. } | FirecrackerError::NoLaunchRecord { .. } => {
                ErrorKind::BadInput
            }
            FirecrackerError::SnapshotExists { .. } => ErrorKind::Exists,
            FirecrackerError::SnapshotBusy { .. } => ErrorKind::Conflict,
            FirecrackerError::Dirs(err) => err.kind(),
            FirecrackerError::Api(_)
            | FirecrackerError::Jailer(_)
            | FirecrackerError::Cleanup(_)
            | FirecrackerError::Process(_)
            | FirecrackerError::Seccomp(_)
            | FirecrackerError::Write { .. }
            | FirecrackerError::ConfigDrive(_)
            | FirecrackerError::Tap(_)
            | FirecrackerError::Encode(_)
            | FirecrackerError::Runtime(_)
            | FirecrackerError::VmmExited { .. }
            | FirecrackerError::StartTimeout { .. }
            | FirecrackerError::DiedBooting { .. }
            | FirecrackerError::BootTimeout { .. }
            | FirecrackerError::NotRunning { .. }
            | FirecrackerError::SnapshotFile { .. }
            | FirecrackerError::SnapshotManifest { .. } => ErrorKind::SandboxFailed,
        }
    }
}
