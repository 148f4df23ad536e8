//! The QEMU backend: each sandbox is a QEMU VM booting the guest image, `hearth-guest` as init.
//!
//! `start` prepares `<sandbox dir>/vm/` (config drive, sockets), bridges a tap into the
//! sandbox's namespace ([`crate::net::tap`]), spawns QEMU inside that namespace in a session of
//! its own, records `PID STARTTIME` in `vmm.pid`, and returns once QEMU answers on QMP (so
//! QEMU itself is up; the guest is still booting). The host reaches the guest through the
//! sandbox's usual guest socket, served by the [`relay`](crate::backend::vm::relay) that the
//! per-sandbox supervisor runs: `Upstream::Http2Mux { socket: dirs.vm_serial_socket() }` with
//! virtio-serial, or a vsock connector when `/dev/vhost-vsock` exists.
//!
//! `remove` asks QEMU to quit over QMP, makes sure through a pidfd that it is gone, and removes
//! the VM directory; everything it finds already gone is fine. Pause and resume are QMP `stop`
//! and `cont`; snapshots are QEMU migration streams into a file (see [`snapshot`]).

pub mod argv;
mod control;
mod launch;
pub mod process;
pub mod qmp;
pub mod snapshot;
pub mod support;
pub mod vsock;

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use argv::{build_argv, Accel, Channel, Nic, QemuPlan, PC_KERNEL_ARGS, TCG_ACCEL};
pub use process::VmmStamp;
pub use qmp::{Qmp, QmpError, VmStatus};
pub use snapshot::SnapshotManifest;
pub use support::{KvmState, QemuSupport, DEFAULT_BINARY};
pub use vsock::VhostVsockConnector;

use crate::backend::vm::{
    self, ConfigDriveError, GuestTransport, KernelCmdline, GUEST_SERIAL_PORT_NAME, GUEST_VSOCK_PORT,
};
use crate::backend::LaunchContext;
use crate::dirs::{DirsError, RuntimeDirs, SandboxDirs};
use crate::guest_client::GuestClient;
use crate::id::SandboxId;
use crate::net::{NetError, TapError};
use crate::pidfd::{self, PidfdError};
use crate::spec::SandboxSpec;

/// How long QEMU may take to come up to QMP (not the guest: see [`QemuBackend::wait_guest_ready`]).
pub const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `remove` waits for QEMU to leave after QMP `quit` before it kills it.
const QUIT_GRACE: Duration = Duration::from_secs(3);
const KILL_WAIT: Duration = Duration::from_secs(10);
/// Longest path `bind(2)` accepts for a Unix socket.
const MAX_SOCKET_PATH: usize = 107;

/// Errors of the QEMU backend.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("cannot run {binary}: {source}")]
    Spawn { binary: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    File { path: PathBuf, source: io::Error },
    #[error(
        "the QEMU backend needs a guest image (kernel, initrd, rootfs); run `hearth image build`"
    )]
    NoImage,
    #[error("guest image file {path} is missing")]
    ImageFileMissing { path: PathBuf },
    #[error("workspace {path} is not a directory")]
    WorkspaceNotDir { path: PathBuf },
    #[error("socket path {path} is {len} bytes, over the {MAX_SOCKET_PATH}-byte limit of Unix sockets; choose a shorter --runtime-dir")]
    SocketPathTooLong { path: PathBuf, len: usize },
    #[error(transparent)]
    Dirs(#[from] DirsError),
    #[error(transparent)]
    ConfigDrive(#[from] ConfigDriveError),
    #[error(transparent)]
    Netns(#[from] NetError),
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error(transparent)]
    Pidfd(#[from] PidfdError),
    #[error(transparent)]
    Cgroup(#[from] crate::vmm_cgroup::VmmCgroupError),
    #[error(transparent)]
    Userns(#[from] crate::userns::UsernsError),
    /// `tail`: the end of QEMU's own log (the VM directory is removed with the failed VM).
    #[error("QEMU for sandbox {id} exited during startup ({status}){}", tail_hint(.tail))]
    Exited {
        id: SandboxId,
        status: String,
        tail: String,
    },
    #[error("QEMU for sandbox {id} did not answer on QMP within {waited:?}{}", tail_hint(.tail))]
    StartTimeout {
        id: SandboxId,
        waited: Duration,
        tail: String,
    },
    /// `tail`: the end of the guest's serial console.
    #[error("the VM of sandbox {id} stopped while its guest was booting{}", tail_hint(.tail))]
    DiedBooting { id: SandboxId, tail: String },
    #[error("the guest of sandbox {id} was not ready within {waited:?}{}", tail_hint(.tail))]
    BootTimeout {
        id: SandboxId,
        waited: Duration,
        tail: String,
    },
    #[error("sandbox {id} has no running VM")]
    NotRunning { id: SandboxId },
    #[error("snapshot directory {path} already exists")]
    SnapshotExists { path: PathBuf },
    #[error("unreadable snapshot manifest {path}: {source}")]
    SnapshotManifest {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("snapshot {path} was taken with {field} {snapshot}, but this sandbox would have {here}; create it with the same settings (and the same QEMU)")]
    SnapshotMismatch {
        path: PathBuf,
        field: &'static str,
        snapshot: String,
        here: String,
    },
    #[error("migration of sandbox {id} {direction} ended {status}{}", .error.as_deref().map(|e| format!(": {e}")).unwrap_or_default())]
    Migration {
        id: SandboxId,
        direction: &'static str,
        status: String,
        error: Option<String>,
    },
}

fn tail_hint(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!(": {tail}")
    }
}

/// What the backend runs: which QEMU, how to accelerate, how to reach the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuConfig {
    pub binary: PathBuf,
    pub accel: Accel,
    /// vhost-vsock for the guest channel (else virtio-serial).
    pub vsock: bool,
    /// Pass QEMU's own `-sandbox on,...` seccomp filter.
    pub qemu_sandbox: bool,
    pub version: String,
}

impl QemuConfig {
    /// The configuration [`QemuSupport::probe`] found best for this host.
    pub fn from_support(support: &QemuSupport) -> Self {
        Self {
            binary: support.binary.clone(),
            accel: support.accel,
            vsock: support.vhost_vsock,
            qemu_sandbox: support.seccomp,
            version: support.version.clone(),
        }
    }
}

/// Runs sandboxes as QEMU VMs.
#[derive(Debug, Clone)]
pub struct QemuBackend {
    config: QemuConfig,
    dirs: RuntimeDirs,
    /// Where the guest images its VMs boot are.
    images: std::sync::Arc<dyn vm::GuestImageSource>,
}

impl QemuBackend {
    pub fn new(
        config: QemuConfig,
        dirs: RuntimeDirs,
        images: std::sync::Arc<dyn vm::GuestImageSource>,
    ) -> Self {
        Self {
            config,
            dirs,
            images,
        }
    }

    pub fn config(&self) -> &QemuConfig {
        &self.config
    }

    /// How QEMU will be run for `spec` in `ctx`: every path and flag resolved. Pure, apart
    /// from reading nothing: the lead's end-to-end tests can print or check it.
    pub fn plan(&self, spec: &SandboxSpec, ctx: &LaunchContext) -> Result<QemuPlan, QemuError> {
        let image = ctx.vm_image.clone().ok_or(QemuError::NoImage)?;
        let id = spec.id.as_str();
        let dirs = &ctx.dirs;
        let (transport, channel) = if self.config.vsock {
            let guest_cid = argv::cid_for(id);
            (
                GuestTransport::Vsock {
                    port: GUEST_VSOCK_PORT,
                },
                Channel::Vsock { guest_cid },
            )
        } else {
            (
                GuestTransport::VirtioSerial {
                    port_name: GUEST_SERIAL_PORT_NAME.to_owned(),
                },
                Channel::VirtioSerial {
                    socket: dirs.vm_serial_socket(),
                    port_name: GUEST_SERIAL_PORT_NAME.to_owned(),
                },
            )
        };
        // What the workspace is (a private filesystem, or a view of the user's directory) was
        // settled on the host before the VM starts: the VM shares the mount point.
        let workspace = Some(dirs.workspace());
        let mib = spec.limits.memory.0.div_ceil(1024 * 1024);
        // Bounded to 1024 by the spec's validation, so the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let vcpus = spec.limits.cpus.0.ceil().max(1.0) as u32;
        Ok(QemuPlan {
            name: format!("hearth-{id}"),
            accel: self.config.accel,
            memory_mib: mib,
            vcpus,
            cmdline: KernelCmdline {
                transport,
                root: "/dev/vda".to_owned(),
                net: ctx.net,
                config: Some("/dev/vdb".to_owned()),
                workspace_9p: workspace.is_some(),
            },
            image,
            config_drive: Some(dirs.vm_config_img()),
            nic: ctx.net.map(|_| Nic {
                tap: crate::net::tap::TAP_IF.to_owned(),
                mac: argv::mac_for(id),
                fd: None,
            }),
            workspace,
            channel,
            qmp_socket: dirs.vm_qmp_socket(),
            console_log: dirs.vm_console_log(),
            qemu_sandbox: self.config.qemu_sandbox,
            passed: None,
        })
    }

    /// QEMU's whole command line for `spec` in `ctx` (without the binary).
    pub fn argv(
        &self,
        spec: &SandboxSpec,
        ctx: &LaunchContext,
    ) -> Result<Vec<OsString>, QemuError> {
        Ok(build_argv(&self.plan(spec, ctx)?))
    }

    /// What the sandbox's relay forwards to (run it with `vm::relay::serve` on
    /// `dirs.guest_socket()`): the virtio-serial chardev, or the guest's vsock port.
    pub fn upstream(&self, id: &SandboxId, dirs: &SandboxDirs) -> vm::relay::Upstream {
        if self.config.vsock {
            vm::relay::Upstream::PerConnection(std::sync::Arc::new(VhostVsockConnector {
                cid: argv::cid_for(id.as_str()),
                port: GUEST_VSOCK_PORT,
            }))
        } else {
            vm::relay::Upstream::Http2Mux {
                socket: dirs.vm_serial_socket(),
            }
        }
    }

    /// Pauses every vCPU of the sandbox's VM.
    pub fn pause(&self, id: &SandboxId) -> Result<(), QemuError> {
        self.qmp(id)?.stop()?;
        Ok(())
    }

    /// Resumes a paused VM.
    pub fn resume(&self, id: &SandboxId) -> Result<(), QemuError> {
        self.qmp(id)?.cont()?;
        Ok(())
    }

    /// QEMU's view of the VM (`running`, `paused`, ...).
    pub fn status(&self, id: &SandboxId) -> Result<VmStatus, QemuError> {
        Ok(self.qmp(id)?.query_status()?)
    }

    /// Waits until `client` (the sandbox's guest socket, served by the relay) answers health,
    /// while watching QEMU: a VM that stops or a guest not ready within `timeout` removes the
    /// sandbox's VM and returns an error carrying the end of the guest's console.
    pub async fn wait_guest_ready(
        &self,
        id: &SandboxId,
        client: &GuestClient,
        timeout: Duration,
    ) -> Result<hearth_proto::Health, QemuError> {
        let dirs = self.dirs.sandbox(id);
        let waited = vm::boot_wait::wait_for_guest(client, timeout, || {
            self.vmm(&dirs).is_some_and(|s| s.is_alive())
        })
        .await;
        let console = dirs.vm_console_log();
        let err = match waited {
            vm::boot_wait::BootWait::Ready(health) => return Ok(health),
            vm::boot_wait::BootWait::Died => QemuError::DiedBooting {
                id: id.clone(),
                tail: process::log_tail(&console),
            },
            vm::boot_wait::BootWait::TimedOut(waited) => QemuError::BootTimeout {
                id: id.clone(),
                waited,
                tail: process::log_tail(&console),
            },
        };
        // The VM directory (console included) goes; the console's tail is in the error.
        let (this, gone) = (self.clone(), id.clone());
        match tokio::task::spawn_blocking(move || this.remove_vm(&gone)).await {
            Ok(Ok(())) => {}
            Ok(Err(cleanup)) => {
                tracing::warn!(%id, error = %cleanup, "cleanup after a failed boot")
            }
            Err(join) => tracing::warn!(%id, error = %join, "cleanup after a failed boot"),
        }
        Err(err)
    }

    fn qmp(&self, id: &SandboxId) -> Result<Qmp, QemuError> {
        let dirs = self.dirs.sandbox(id);
        if !self.vmm(&dirs).is_some_and(|s| s.is_alive()) {
            return Err(QemuError::NotRunning { id: id.clone() });
        }
        Ok(Qmp::connect(&dirs.vm_qmp_socket())?)
    }

    pub(crate) fn vmm(&self, dirs: &SandboxDirs) -> Option<VmmStamp> {
        // Unreadable counts as no VMM: removal then goes on with the rest of the cleanup.
        VmmStamp::read(&dirs.vm_pid_file()).ok().flatten()
    }

    /// Quits QEMU (QMP, then SIGKILL through a pidfd) and removes the VM directory. Whatever is
    /// already gone is fine.
    pub(crate) fn remove_vm(&self, id: &SandboxId) -> Result<(), QemuError> {
        let dirs = self.dirs.sandbox(id);
        if let Some(stamp) = self.vmm(&dirs).filter(VmmStamp::is_alive) {
            let pid = i32::try_from(stamp.pid).unwrap_or(i32::MAX);
            let pidfd = pidfd::Pidfd::open(pid)?;
            if let Some(pidfd) = pidfd {
                // A stamp check then a pidfd: the pidfd names the process we checked, unless
                // it exited and the pid was reused in between; re-check to close that window.
                if stamp.is_alive() {
                    let quit = Qmp::connect(&dirs.vm_qmp_socket()).and_then(|mut q| q.quit());
                    let gone = quit.is_ok() && pidfd.wait(QUIT_GRACE)?;
                    if !gone {
                        pidfd.signal(libc::SIGKILL)?;
                        if !pidfd.wait(KILL_WAIT)? {
                            return Err(PidfdError::StillRunning {
                                pid,
                                waited: KILL_WAIT,
                            }
                            .into());
                        }
                    }
                }
            }
        }
        // QEMU is gone (or never started): its cgroup can go, then its directory.
        crate::vmm_cgroup::VmmCgroup::remove(id)?;
        remove_dir(&dirs.vm_dir())
    }
}

fn remove_dir(path: &Path) -> Result<(), QemuError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(QemuError::File {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests;
