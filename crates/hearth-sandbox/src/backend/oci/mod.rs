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

use crate::backend::{
    blocking, BackendError, BackendKind, GuestEndpoint, LaunchContext, SandboxBackend,
};
use crate::dirs::{RuntimeDirs, SandboxDirs};
use crate::guest_client::GuestClient;
use crate::id::SandboxId;
use crate::process_stamp::ProcessStamp;
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
fn mount_own_sysfs(ctx: &LaunchContext) -> Result<(), OciError> {
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
    /// Where each sandbox's init stamp is (see [`SandboxDirs::init_stamp`]).
    dirs: RuntimeDirs,
}

impl OciBackend {
    pub fn new(runtime: OciRuntime, dirs: RuntimeDirs) -> Self {
        Self { runtime, dirs }
    }

    pub fn runtime(&self) -> &OciRuntime {
        &self.runtime
    }

    fn start_inner(
        &self,
        spec: &SandboxSpec,
        ctx: &LaunchContext,
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
            &ctx.dirs.init_pid_file(),
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
        stamp_init(&ctx.dirs);
        Ok(GuestEndpoint::UnixSocket {
            path: ctx.dirs.guest_socket(),
        })
    }
}

/// Records the container init's stamp for [`SandboxBackend::is_running`]. Without it (a
/// failure here is only logged) the check asks the runtime, as before.
fn stamp_init(dirs: &SandboxDirs) {
    let stamped = std::fs::read_to_string(dirs.init_pid_file())
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .ok_or_else(|| std::io::Error::other("no pid in the runtime's pid file"))
        .and_then(ProcessStamp::of)
        .and_then(|stamp| stamp.write_new(&dirs.init_stamp()));
    if let Err(err) = stamped {
        tracing::warn!(dir = %dirs.init_stamp().display(), %err, "cannot record the init's stamp");
    }
}

/// How long a new container's guest gets to answer its first health check.
const GUEST_READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[async_trait::async_trait]
impl SandboxBackend for OciBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Oci
    }

    fn describe(&self) -> String {
        self.runtime
            .version()
            .unwrap_or_else(|| self.runtime.kind.to_string())
    }

    async fn start(
        &self,
        spec: &SandboxSpec,
        ctx: &LaunchContext,
    ) -> Result<GuestEndpoint, BackendError> {
        let (this, spec, ctx) = (self.clone(), spec.clone(), ctx.clone());
        blocking(move || this.start_inner(&spec, &ctx)).await
    }

    async fn wait_ready(
        &self,
        id: &SandboxId,
        dirs: &SandboxDirs,
        client: &GuestClient,
    ) -> Result<(), BackendError> {
        client
            .wait_ready(GUEST_READY_TIMEOUT)
            .await
            .map_err(|source| BackendError::GuestNotReady {
                id: id.clone(),
                source,
                log: guest_log_tail(dirs),
            })?;
        Ok(())
    }

    async fn remove(&self, id: &SandboxId) -> Result<(), BackendError> {
        let (runtime, id) = (self.runtime.clone(), id.clone());
        blocking(move || {
            runtime
                .stop_and_delete(&id.names().container)
                .map_err(OciError::from)?;
            // The runtime removes child cgroups with its own; this catches a start that
            // failed between making the workload cgroup and making the container.
            workload_cgroup::remove(&id);
            Ok::<_, OciError>(())
        })
        .await
    }

    /// The init recorded at start still running means the container runs (hearth never
    /// pauses one), without the runtime call (`runc state`: about 7 ms, on every exec and
    /// file operation). Anything else is the runtime's to say.
    async fn is_running(&self, id: &SandboxId) -> Result<bool, BackendError> {
        if let Ok(Some(stamp)) = ProcessStamp::read(&self.dirs.sandbox(id).init_stamp()) {
            if stamp.is_alive() {
                return Ok(true);
            }
        }
        let (runtime, container) = (self.runtime.clone(), id.names().container);
        let status = blocking(move || runtime.status(&container).map_err(OciError::from)).await?;
        Ok(status.as_deref() == Some("running"))
    }

    async fn list(&self) -> Result<Vec<String>, BackendError> {
        let runtime = self.runtime.clone();
        blocking(move || runtime.list().map_err(OciError::from)).await
    }
}

/// The last lines hearth-guest and the runtime printed, to explain why a sandbox did not come
/// up.
fn guest_log_tail(dirs: &SandboxDirs) -> String {
    let text = std::fs::read_to_string(dirs.guest_log()).unwrap_or_default();
    let runtime = std::fs::read_to_string(dirs.runtime_log()).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .chain(runtime.lines())
        .filter(|l| !l.trim().is_empty())
        .collect();
    match lines.len() {
        0 => String::new(),
        n => format!(
            " (last output: {})",
            lines[n.saturating_sub(3)..].join(" | ")
        ),
    }
}
