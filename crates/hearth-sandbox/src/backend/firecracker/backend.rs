//! [`FirecrackerBackend`]: the [`SandboxBackend`] that runs each sandbox as a Firecracker VM.

mod control;
mod ready;
mod saved;
mod traits;

pub use control::{SnapshotFiles, VmmExit};
pub use saved::{saved_files, LaunchKind, SnapshotManifest};

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use super::api::{ActionType, ApiCall, ApiRequest, InstanceAction};
use super::boot::{restore_calls, BootPlan};
use super::client::ApiClient;
use super::jailer::JailerConfig;
use super::layout::{self, VmLayout};
use super::process::{MountView, ProcessError, ProcessStamp, VmmCommand};
use super::seccomp::{write_filter_file, VmmFilter};
use super::vsock::{VsockConnector, GUEST_VSOCK_PORT};
use super::FirecrackerError;
use crate::backend::vm::{self, VmImagePaths};
use crate::backend::{GuestEndpoint, LaunchContext};
use crate::dirs::{RuntimeDirs, SandboxDirs};
use crate::id::SandboxId;
use crate::pidfd::Pidfd;
use crate::spec::SandboxSpec;

/// How long `remove` waits for a killed VMM to be gone.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// After an API call fails, how long the VMM may take to finish exiting for the failure to be
/// reported as its exit (a dying VMM closes its sockets before its exit can be waited for).
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Whether Firecracker runs under the jailer.
#[derive(Debug, Clone)]
pub enum LaunchMode {
    /// hearth spawns Firecracker itself, inside the sandbox's netns, as hearth's user.
    Direct,
    /// The official jailer: chroot, its own uid/gid, cgroup, then Firecracker.
    Jailed(JailerConfig),
}

/// Everything the backend needs that does not change per sandbox.
#[derive(Debug, Clone)]
pub struct FirecrackerConfig {
    pub firecracker: PathBuf,
    pub mode: LaunchMode,
    /// The VMM's own seccomp filter (not the sandbox's policy, which the guest applies).
    pub vmm_filter: VmmFilter,
    /// The same runtime root the manager makes sandbox dirs in: `remove`, `list` and the VM
    /// operations find a sandbox's `vm/` from its id through it.
    pub runtime: RuntimeDirs,
    /// From spawning the VMM to `InstanceStart` accepted.
    pub start_timeout: Duration,
}

/// A fresh boot or a restore from a snapshot.
#[derive(Debug, Clone)]
enum Boot {
    Fresh,
    Restore(SnapshotFiles),
}

/// Runs sandboxes as Firecracker microVMs. Clones share the VMMs they spawned.
#[derive(Debug, Clone)]
pub struct FirecrackerBackend {
    config: FirecrackerConfig,
    /// VMMs this process spawned, kept so their exit status can be read (only a parent can).
    children: Arc<Mutex<HashMap<SandboxId, Child>>>,
    /// Where the guest images its VMs boot are.
    images: Arc<dyn vm::GuestImageSource>,
    /// `firecracker --version`, asked once (every create records it; a restore checks it).
    version: Arc<OnceLock<Option<String>>>,
}

impl FirecrackerBackend {
    pub fn new(
        config: FirecrackerConfig,
        images: Arc<dyn vm::GuestImageSource>,
    ) -> Result<Self, FirecrackerError> {
        if let LaunchMode::Jailed(jailer) = &config.mode {
            jailer.validate()?;
        }
        Ok(Self {
            config,
            children: Arc::new(Mutex::new(HashMap::new())),
            images,
            version: Arc::new(OnceLock::new()),
        })
    }

    pub fn config(&self) -> &FirecrackerConfig {
        &self.config
    }

    /// The `firecracker` binary's version, if it tells one (run once per backend).
    pub(crate) fn binary_version(&self) -> Option<String> {
        self.version
            .get_or_init(|| {
                super::support::tool_version(&self.config.firecracker).map(|v| v.version)
            })
            .clone()
    }

    /// Where this sandbox's VM files are.
    pub fn layout(&self, id: &SandboxId) -> VmLayout {
        match &self.config.mode {
            LaunchMode::Direct => {
                VmLayout::viewed(&self.dirs(id).vm_dir(), &self.config.runtime.vmm_view_dir())
            }
            LaunchMode::Jailed(jailer) => VmLayout::jailed(&jailer.jail(id).root),
        }
    }

    /// A client for this sandbox's API socket.
    pub fn api_client(&self, id: &SandboxId) -> ApiClient {
        ApiClient::new(self.layout(id).host(layout::API_SOCKET))
    }

    /// The relay's upstream: connections to `hearth-guest` through the vsock socket.
    pub fn guest_connector(&self, id: &SandboxId) -> VsockConnector {
        VsockConnector::new(self.layout(id).host(layout::VSOCK_SOCKET), GUEST_VSOCK_PORT)
    }

    fn dirs(&self, id: &SandboxId) -> SandboxDirs {
        self.config.runtime.sandbox(id)
    }

    fn children(&self) -> MutexGuard<'_, HashMap<SandboxId, Child>> {
        // A panic while holding the lock leaves the map itself consistent.
        self.children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts the VM from `ctx.vm_image`; with `ctx.net`, `tap0` (bridged to the sandbox's
    /// link inside its netns) becomes the guest's eth0. On failure nothing of the VM is left.
    pub async fn start_vm(
        &self,
        spec: &SandboxSpec,
        ctx: &LaunchContext,
    ) -> Result<GuestEndpoint, FirecrackerError> {
        self.bring_up(spec, ctx, Boot::Fresh).await
    }

    /// Starts the sandbox from a snapshot another sandbox took ([`Self::save_snapshot`]),
    /// resumed, with its vsock socket in this sandbox's place. `ctx.vm_image`'s rootfs must be
    /// the one the snapshot's VM had mounted. Firecracker reopens the drives at the paths
    /// recorded in the snapshot. Jailed, those are `/rootfs.ext4` and `/config.img` in every
    /// jail; run directly, the config drive is in the VMM's mount view (the same path for
    /// every VM) and the rootfs is the image's own host path. So each restore gets its own
    /// config drive. A snapshot Firecracker can't load (another version, say) fails with its
    /// fault message, and nothing is left behind.
    pub async fn restore_vm(
        &self,
        spec: &SandboxSpec,
        ctx: &LaunchContext,
        snapshot: &SnapshotFiles,
    ) -> Result<GuestEndpoint, FirecrackerError> {
        self.bring_up(spec, ctx, Boot::Restore(snapshot.clone()))
            .await
    }

    async fn bring_up(
        &self,
        spec: &SandboxSpec,
        ctx: &LaunchContext,
        boot: Boot,
    ) -> Result<GuestEndpoint, FirecrackerError> {
        debug_assert_eq!(
            ctx.dirs.base(),
            self.dirs(&spec.id).base(),
            "the launch context's sandbox dir must be under the backend's runtime root"
        );
        check_socket_paths(&self.layout(&spec.id))?;
        // Exclusive: an existing vm/ belongs to another start, which cleanup must not touch.
        ctx.dirs.create_vm_dir()?;
        match self.launch(spec, ctx, boot).await {
            Ok(()) => Ok(GuestEndpoint::UnixSocket {
                path: ctx.dirs.guest_socket(),
            }),
            Err(err) => {
                let (this, id, dirs) = (self.clone(), spec.id.clone(), ctx.dirs.clone());
                match tokio::task::spawn_blocking(move || this.remove_vm(&id, &dirs)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(cleanup)) => {
                        tracing::warn!(id = %spec.id, error = %cleanup, "cleanup after failed start");
                    }
                    Err(join) => {
                        tracing::warn!(id = %spec.id, error = %join, "cleanup after failed start");
                    }
                }
                Err(err)
            }
        }
    }

    async fn launch(
        &self,
        spec: &SandboxSpec,
        ctx: &LaunchContext,
        boot: Boot,
    ) -> Result<(), FirecrackerError> {
        // Files, the tap and the spawn are blocking work; the API calls are not.
        let (this, owned_spec, owned_ctx) = (self.clone(), spec.clone(), ctx.clone());
        let (calls, pidfd) =
            tokio::task::spawn_blocking(move || this.prepare(&owned_spec, &owned_ctx, &boot))
                .await
                .map_err(|err| FirecrackerError::Runtime(std::io::Error::other(err)))??;
        let timeout = self.config.start_timeout;
        let layout = self.layout(&spec.id);
        let client = ApiClient::new(layout.host(layout::API_SOCKET));
        let log = ctx.dirs.vm_log();
        let configure = self.configure(&spec.id, &client, &calls, pidfd.as_ref(), &log);
        tokio::time::timeout(timeout, configure)
            .await
            .unwrap_or_else(|_| {
                Err(FirecrackerError::StartTimeout {
                    id: spec.id.clone(),
                    waited: timeout,
                })
            })
    }

    /// Stages the VM's files, writes the VMM's filter, bridges the tap and spawns the VMM;
    /// returns the API calls that configure it and a pidfd for it.
    fn prepare(
        &self,
        spec: &SandboxSpec,
        ctx: &LaunchContext,
        boot: &Boot,
    ) -> Result<(Vec<ApiCall>, Option<Pidfd>), FirecrackerError> {
        let layout = self.layout(&spec.id);
        let calls = self.stage(spec, ctx, &layout, boot)?;
        let filter = self.write_filter(&layout)?;
        if let Some(net) = &ctx.net {
            // Firecracker can't create taps: hearth makes tap0 (owned by the VMM's uid) and
            // bridges it to the sandbox's link; deleting the netns removes them.
            let owner = match &self.config.mode {
                LaunchMode::Direct => None,
                LaunchMode::Jailed(jailer) => Some(jailer.uid),
            };
            crate::net::tap::bridge_for_vm(&ctx.netns_path, net.address, net.prefix, owner)?;
        }
        let pidfd = self.spawn_vmm(spec, ctx, &layout, filter.as_deref())?;
        Ok((calls, pidfd))
    }

    /// Puts everything the VMM opens where it will look (the jail, when jailed): image,
    /// snapshot, config drive, empty log and metrics files. Returns the calls that configure
    /// the VM from them: the boot plan and `InstanceStart`, or the snapshot load.
    fn stage(
        &self,
        spec: &SandboxSpec,
        ctx: &LaunchContext,
        layout: &VmLayout,
        boot: &Boot,
    ) -> Result<Vec<ApiCall>, FirecrackerError> {
        let id = &spec.id;
        let host_image = ctx.vm_image.as_ref().ok_or(FirecrackerError::NoImage)?;
        if let LaunchMode::Jailed(jailer) = &self.config.mode {
            jailer.create_root(&jailer.jail(id))?;
        }
        let config = vm::spec_guest_config(spec)?;
        self.write_vm_file(
            layout,
            layout::CONFIG_IMAGE,
            &vm::config_drive_bytes(&config)?,
        )?;
        self.write_vm_file(layout, layout::FIRECRACKER_LOG, b"")?;
        self.write_vm_file(layout, layout::METRICS, b"")?;
        let record = self.new_launch_record(&spec.limits, ctx.net.is_some(), &host_image.rootfs);
        self.write_launch_record(id, &record)?;
        match boot {
            Boot::Fresh => {
                check_image(host_image)?;
                let image = match &self.config.mode {
                    LaunchMode::Direct => host_image.clone(),
                    LaunchMode::Jailed(jailer) => {
                        jailer.place_image(&jailer.jail(id), host_image)?
                    }
                };
                let mut calls =
                    BootPlan::new(layout, &image, &spec.limits, ctx.net.as_ref()).calls()?;
                let start = InstanceAction {
                    action_type: ActionType::InstanceStart,
                };
                calls.push(start.call()?);
                Ok(calls)
            }
            Boot::Restore(files) => {
                // The kernel and initramfs are in the saved memory; the drives are reopened at
                // the paths the snapshot recorded, which `place` reproduces.
                if !host_image.rootfs.is_file() {
                    return Err(FirecrackerError::ImageFileMissing {
                        path: host_image.rootfs.clone(),
                    });
                }
                self.place(id, &host_image.rootfs, layout::ROOTFS)?;
                let state = self.place(id, &files.state, layout::RESTORE_STATE)?;
                let memory = self.place(id, &files.memory, layout::RESTORE_MEMORY)?;
                Ok(restore_calls(layout, &state, &memory)?)
            }
        }
    }

    /// Makes host file `from` visible to the VMM; returns its path as the VMM names it. Run
    /// directly, the VMM sees the host's files where they are; jailed, the file is linked or
    /// copied into the jail as `name`.
    fn place(&self, id: &SandboxId, from: &Path, name: &str) -> Result<PathBuf, FirecrackerError> {
        match &self.config.mode {
            LaunchMode::Direct => Ok(from.to_owned()),
            LaunchMode::Jailed(jailer) => Ok(jailer.place(&jailer.jail(id), from, name)?),
        }
    }

    /// Writes the VMM's seccomp filter; returns its path as the VMM sees it, if there is one.
    fn write_filter(&self, layout: &VmLayout) -> Result<Option<PathBuf>, FirecrackerError> {
        let path = layout.host(layout::SECCOMP_FILTER);
        if !write_filter_file(&self.config.vmm_filter, &path)? {
            return Ok(None);
        }
        self.give(&path)?;
        Ok(Some(layout.vmm(layout::SECCOMP_FILTER)))
    }

    /// Spawns the VMM and records it; returns a pidfd for it.
    fn spawn_vmm(
        &self,
        spec: &SandboxSpec,
        ctx: &LaunchContext,
        layout: &VmLayout,
        filter: Option<&Path>,
    ) -> Result<Option<Pidfd>, FirecrackerError> {
        let child = self.command(&spec.id, ctx, layout, filter, spec)?.spawn()?;
        let pid = child.id();
        self.children().insert(spec.id.clone(), child);
        let pid_file = ctx.dirs.vm_pid_file();
        ProcessStamp::of(pid)
            .map_err(|source| ProcessError::Stat { pid, source })?
            .write_new(&pid_file)
            .map_err(|source| ProcessError::PidFile {
                path: pid_file,
                source,
            })?;
        // Our unreaped child: its pid can't be reused, so the pidfd names the VMM. It turns
        // readable once the whole process has exited, which is when `wait` can report it.
        Ok(i32::try_from(pid)
            .ok()
            .and_then(|pid| Pidfd::open(pid).transpose())
            .transpose()
            .map_err(ProcessError::from)?)
    }

    fn command(
        &self,
        id: &SandboxId,
        ctx: &LaunchContext,
        layout: &VmLayout,
        filter: Option<&Path>,
        spec: &SandboxSpec,
    ) -> Result<VmmCommand, FirecrackerError> {
        Ok(match &self.config.mode {
            LaunchMode::Direct => {
                let mut args: Vec<OsString> = vec![
                    "--api-sock".into(),
                    layout.vmm(layout::API_SOCKET).into(),
                    "--id".into(),
                    id.as_str().into(),
                ];
                if let Some(filter) = filter {
                    args.push("--seccomp-filter".into());
                    args.push(filter.into());
                }
                VmmCommand {
                    program: self.config.firecracker.clone(),
                    args,
                    netns: Some(ctx.netns_path.clone()),
                    log: ctx.dirs.vm_log(),
                    view: Some(MountView {
                        host_dir: ctx.dirs.vm_dir(),
                        mount_point: self.config.runtime.create_vmm_view_dir()?,
                    }),
                }
            }
            LaunchMode::Jailed(jailer) => VmmCommand {
                program: jailer.jailer.clone(),
                args: jailer.argv(&jailer.jail(id), &ctx.netns_path, spec.limits.cpus, filter),
                netns: None,
                log: ctx.dirs.vm_log(),
                view: None,
            },
        })
    }

    /// Waits for the API socket, then sends the calls in order. A VMM that dies on the way is
    /// reported as such rather than as the connection error it causes.
    async fn configure(
        &self,
        id: &SandboxId,
        client: &ApiClient,
        calls: &[ApiCall],
        pidfd: Option<&Pidfd>,
        log: &Path,
    ) -> Result<(), FirecrackerError> {
        let exited = |gone: bool| {
            gone.then(|| FirecrackerError::VmmExited {
                id: id.clone(),
                status: self.exit_text(id),
                log: log.to_owned(),
            })
        };
        let started = Instant::now();
        while let Err(err) = client.instance_info().await {
            if let Some(exited) = exited(vmm_gone_within(pidfd, Duration::ZERO).await) {
                return Err(exited);
            }
            tracing::trace!(%id, error = %err, elapsed = ?started.elapsed(), "API socket not up yet");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for call in calls {
            if let Err(err) = client.call(call).await {
                return Err(exited(vmm_gone_within(pidfd, EXIT_GRACE).await).unwrap_or(err.into()));
            }
        }
        tracing::debug!(%id, elapsed = ?started.elapsed(), "VM started");
        Ok(())
    }

    /// The exit status of a VMM known to have exited (so `wait` returns at once).
    fn exit_text(&self, id: &SandboxId) -> String {
        match self.children().get_mut(id).map(Child::wait) {
            Some(Ok(status)) => status.to_string(),
            _ => "exit status unknown".to_owned(),
        }
    }

    fn write_vm_file(
        &self,
        layout: &VmLayout,
        name: &str,
        bytes: &[u8],
    ) -> Result<(), FirecrackerError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = layout.host(name);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| file.write_all(bytes))
            .map_err(|source| FirecrackerError::Write {
                path: path.clone(),
                source,
            })?;
        self.give(&path)
    }

    /// Jailed, the VMM runs as the jailer's uid/gid and must own its files.
    fn give(&self, path: &Path) -> Result<(), FirecrackerError> {
        if let LaunchMode::Jailed(jailer) = &self.config.mode {
            jailer.give(path)?;
        }
        Ok(())
    }

    /// Kills the VMM (our child, or the process in `vmm.pid`), removes the jail and `vm/`.
    /// Goes through every step and reports every failure.
    pub(crate) fn remove_vm(
        &self,
        id: &SandboxId,
        dirs: &SandboxDirs,
    ) -> Result<(), FirecrackerError> {
        let mut errors = Vec::new();
        let child = self.children().remove(id);
        if let Some(mut child) = child {
            // Our own child: kill(2) by pid is safe, it can't be reaped (and reused) before
            // the wait below.
            let _ = child.kill();
            let _ = child.wait();
        } else {
            let pid_file = dirs.vm_pid_file();
            match ProcessStamp::read(&pid_file) {
                Ok(Some(stamp)) => {
                    if let Err(err) = stamp.kill(KILL_TIMEOUT) {
                        errors.push(ProcessError::from(err).into());
                    }
                }
                Ok(None) => {}
                Err(source) => errors.push(
                    ProcessError::PidFile {
                        path: pid_file,
                        source,
                    }
                    .into(),
                ),
            }
        }
        if let LaunchMode::Jailed(jailer) = &self.config.mode {
            if let Err(jail_errors) = jailer.cleanup(id) {
                errors.extend(jail_errors.into_iter().map(FirecrackerError::from));
            }
        }
        match std::fs::remove_dir_all(dirs.vm_dir()) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => errors.push(FirecrackerError::Write {
                path: dirs.vm_dir(),
                source,
            }),
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(FirecrackerError::Cleanup(errors))
        }
    }
}

/// The API and vsock sockets must fit `sun_path`; a jail's are longer than the sandbox dir's
/// (`<runtime>/jail/firecracker/<id>/root/vsock.sock`), so a long id can push them over.
fn check_socket_paths(layout: &VmLayout) -> Result<(), FirecrackerError> {
    for name in [layout::API_SOCKET, layout::VSOCK_SOCKET] {
        let path = layout.host(name);
        let len = path.as_os_str().len();
        if len > crate::dirs::MAX_SOCKET_PATH {
            return Err(crate::dirs::DirsError::SocketPathTooLong { path, len }.into());
        }
    }
    Ok(())
}

/// Checks what Firecracker would otherwise fail on less clearly, after it started.
fn check_image(image: &VmImagePaths) -> Result<(), FirecrackerError> {
    for path in [&image.kernel, &image.initrd, &image.rootfs] {
        if !path.is_file() {
            return Err(FirecrackerError::ImageFileMissing { path: path.clone() });
        }
    }
    Ok(())
}

/// Whether the VMM behind `pidfd` has exited, or does within `grace` (polled, so the async
/// thread is never blocked). No pidfd (it could not be opened): unknown, taken as running.
async fn vmm_gone_within(pidfd: Option<&Pidfd>, grace: Duration) -> bool {
    let Some(pidfd) = pidfd else {
        return false;
    };
    let started = Instant::now();
    loop {
        if pidfd.wait(Duration::ZERO).unwrap_or(false) {
            return true;
        }
        if started.elapsed() >= grace {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
