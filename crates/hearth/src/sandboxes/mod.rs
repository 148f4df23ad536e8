//! Creating, finding and removing sandboxes: the store, the directories, the network namespace
//! and the backend, kept consistent with each other.
//!
//! Every create writes its store record first and every remove deletes it last, so whatever a
//! crash interrupts is still named in the store (or by the id-derived names on the host) and
//! [`reconcile`] can finish the job on the next run.

mod backends;
mod kills;
mod reconcile;
mod snapshot;
mod vm;

use std::path::PathBuf;
use std::sync::Arc;

use hearth_net::{FirewallError, FirewallManager};
use hearth_sandbox::backend::vm::GuestNet;
use hearth_sandbox::backend::{BackendError, BackendKind, LaunchContext, SandboxBackend};
use hearth_sandbox::dirs::{DirsError, RuntimeDirs};
use hearth_sandbox::guest_client::{GuestClient, GuestClientError};
use hearth_sandbox::spec::SandboxSpec;
use hearth_sandbox::userns::HostIds;
use hearth_sandbox::workspace::{self, WorkspaceSource};
use hearth_sandbox::SandboxId;

use crate::store::{SandboxRecord, SandboxStatus, StatusError, Store, StoreError};
pub use backends::Backends;

use crate::supervisor::net::NetDuty;

/// Why a sandbox found stopped is marked exited.
const INIT_EXITED: &str = "the sandbox's init process exited";

/// Errors of sandbox management.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("no sandbox with id {0}")]
    NotFound(SandboxId),
    #[error("sandbox {0} already exists")]
    AlreadyExists(SandboxId),
    #[error("sandbox {id}: {source}")]
    Status { id: SandboxId, source: StatusError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Dirs(#[from] DirsError),
    #[error(transparent)]
    Net(#[from] FirewallError),
    #[error("a blocking task of hearth failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Guest(#[from] GuestClientError),
    #[error(transparent)]
    Supervisor(#[from] crate::supervisor::SupervisorError),
    #[error("the {0} backend is not available on this host (see hearth doctor)")]
    BackendUnavailable(BackendKind),
    #[error("the {kind} backend is not available on this host: {reason}")]
    BackendMissing { kind: BackendKind, reason: String },
    #[error("a {0} sandbox cannot share a host directory (Firecracker has no shared filesystem); leave out --workspace and copy files with `hearth sandbox cp`, or use --backend qemu or oci")]
    WorkspaceUnsupported(BackendKind),
    #[error("sandbox {id} runs on {backend}; only microVM sandboxes can {action}")]
    NotAVm {
        id: SandboxId,
        backend: BackendKind,
        action: &'static str,
    },
    #[error(transparent)]
    Workspace(#[from] hearth_sandbox::workspace::WorkspaceError),
    #[error("sandbox {0} has no host id block to run as")]
    NoHostIds(SandboxId),
    #[error("removing sandbox {id} left errors: {}", .errors.join("; "))]
    Cleanup { id: SandboxId, errors: Vec<String> },
    #[error("no snapshot named {0} (see hearth sandbox snapshots)")]
    SnapshotNotFound(crate::store::SnapshotName),
    #[error("snapshot {0} already exists")]
    SnapshotExists(crate::store::SnapshotName),
    /// A request that contradicts the snapshot (its VM size, network, seccomp policy).
    #[error("{0}")]
    SnapshotConflict(String),
    #[error("{path}: {source}")]
    SnapshotFiles {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} must be a directory owned by hearth's user and closed to others (snapshots hold guest memory)")]
    SnapshotDirUnsafe { path: PathBuf },
    #[error(transparent)]
    Template(#[from] hearth_template::TemplateError),
    #[error("template {name} runs as uid {uid}; a microVM runs template commands as root only, so use --backend oci for it")]
    TemplateUserOnVm { name: String, uid: u32 },
    #[error("a template sandbox needs a statically linked hearth-guest (the image brings its own libc, or none): build it with `RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p hearth-guest --target x86_64-unknown-linux-gnu` or pass one with --guest-binary")]
    NoStaticGuest,
}

/// Creates and removes sandboxes on this host's backends.
#[derive(Debug)]
pub struct SandboxManager {
    pub store: Store,
    pub dirs: RuntimeDirs,
    pub backends: Backends,
    pub guest_binary: PathBuf,
    /// Network namespace, link, addresses and nftables rules of every sandbox.
    pub firewall: Arc<FirewallManager>,
    /// Where sandboxes' allowed names are resolved (`None`: the host's resolv.conf).
    pub dns_upstream: Option<std::net::SocketAddr>,
    /// Templates a sandbox's root may come from.
    pub templates: hearth_template::TemplateStore,
    /// A static `hearth-guest` for template roots (which have their own libc, or none): found
    /// on the first template create, not at every start (it means reading ELF binaries).
    pub static_guest: std::sync::OnceLock<Option<PathBuf>>,
}

impl SandboxManager {
    /// Creates a sandbox and waits until its guest answers. On any failure everything made so
    /// far is removed again before the error is returned.
    pub async fn create(&self, spec: &SandboxSpec) -> Result<SandboxRecord, SandboxError> {
        self.create_with(spec, None).await
    }

    /// [`create`](Self::create), booting or (with `restore`) resuming a saved VM.
    async fn create_with(
        &self,
        spec: &SandboxSpec,
        restore: Option<snapshot::Restore>,
    ) -> Result<SandboxRecord, SandboxError> {
        let backend = self.backends.get_for_create(spec.backend)?;
        let resolved;
        let spec = match &spec.template {
            Some(template) if template.layers.is_empty() => {
                resolved = self.resolve_template(spec).await?;
                &resolved
            }
            _ => spec,
        };
        if !backend.mounts_workspace() && spec.workspace.is_some() {
            // Silently giving the sandbox an empty /workspace instead would look like lost files.
            return Err(SandboxError::WorkspaceUnsupported(spec.backend));
        }
        // Shared with other creates, exclusive with reconciliation: a reconcile must never see
        // this sandbox's objects on the host before its record is there to claim them.
        let _creating = self
            .lock_sandboxes(nix::fcntl::FlockArg::LockShared)
            .await?;
        let record = match self
            .store
            .insert_sandbox(spec, &spec.backend.to_string(), &backend.describe())
            .await
        {
            Err(StoreError::SandboxExists(_)) => {
                return Err(SandboxError::AlreadyExists(spec.id.clone()))
            }
            other => other?,
        };
        match self
            .bring_up(backend, spec, record.host_ids, restore.as_ref())
            .await
        {
            Ok(()) => {
                debug_assert!(record.status.can_mark_running());
                self.store
                    .set_sandbox_status(&spec.id, SandboxStatus::Running, None)
                    .await?;
                Ok(SandboxRecord {
                    status: SandboxStatus::Running,
                    ..record
                })
            }
            Err(err) => {
                if let Err(cleanup) = self.teardown(&spec.id).await {
                    tracing::warn!(id = %spec.id, error = %cleanup, "cleanup after failed create");
                }
                Err(err)
            }
        }
    }

    /// The static `hearth-guest` template sandboxes run (see `config::static_guest_binary`).
    fn static_guest(&self) -> Result<PathBuf, SandboxError> {
        self.static_guest
            .get_or_init(|| crate::config::static_guest_binary(&self.guest_binary))
            .clone()
            .ok_or(SandboxError::NoStaticGuest)
    }

    /// Fills in a spec's template from the store: its layer dirs, env, working dir and user,
    /// and for a microVM its ext4 root (made on first use).
    async fn resolve_template(&self, spec: &SandboxSpec) -> Result<SandboxSpec, SandboxError> {
        let guest = self.static_guest()?;
        let (store, mut spec) = (self.templates.clone(), spec.clone());
        tokio::task::spawn_blocking(move || {
            let Some(wanted) = spec.template.as_mut() else {
                return Ok(spec);
            };
            let template = store.get(&wanted.name)?;
            if spec.backend.is_vm() && template.uid != 0 {
                return Err(SandboxError::TemplateUserOnVm {
                    name: template.name,
                    uid: template.uid,
                });
            }
            wanted.layers = store.layer_dirs(&template)?;
            wanted.uid = template.uid;
            wanted.gid = template.gid;
            wanted.exec_defaults = hearth_proto::ExecDefaults {
                env: template
                    .env
                    .iter()
                    .filter_map(|kv| kv.split_once('='))
                    .filter(|(name, _)| !name.is_empty())
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                cwd: template.working_dir.clone(),
            };
            if spec.backend.is_vm() {
                wanted.vm_rootfs = Some(store.vm_rootfs(&template, &guest)?);
            }
            Ok(spec)
        })
        .await?
    }

    async fn bring_up(
        &self,
        backend: &dyn SandboxBackend,
        spec: &SandboxSpec,
        ids: Option<HostIds>,
        restore: Option<&snapshot::Restore>,
    ) -> Result<(), SandboxError> {
        let started = std::time::Instant::now();
        let dirs = self.dirs.create_sandbox(&spec.id, ids)?;
        if backend.mounts_workspace() {
            let ids = ids.ok_or_else(|| SandboxError::NoHostIds(spec.id.clone()))?;
            let source = match &spec.workspace {
                Some(dir) => WorkspaceSource::Host(dir.clone()),
                None => WorkspaceSource::Private {
                    disk_bytes: spec.limits.disk.0,
                },
            };
            let (dirs, id, images) = (dirs.clone(), spec.id.clone(), self.workspace_images());
            // A container from a template gets its overlay root on the same disk as its
            // workspace; a VM boots the template's ext4 instead (below).
            let template = spec.template.clone().filter(|_| !backend.kind().is_vm());
            let disk_bytes = spec.limits.disk.0;
            tokio::task::spawn_blocking(move || match &template {
                Some(template) => hearth_sandbox::template_root::prepare(
                    &dirs, &id, &source, disk_bytes, ids, &images, template,
                ),
                None => workspace::prepare(&dirs, &id, &source, ids, &images).map(drop),
            })
            .await??;
        }
        let network = self
            .with_firewall({
                let (id, policy) = (spec.id.clone(), spec.net.clone());
                move |firewall| firewall.setup(&id, &policy)
            })
            .await?;
        let mut vm_image = backend.vm_image(restore.map(|r| &r.saved))?;
        if let (Some(image), Some(rootfs)) = (
            vm_image.as_mut(),
            spec.template.as_ref().and_then(|t| t.vm_rootfs.as_ref()),
        ) {
            image.rootfs.clone_from(rootfs);
        }
        // The seccomp listener must be up before the runtime looks for it, the resolver
        // before the sandbox's first lookup, and a VM's relay before the health wait (see
        // `supervisor`).
        let net_duty = network.link.as_ref().map(|link| NetDuty {
            link: link.clone(),
            policy: spec.net.clone(),
            netns: network.netns.clone(),
            dns_upstream: self.dns_upstream,
        });
        let relay = backend.guest_channel(&spec.id, &dirs);
        crate::supervisor::start_if_needed(
            spec,
            &dirs,
            self.dirs.root(),
            self.store.state_dir(),
            net_duty.as_ref(),
            relay.as_ref(),
        )
        .await?;
        let ctx = LaunchContext {
            dirs: dirs.clone(),
            netns_path: network.netns,
            guest_binary: match &spec.template {
                Some(_) => self.static_guest()?,
                None => self.guest_binary.clone(),
            },
            resolver: network.link.as_ref().map(|link| link.resolver()),
            // A VM's guest configures its own end of the link; a container's is configured
            // in its netns by hearth.
            net: network
                .link
                .as_ref()
                .filter(|_| backend.vm().is_some())
                .map(GuestNet::from_link),
            vm_image,
            ids,
        };
        tracing::debug!(id = %spec.id, elapsed = ?started.elapsed(), "dirs and netns made; starting the backend");
        let endpoint = match restore {
            None => backend.start(spec, &ctx).await?,
            Some(restore) => {
                self.vm_of(backend, &spec.id, "be restored")?
                    .restore(spec, &ctx, &restore.saved)
                    .await?
            }
        };
        tracing::debug!(id = %spec.id, elapsed = ?started.elapsed(), "backend started; waiting for the guest");
        let client = endpoint.client();
        if let Err(err) = backend.wait_ready(&spec.id, &dirs, &client).await {
            // A VMM that died on the way (a seccomp fault, say) is recorded before the error
            // removes its logs.
            self.record_observed_exit(backend, &spec.id).await;
            return Err(err.into());
        }
        if restore.is_some() {
            Self::thaw_restored(&client, spec, ctx.net).await?;
        }
        tracing::debug!(id = %spec.id, elapsed = ?started.elapsed(), "guest ready");
        Ok(())
    }

    /// Removes everything a sandbox owns: runtime container, network namespace, directory and
    /// finally the record. Goes through every step even when one fails, then reports them all.
    pub async fn remove(&self, id: &SandboxId, force: bool) -> Result<(), SandboxError> {
        match self.store.get_sandbox(id).await? {
            Some(record) => {
                record
                    .status
                    .check(
                        record.status.can_remove() || force,
                        "remove it while it is being created (use --force)",
                    )
                    .map_err(|source| SandboxError::Status {
                        id: id.clone(),
                        source,
                    })?;
                // Its logs go with it: how a sandbox that died unobserved ended is read first.
                // Best effort: a host that lost the backend can still remove what is left.
                if record.status == SandboxStatus::Running {
                    if let Ok(backend) = self.backends.get(record.spec.backend) {
                        self.record_observed_exit(backend, id).await;
                    }
                }
            }
            None if force => {}
            None => return Err(SandboxError::NotFound(id.clone())),
        }
        self.store
            .set_sandbox_status(id, SandboxStatus::Removing, None)
            .await?;
        self.teardown(id).await
    }

    async fn teardown(&self, id: &SandboxId) -> Result<(), SandboxError> {
        let mut errors = Vec::new();
        // The backend that made it; without a record, every backend (each tolerates a sandbox
        // it does not have).
        let kind = self.store.get_sandbox(id).await?.map(|r| r.spec.backend);
        for backend in self.backends.iter() {
            if kind.is_none_or(|kind| kind == backend.kind()) {
                if let Err(err) = backend.remove(id).await {
                    errors.push(err.to_string());
                }
            }
        }
        // After the container: with its filter gone the supervisor flushes and exits by itself
        // (a stop waits on it: off the async threads).
        let (dirs, owned) = (self.dirs.sandbox(id), id.clone());
        let stopped = tokio::task::spawn_blocking(move || {
            crate::supervisor::stop(&dirs).and_then(|()| crate::supervisor::remove_cgroup(&owned))
        })
        .await?;
        if let Err(err) = stopped {
            errors.push(err.to_string());
        }
        let id_owned = id.clone();
        if let Err(err) = self
            .with_firewall(move |firewall| firewall.teardown(&id_owned))
            .await
        {
            errors.push(err.to_string());
        }
        // The workspace's image only once its mount (in the dir) is gone.
        if let Err(err) = self.dirs.sandbox(id).remove() {
            errors.push(err.to_string());
        } else if let Err(err) = self.workspace_images().remove(id) {
            errors.push(err.to_string());
        }
        // The record goes last, and only when the host is clean: otherwise it stays (failed) so
        // the leftovers remain findable.
        if errors.is_empty() {
            self.store.delete_sandbox(id).await?;
            Ok(())
        } else {
            self.store
                .set_sandbox_status(id, SandboxStatus::Failed, Some(&errors.join("; ")))
                .await?;
            Err(SandboxError::Cleanup {
                id: id.clone(),
                errors,
            })
        }
    }

    /// Ends every process of a sandbox (its container or VM) but leaves the rest, its
    /// workspace mount above all, for [`Self::remove`]: what the workload wrote can then be
    /// read while nothing writes it any more. A sandbox with no record is left alone.
    pub async fn stop_processes(&self, id: &SandboxId) -> Result<(), SandboxError> {
        let Some(record) = self.store.get_sandbox(id).await? else {
            return Ok(());
        };
        self.backends.get(record.spec.backend)?.remove(id).await?;
        Ok(())
    }

    /// The record of a sandbox, or `NotFound`.
    pub async fn get(&self, id: &SandboxId) -> Result<SandboxRecord, SandboxError> {
        self.store
            .get_sandbox(id)
            .await?
            .ok_or_else(|| SandboxError::NotFound(id.clone()))
    }

    /// A client for the guest of a running sandbox. A sandbox whose PID 1 has died is marked
    /// `exited` here, so the user learns it instead of getting a connection error.
    pub async fn guest(&self, id: &SandboxId) -> Result<GuestClient, SandboxError> {
        Ok(self.guest_and_record(id).await?.0)
    }

    /// [`Self::guest`] and the record it checked (one store read for callers that need both).
    pub async fn guest_and_record(
        &self,
        id: &SandboxId,
    ) -> Result<(GuestClient, SandboxRecord), SandboxError> {
        let record = self.get(id).await?;
        record
            .status
            .check(record.status.can_exec(), "run commands or copy files")
            .map_err(|source| SandboxError::Status {
                id: id.clone(),
                source,
            })?;
        let backend = self.backends.get(record.spec.backend)?;
        if !backend.is_running(id).await? {
            self.mark_ended(backend, id, INIT_EXITED).await?;
            return Err(SandboxError::Status {
                id: id.clone(),
                source: StatusError {
                    status: SandboxStatus::Exited,
                    action: "run commands or copy files",
                },
            });
        }
        Ok((
            GuestClient::new(self.dirs.sandbox(id).guest_socket()),
            record,
        ))
    }

    /// Sandbox records with their status refreshed from the backend.
    pub async fn list(&self) -> Result<Vec<SandboxRecord>, SandboxError> {
        let mut records = self.store.list_sandboxes().await?;
        for record in &mut records {
            if record.status != SandboxStatus::Running {
                continue;
            }
            let backend = self.backends.get(record.spec.backend)?;
            if !backend.is_running(&record.id).await? {
                self.mark_ended(backend, &record.id, INIT_EXITED).await?;
                record.status = SandboxStatus::Exited;
            }
        }
        Ok(records)
    }
}

impl SandboxManager {
    /// A running sandbox was found stopped: how it ended goes into the audit and it is marked
    /// exited with `reason`, so it is recorded once.
    pub(super) async fn mark_ended(
        &self,
        backend: &dyn SandboxBackend,
        id: &SandboxId,
        reason: &str,
    ) -> Result<(), SandboxError> {
        self.record_observed_exit(backend, id).await;
        self.store
            .set_sandbox_status(id, SandboxStatus::Exited, Some(reason))
            .await?;
        Ok(())
    }

    /// A sandbox was found stopped: what its backend can tell about why goes into the audit
    /// (Firecracker: a VMM killed by its own seccomp filter). Best effort: a failure to record
    /// is logged, the caller goes on.
    async fn record_observed_exit(&self, backend: &dyn SandboxBackend, id: &SandboxId) {
        let Some(exit) = backend.observed_exit(id).await else {
            return;
        };
        let window_ms =
            u64::try_from(hearth_seccomp::audit::DEFAULT_WINDOW.as_millis()).unwrap_or(60_000);
        let capacity = hearth_seccomp::audit::DEFAULT_CAPACITY as u64;
        for entry in &exit.audit {
            if let Err(err) = self
                .store
                .record_seccomp_entry(id, entry, window_ms, capacity)
                .await
            {
                tracing::warn!(%id, %err, "cannot record the sandbox's end in the audit");
            }
        }
        tracing::warn!(%id, "{}", exit.summary);
    }

    /// The firewall rules of a sandbox with their packet and byte counters.
    pub async fn firewall_counters(
        &self,
        id: &SandboxId,
    ) -> Result<Vec<hearth_net::RuleCounter>, SandboxError> {
        let id = id.clone();
        self.with_firewall(move |firewall| firewall.counters(&id))
            .await
    }

    /// Where private workspaces' filesystem images live (the state dir: on disk).
    pub(crate) fn workspace_images(&self) -> workspace::WorkspaceImages {
        workspace::WorkspaceImages::new(self.store.state_dir())
    }

    /// The host-wide lock between creates (shared) and reconciliation (exclusive).
    pub(crate) async fn lock_sandboxes(
        &self,
        arg: nix::fcntl::FlockArg,
    ) -> Result<nix::fcntl::Flock<std::fs::File>, SandboxError> {
        Ok(crate::store::lock_file(&self.dirs.root().join("sandboxes.lock"), arg).await?)
    }

    /// Runs a firewall operation on a blocking thread: it makes netlink and nftables calls,
    /// and its slot store waits on the database.
    async fn with_firewall<T: Send + 'static>(
        &self,
        work: impl FnOnce(&FirewallManager) -> Result<T, FirewallError> + Send + 'static,
    ) -> Result<T, SandboxError> {
        let firewall = Arc::clone(&self.firewall);
        Ok(tokio::task::spawn_blocking(move || work(&firewall)).await??)
    }
}
