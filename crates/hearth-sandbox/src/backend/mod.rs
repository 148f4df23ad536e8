//! Sandbox backends: the one trait every isolation technology implements.
//!
//! The OCI, Firecracker and QEMU backends implement [`SandboxBackend`] and hand back the same
//! kind of [`GuestEndpoint`], so everything above this layer (exec, files, tasks) is
//! backend-agnostic. What differs between them is said by the trait, not decided by callers
//! matching on a [`BackendKind`]: whether a sandbox gets a host workspace, which image it boots,
//! how long its guest takes and what a failed boot means, where the supervisor relays the guest
//! socket to ([`GuestChannel`]), what a sandbox's end tells ([`ObservedExit`]), and, for
//! microVMs only, the [`VmControl`] capability (pause, resume, save, restore).
//!
//! The trait is async: backends run their blocking work (runtime commands, QMP, process waits)
//! on tokio's blocking threads themselves, so callers never bridge.

pub mod firecracker;
pub mod oci;
pub mod qemu;
pub mod vm;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dirs::SandboxDirs;
use crate::guest_client::{GuestClient, GuestClientError};
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

impl BackendKind {
    pub const ALL: [Self; 3] = [Self::Oci, Self::Firecracker, Self::Qemu];

    /// Whether sandboxes of this kind are microVMs: their `hearth-guest` filters and audits
    /// the workload itself (no runtime filter on the host), and they may offer [`VmControl`].
    pub fn is_vm(self) -> bool {
        self != Self::Oci
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.to_string() == text)
            .ok_or_else(|| format!("{text:?} is not a backend: oci, qemu or firecracker"))
    }
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
    /// A Unix socket on the host: served by `hearth-guest` itself (OCI) or by the sandbox's
    /// supervisor relaying to the VM's guest ([`GuestChannel`]).
    UnixSocket { path: PathBuf },
}

impl GuestEndpoint {
    /// A client for the guest behind this endpoint.
    pub fn client(&self) -> GuestClient {
        match self {
            Self::UnixSocket { path } => GuestClient::new(path.clone()),
        }
    }
}

/// Where a microVM's guest answers, for the sandbox supervisor's relay (which serves the usual
/// guest socket on the host and forwards each connection here). Passed to the supervisor on
/// its command line, so it is serializable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GuestChannel {
    /// QEMU's virtio-serial chardev: one HTTP/2 connection carries every request.
    Http2Mux { socket: PathBuf },
    /// QEMU with vhost-vsock: a vsock stream per client.
    VhostVsock { cid: u32, port: u32 },
    /// Firecracker's vsock Unix socket, with its `CONNECT` handshake per client.
    FirecrackerVsock { uds: PathBuf, port: u32 },
}

/// What the backend needs besides the user's spec: where things live on the host.
#[derive(Debug, Clone)]
pub struct LaunchContext {
    pub dirs: SandboxDirs,
    /// The network namespace the sandbox joins (made by hearth, see `net::netns`).
    pub netns_path: PathBuf,
    /// The `hearth-guest` binary to run as the sandbox's PID 1.
    pub guest_binary: PathBuf,
    /// hearth's DNS resolver for this sandbox (the host side of its link), if it has a link.
    pub resolver: Option<std::net::SocketAddr>,
    /// The guest's address on the sandbox link (VM backends; `None` without a link).
    pub net: Option<GuestNet>,
    /// The guest image a VM boots (VM backends only; see [`SandboxBackend::vm_image`]).
    pub vm_image: Option<VmImagePaths>,
    /// The host ids the sandbox's root maps to (OCI: its user namespace); `None` runs it as
    /// host root, as sandboxes made before hearth had user namespaces did.
    pub ids: Option<crate::userns::HostIds>,
}

/// A saved VM (a snapshot's directory), checked by its backend against this host and the
/// sandbox to restore, before anything of the restore is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedVm {
    pub dir: PathBuf,
    /// The root filesystem the saved kernel has mounted: the restore must boot on it.
    pub rootfs: PathBuf,
    /// Whether the saved VM has a NIC (the restored sandbox must have a network, or not).
    pub nic: bool,
}

/// The versions a saved VM was taken with (recorded with the snapshot; a restore needs both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedVersions {
    pub hearth: String,
    pub vmm: String,
}

/// What a backend can tell about why a sandbox ended, found when its end is observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedExit {
    /// Entries for the sandbox's seccomp audit (Firecracker: the VMM's own filter killed it).
    pub audit: Vec<hearth_seccomp::audit::AuditEntry>,
    /// One line for hearth's log.
    pub summary: String,
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
    #[error(transparent)]
    Guest(#[from] GuestClientError),
    #[error("sandbox {id} did not come up: {source}{log}")]
    GuestNotReady {
        id: SandboxId,
        source: GuestClientError,
        /// The last lines the guest and the runtime printed, as ` (last output: ...)`.
        log: String,
    },
    #[error(transparent)]
    Image(#[from] vm::ImageUnavailable),
    #[error("the guest image the snapshot was taken with ({path}) cannot be used: {source}")]
    SavedImage {
        path: PathBuf,
        source: vm::ImageUnavailable,
    },
    /// The saved VM's files are gone (removed behind hearth's back).
    #[error("no saved VM in {dir}")]
    SavedVmMissing { dir: PathBuf },
    /// The destination of a save exists already.
    #[error("{dest} already exists")]
    SavedVmExists { dest: PathBuf },
    /// The sandbox to restore contradicts the saved VM (its size, say).
    #[error("{0}")]
    SavedVmConflict(String),
    #[error("a blocking task of the backend failed: {0}")]
    Blocking(#[from] tokio::task::JoinError),
}

impl BackendError {
    /// Whether the failure may be the VMM dying under the call (its API or QMP socket dropped,
    /// or it is gone): worth waiting a moment to see it exit, so its end gets recorded.
    pub fn may_mean_vmm_gone(&self) -> bool {
        matches!(
            self,
            Self::Firecracker(FirecrackerError::Api(_) | FirecrackerError::NotRunning { .. })
                | Self::Qemu(QemuError::Qmp(_) | QemuError::NotRunning { .. })
        )
    }
}

/// A technology that can start and remove isolated sandboxes.
///
/// `start` must leave nothing of its own behind when it fails; `remove` must succeed for a
/// sandbox that is already partly or wholly gone, so cleanup after a crash can call it blindly.
#[async_trait::async_trait]
pub trait SandboxBackend: fmt::Debug + Send + Sync {
    fn kind(&self) -> BackendKind;

    /// A short human description, e.g. `runc 1.1.5`.
    fn describe(&self) -> String;

    /// Whether the sandbox gets a `/workspace` from the host (a private filesystem image or a
    /// shared directory, mounted on the sandbox dir's `workspace/` before `start`). Without it
    /// a shared directory can't be offered and files travel through the guest channel only.
    fn mounts_workspace(&self) -> bool {
        true
    }

    /// The guest image a VM boots: the current one, or for a restore the one the saved VM had
    /// mounted. `None` for backends that boot no image.
    fn vm_image(&self, _restore: Option<&SavedVm>) -> Result<Option<VmImagePaths>, BackendError> {
        Ok(None)
    }

    /// Where the supervisor relays the sandbox's guest socket to; `None` where the guest
    /// serves that socket itself.
    fn guest_channel(&self, _id: &SandboxId, _dirs: &SandboxDirs) -> Option<GuestChannel> {
        None
    }

    /// Starts the sandbox; returns once the backend has launched it (the guest may still be
    /// coming up: see [`Self::wait_ready`]).
    async fn start(
        &self,
        spec: &SandboxSpec,
        ctx: &LaunchContext,
    ) -> Result<GuestEndpoint, BackendError>;

    /// Waits until the new sandbox's guest answers its health check, or says why it will not.
    async fn wait_ready(
        &self,
        id: &SandboxId,
        dirs: &SandboxDirs,
        client: &GuestClient,
    ) -> Result<(), BackendError>;

    /// What the backend can tell about how the sandbox ended: asked when it is found gone and
    /// before [`Self::remove`] (which deletes the backend's logs). A sandbox still running, or
    /// one that ended without a story, has nothing to add (`None`).
    async fn observed_exit(&self, _id: &SandboxId) -> Option<ObservedExit> {
        None
    }

    /// Stops and removes the sandbox's runtime objects (container, cgroup, processes).
    async fn remove(&self, id: &SandboxId) -> Result<(), BackendError>;

    /// Whether the backend still has a live sandbox of this id.
    async fn is_running(&self, id: &SandboxId) -> Result<bool, BackendError>;

    /// Ids of every sandbox the backend currently holds (for reconciliation).
    async fn list(&self) -> Result<Vec<String>, BackendError>;

    /// What only microVMs can do; `None` for other backends.
    fn vm(&self) -> Option<&dyn VmControl> {
        None
    }
}

/// The microVM capability: pausing, saving and restoring a running VM.
#[async_trait::async_trait]
pub trait VmControl: Send + Sync {
    /// Pauses every vCPU; returns the VMM's state afterwards (e.g. `paused`).
    async fn pause(&self, id: &SandboxId) -> Result<String, BackendError>;

    /// Resumes a paused VM; returns the VMM's state afterwards.
    async fn resume(&self, id: &SandboxId) -> Result<String, BackendError>;

    /// Saves the running (or paused) VM into the new directory `dest` (0700); the VM goes on
    /// as it was. `guest` reaches its hearth-guest, for backends that must quiesce it first.
    async fn save(
        &self,
        id: &SandboxId,
        dest: &Path,
        guest: &GuestClient,
    ) -> Result<SavedVersions, BackendError>;

    /// Reads and checks the saved VM in `dir` against this host and `spec` (the sandbox to
    /// restore), before anything is made.
    async fn check_saved(&self, dir: &Path, spec: &SandboxSpec) -> Result<SavedVm, BackendError>;

    /// Starts the sandbox by resuming `saved` instead of booting; `ctx.vm_image` must be
    /// [`SandboxBackend::vm_image`] of `saved`.
    async fn restore(
        &self,
        spec: &SandboxSpec,
        ctx: &LaunchContext,
        saved: &SavedVm,
    ) -> Result<GuestEndpoint, BackendError>;
}

/// Runs blocking backend work (runtime commands, QMP, process waits) on tokio's blocking
/// threads.
pub(crate) async fn blocking<T, E>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, BackendError>
where
    T: Send + 'static,
    E: Into<BackendError> + Send + 'static,
{
    tokio::task::spawn_blocking(work).await?.map_err(Into::into)
}
