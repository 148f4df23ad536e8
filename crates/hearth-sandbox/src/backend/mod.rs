//! Sandbox backends: the one trait every isolation technology implements.
//!
//! The OCI, Firecracker and QEMU backends implement it and hand back the same kind of
//! [`GuestEndpoint`], so everything above this layer (exec, files, tasks) is
//! backend-agnostic. VM backends reach the guest through [`vm::relay`], which serves the usual
//! guest socket on the host.

pub mod firecracker;
pub mod oci;
pub mod qemu;
pub mod vm;

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::dirs::SandboxDirs;
use crate::id::SandboxId;
use crate::spec::SandboxSpec;

pub use firecracker::{FirecrackerBackend, FirecrackerError};
pub use oci::{OciBackend, OciError, OciRuntime, OciRuntimeKind};
pub use qemu::{QemuBackend, QemuError};
pub use vm::{GuestNet, VmImagePaths};

/// Which isolation technology runs a sandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Oci,
    Firecracker,
    Qemu,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Oci => "oci",
            Self::Firecracker => "firecracker",
            Self::Qemu => "qemu",
        })
    }
}

/// How the host reaches `hearth-guest` inside a running sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GuestEndpoint {
    /// A Unix socket on the host, bind-mounted into the sandbox.
    UnixSocket { path: PathBuf },
}

/// What the backend needs besides the user's spec: where things live on the host.
#[derive(Debug, Clone)]
pub struct LaunchContext<'a> {
    pub dirs: &'a SandboxDirs,
    /// The network namespace the sandbox joins (made by hearth, see `net::netns`).
    pub netns_path: PathBuf,
    /// The `hearth-guest` binary to run as the sandbox's PID 1.
    pub guest_binary: PathBuf,
    /// hearth's DNS resolver for this sandbox (the host side of its link), if it has a link.
    pub resolver: Option<std::net::SocketAddr>,
    /// The guest's address on the sandbox link (VM backends; `None` without a link).
    pub net: Option<GuestNet>,
    /// The guest image a VM boots (VM backends only).
    pub vm_image: Option<VmImagePaths>,
    /// The host ids the sandbox's root maps to (OCI: its user namespace); `None` runs it as
    /// host root, as sandboxes made before hearth had user namespaces did.
    pub ids: Option<crate::userns::HostIds>,
}

/// Errors of any backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error(transparent)]
    Firecracker(#[from] FirecrackerError),
    #[error(transparent)]
    Qemu(#[from] QemuError),
}

/// A technology that can start and remove isolated sandboxes.
///
/// `start` must leave nothing of its own behind when it fails; `remove` must succeed for a
/// sandbox that is already partly or wholly gone, so cleanup after a crash can call it blindly.
pub trait SandboxBackend: fmt::Debug + Send + Sync {
    fn kind(&self) -> BackendKind;

    /// A short human description, e.g. `runc 1.1.5`.
    fn describe(&self) -> String;

    /// Starts the sandbox; returns once the backend has launched it (the guest may still be
    /// coming up: callers wait on the endpoint's health check).
    fn start(
        &self,
        spec: &SandboxSpec,
        ctx: &LaunchContext<'_>,
    ) -> Result<GuestEndpoint, BackendError>;

    /// Stops and removes the sandbox's runtime objects (container, cgroup, processes).
    fn remove(&self, id: &SandboxId) -> Result<(), BackendError>;

    /// Whether the backend still has a live sandbox of this id.
    fn is_running(&self, id: &SandboxId) -> Result<bool, BackendError>;

    /// Ids of every sandbox the backend currently holds (for reconciliation).
    fn list(&self) -> Result<Vec<String>, BackendError>;
}
