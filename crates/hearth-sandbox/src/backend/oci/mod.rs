//! The OCI backend: each sandbox is a container run by runc, crun or runsc.
//!
//! hearth writes a bundle (see [`bundle`]) and runs it detached under hearth's private runtime
//! state root; the container's PID 1 is `hearth-guest`, which keeps running after the CLI exits.
//! Removal is `delete --force`, which kills every process and removes the cgroup.

pub mod bundle;
pub mod runtime;
pub mod workload_cgroup;

pub use bundle::BundleError;
pub use runtime::{OciRuntime, OciRuntimeKind, RuntimeError};

use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use crate::backend::{BackendError, BackendKind, GuestEndpoint, LaunchContext, SandboxBackend};
use crate::id::SandboxId;
use crate::spec::SandboxSpec;

/// Errors of the OCI backend.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("cannot {op} the guest socket {path}: {source}")]
    GuestSocket {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot mount the sandbox's sysfs on {path}: {source}")]
    Sysfs {
        path: PathBuf,
        source: nix::errno::Errno,
    },
    #[error(transparent)]
    Dirs(#[from] crate::dirs::DirsError),
    #[error(transparent)]
    Netns(#[from] crate::net::netns::NetError),
    #[error(transparent)]
    WorkloadCgroup(#[from] workload_cgroup::WorkloadCgroupError),
}

/// Binds the host end of the guest channel (mode 0600, in the sandbox's own dir, which the
/// sandbox cannot write), to be handed to PID 1.
fn bind_guest_socket(path: &Path) -> Result<UnixListener, OciError> {
    let socket_err = |op| {
        move |source| OciError::GuestSocket {
            op,
            path: path.to_owned(),
            source,
        }
    };
    let listener = UnixListener::bind(path).map_err(socket_err("bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(socket_err("chmod"))?;
    Ok(listener)
}

/// Mounts a sysfs made in the sandbox's network namespace, so `/sys/class/net` shows its own
/// links, on `dirs.sysfs()` for the bundle to bind read-only.
fn mount_own_sysfs(ctx: &LaunchContext<'_>) -> Result<(), OciError> {
    let target = ctx.dirs.create_sysfs_mount_point()?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    crate::net::netns::in_netns(&ctx.netns_path, |_| {
        mount(Some("sysfs"), &target, Some("sysfs"), flags, None::<&str>).map_err(|source| {
            OciError::Sysfs {
                path: target.clone(),
                source,
            }
        })
    })
}

/// Runs sandboxes as OCI containers.
#[derive(Debug, Clone)]
pub struct OciBackend {
    runtime: OciRuntime,
}

impl OciBackend {
    pub fn new(runtime: OciRuntime) -> Self {
        Self { runtime }
    }

    pub fn runtime(&self) -> &OciRuntime {
        &self.runtime
    }

    fn start_inner(
        &self,
        spec: &SandboxSpec,
        ctx: &LaunchContext<'_>,
    ) -> Result<GuestEndpoint, OciError> {
        if ctx.ids.is_some() {
            mount_own_sysfs(ctx)?;
        }
        let listener = bind_guest_socket(&ctx.dirs.guest_socket())?;
        let workload_cgroup = workload_cgroup::create(&spec.id, spec.limits.memory.0)?;
        bundle::write_bundle(spec, ctx, workload_cgroup.is_some())?;
        let container = spec.id.names().container;
        let mut fds = vec![listener.as_fd()];
        fds.extend(workload_cgroup.as_ref().map(AsFd::as_fd));
        let started = self.runtime.run_detached(
            &container,
            &ctx.dirs.bundle(),
            &ctx.dirs.runtime_log(),
            &ctx.dirs.guest_log(),
            &fds,
        );
        // PID 1 holds them now; hearth only ever connects.
        drop(fds);
        drop(listener);
        drop(workload_cgroup);
        if let Err(err) = started {
            // runc removes what it made when `run` fails early, but not always after the
            // container exists (e.g. a failing start hook): make sure.
            if let Err(cleanup) = self.runtime.delete_force(&container) {
                tracing::warn!(%container, error = %cleanup, "cleanup after failed start");
            }
            workload_cgroup::remove(&spec.id);
            return Err(err.into());
        }
        Ok(GuestEndpoint::UnixSocket {
            path: ctx.dirs.guest_socket(),
        })
    }
}

impl SandboxBackend for OciBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Oci
    }

    fn describe(&self) -> String {
        self.runtime
            .version()
            .unwrap_or_else(|| self.runtime.kind.to_string())
    }

    fn start(
        &self,
        spec: &SandboxSpec,
        ctx: &LaunchContext<'_>,
    ) -> Result<GuestEndpoint, BackendError> {
        Ok(self.start_inner(spec, ctx)?)
    }

    fn remove(&self, id: &SandboxId) -> Result<(), BackendError> {
        self.runtime
            .stop_and_delete(&id.names().container)
            .map_err(OciError::from)?;
        // The runtime removes child cgroups with its own; this catches a start that failed
        // between making the workload cgroup and making the container.
        workload_cgroup::remove(id);
        Ok(())
    }

    fn is_running(&self, id: &SandboxId) -> Result<bool, BackendError> {
        let status = self
            .runtime
            .status(&id.names().container)
            .map_err(OciError::from)?;
        Ok(status.as_deref() == Some("running"))
    }

    fn list(&self) -> Result<Vec<String>, BackendError> {
        Ok(self.runtime.list().map_err(OciError::from)?)
    }
}
