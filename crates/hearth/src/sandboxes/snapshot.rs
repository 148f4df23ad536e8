//! Snapshots of microVM sandboxes (QEMU and Firecracker): saving one, restoring a new sandbox
//! from one, listing, removing.
//!
//! A snapshot is `<state dir>/snapshots/<name>/` (0700): the VM's RAM and device state (0600:
//! they hold the workload's memory, secrets included) and the manifest the backend checks on
//! restore (versions, launch settings, the guest image). Its record goes in the store once the
//! files are complete and leaves after they are gone.
//!
//! What a snapshot does not hold, and how a restore deals with it:
//! - The workspace (QEMU): a host directory shared over 9p, which QEMU cannot migrate while
//!   mounted. The guest unmounts it for the save and mounts it again afterwards
//!   (`quiesce`/`thaw`); the restored sandbox mounts its own (`--workspace`, or a fresh private
//!   one). Firecracker shares no host directory, so there is nothing to unmount.
//! - The network identity: the restored guest still has the source's address (its kernel
//!   command line is the source's), while the new sandbox gets its own slot, namespace, tap and
//!   firewall. Reusing the source's address is impossible while the source lives, and would let
//!   the copy pass for the source at the gateway; refusing would make restore useless. So after
//!   the restore hearth tells the guest its new address, gateway, resolver and hostname
//!   (`thaw`). Until then the guest's packets carry the old source address, which the new
//!   sandbox's firewall does not know as its own.
//! - The guest image: the restored kernel has the snapshot's rootfs mounted, so the restore
//!   starts the VMM on that same content-addressed image, not on the current one.
//! - Memory, vCPUs and the guest's seccomp policy live in the saved VM: the new sandbox takes
//!   them from the source, and flags that contradict them are refused.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hearth_proto::{VmNetIdentity, VmThaw};
use hearth_sandbox::backend::firecracker::SnapshotManifest as FirecrackerManifest;
use hearth_sandbox::backend::qemu::{QemuBackend, QemuError, SnapshotManifest as QemuManifest};
use hearth_sandbox::backend::{BackendError, BackendKind, FirecrackerError};
use hearth_sandbox::guest_client::GuestClient;
use hearth_sandbox::spec::SandboxSpec;
use hearth_sandbox::SandboxId;

use super::{SandboxError, SandboxManager};
use crate::store::{
    new_snapshot_record, SandboxRecord, SandboxStatus, SnapshotName, SnapshotRecord, StoreError,
};

/// Where a restore finds the saved VM, resolved and checked before anything is created.
#[derive(Debug)]
pub(super) struct Restore {
    pub dir: PathBuf,
    pub saved: SavedVm,
}

/// A snapshot's manifest, as its backend wrote it.
#[derive(Debug)]
pub(super) enum SavedVm {
    Qemu(QemuManifest),
    Firecracker(FirecrackerManifest),
}

impl Restore {
    /// The root filesystem the saved kernel has mounted.
    pub fn rootfs(&self) -> &Path {
        match &self.saved {
            SavedVm::Qemu(manifest) => &manifest.rootfs,
            SavedVm::Firecracker(manifest) => &manifest.rootfs,
        }
    }

    fn nic(&self) -> bool {
        match &self.saved {
            SavedVm::Qemu(manifest) => manifest.nic,
            SavedVm::Firecracker(manifest) => manifest.nic,
        }
    }
}

impl SandboxManager {
    /// The snapshots directory, created 0700 if missing; refused when it is a symlink, not
    /// ours or open to others.
    fn snapshots_dir(&self) -> Result<PathBuf, SandboxError> {
        let dir = self.store.state_dir().join("snapshots");
        let io = |source| SandboxError::SnapshotFiles {
            path: dir.clone(),
            source,
        };
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(io(err)),
        }
        let meta = std::fs::symlink_metadata(&dir).map_err(io)?;
        let private = meta.is_dir()
            && meta.uid() == nix::unistd::geteuid().as_raw()
            && meta.mode() & 0o077 == 0;
        if !private {
            return Err(SandboxError::SnapshotDirUnsafe { path: dir });
        }
        Ok(dir)
    }

    /// Saves a running (or paused) microVM sandbox as snapshot `name`. The sandbox goes on as
    /// it was: running, or paused.
    pub async fn snapshot(
        &self,
        id: &SandboxId,
        name: SnapshotName,
    ) -> Result<SnapshotRecord, SandboxError> {
        let record = self.get(id).await?;
        if record.spec.backend == BackendKind::Oci {
            return Err(SandboxError::NotAVm {
                id: id.clone(),
                backend: record.spec.backend,
                action: "be snapshotted",
            });
        }
        record
            .status
            .check(record.status == SandboxStatus::Running, "snapshot it")
            .map_err(|source| SandboxError::Status {
                id: id.clone(),
                source,
            })?;
        if self.store.get_snapshot(&name).await?.is_some() {
            return Err(SandboxError::SnapshotExists(name));
        }
        let dest = self.snapshots_dir()?.join(name.as_str());
        let saved = match record.spec.backend {
            BackendKind::Firecracker => self.save_firecracker(id, &dest).await,
            BackendKind::Qemu => self.save_qemu(id, &dest).await,
            BackendKind::Oci => unreachable!("refused above"),
        };
        let (hearth_version, vmm_version) = match saved {
            Err(SandboxError::Backend(
                BackendError::Qemu(QemuError::SnapshotExists { .. })
                | BackendError::Firecracker(FirecrackerError::SnapshotExists { .. }),
            )) => return Err(SandboxError::SnapshotExists(name)),
            other => other?,
        };
        let snapshot = new_snapshot_record(
            name.clone(),
            &record.spec,
            dir_size(&dest),
            hearth_version,
            vmm_version,
        );
        if let Err(err) = self.store.insert_snapshot(&snapshot).await {
            let _ = std::fs::remove_dir_all(&dest);
            return Err(match err {
                StoreError::SnapshotExists(_) => SandboxError::SnapshotExists(name),
                other => other.into(),
            });
        }
        Ok(snapshot)
    }

    /// QEMU's save, between the guest's quiesce and thaw of its 9p workspace. Returns the
    /// hearth and QEMU versions it was taken with.
    async fn save_qemu(
        &self,
        id: &SandboxId,
        dest: &Path,
    ) -> Result<(String, String), SandboxError> {
        let qemu = match &self.qemu {
            Some(qemu) => qemu.clone(),
            None => return Err(SandboxError::BackendUnavailable(BackendKind::Qemu)),
        };
        let client = self.guest(id).await?;
        let paused = blocking({
            let (qemu, id) = (qemu.clone(), id.clone());
            move || qemu.status(&id)
        })
        .await?
        .status
            == "paused";
        while_running(&qemu, id, paused, client.vm_quiesce()).await??;
        let saved = blocking({
            let (qemu, id, dest) = (qemu.clone(), id.clone(), dest.to_owned());
            move || qemu.snapshot(&id, &dest)
        })
        .await;
        let thawed = while_running(&qemu, id, paused, client.vm_thaw(&VmThaw::default())).await?;
        if let Err(err) = thawed {
            tracing::warn!(%id, error = %err, "the workspace could not be mounted again after the snapshot");
        }
        let manifest = saved?;
        Ok((manifest.hearth_version, manifest.qemu_version))
    }

    /// Firecracker's save: pause, `PUT /snapshot/create`, resume, files moved to `dest`. A VMM
    /// that died on the way is recorded like one that died on a pause.
    async fn save_firecracker(
        &self,
        id: &SandboxId,
        dest: &Path,
    ) -> Result<(String, String), SandboxError> {
        let firecracker = self.firecracker_backend()?;
        match firecracker.save_snapshot(id, dest).await {
            Ok(manifest) => Ok((manifest.hearth_version, manifest.firecracker_version)),
            Err(err) => {
                // An API call that failed may have been the VMM dying (of its own filter, say).
                if matches!(
                    err,
                    FirecrackerError::Api(_) | FirecrackerError::NotRunning { .. }
                ) {
                    let grace = super::firecracker::EXIT_GRACE;
                    if let Err(note) = self.note_vmm_gone(id, grace).await {
                        tracing::warn!(%id, error = %note, "cannot tell whether the VMM is gone");
                    }
                }
                Err(BackendError::from(err).into())
            }
        }
    }

    pub async fn snapshots(&self) -> Result<Vec<SnapshotRecord>, SandboxError> {
        Ok(self.store.list_snapshots().await?)
    }

    /// The record of snapshot `name`, or `SnapshotNotFound`.
    pub async fn get_snapshot(&self, name: &SnapshotName) -> Result<SnapshotRecord, SandboxError> {
        self.store
            .get_snapshot(name)
            .await?
            .ok_or_else(|| SandboxError::SnapshotNotFound(name.clone()))
    }

    /// Deletes snapshot `name`: its files, then its record. Files left by an interrupted
    /// snapshot (no record) are removed too.
    pub async fn remove_snapshot(&self, name: &SnapshotName) -> Result<(), SandboxError> {
        let dir = self.snapshots_dir()?.join(name.as_str());
        let recorded = self.store.get_snapshot(name).await?.is_some();
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && recorded => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(SandboxError::SnapshotNotFound(name.clone()))
            }
            Err(source) => return Err(SandboxError::SnapshotFiles { path: dir, source }),
        }
        self.store.delete_snapshot(name).await?;
        Ok(())
    }

    /// Creates `spec` (its backend, limits and guest policy already the snapshot's) by
    /// resuming snapshot `name` instead of booting. Everything that can be checked without
    /// creating anything is checked first: the snapshot's files, this host's hearth and VMM
    /// versions, the VM's settings and NIC; a failure later removes everything made, as
    /// `create` does.
    pub async fn create_from_snapshot(
        &self,
        spec: &SandboxSpec,
        name: &SnapshotName,
    ) -> Result<SandboxRecord, SandboxError> {
        let snapshot = self.get_snapshot(name).await?;
        debug_assert_eq!(spec.backend, snapshot.spec.backend);
        let dir = self.snapshots_dir()?.join(name.as_str());
        let saved = match spec.backend {
            BackendKind::Firecracker => self.check_firecracker_snapshot(&dir, spec, name).await?,
            BackendKind::Qemu => self.check_qemu_snapshot(&dir, name).await?,
            BackendKind::Oci => {
                return Err(SandboxError::SnapshotConflict(format!(
                    "snapshot {name} is not of a microVM"
                )))
            }
        };
        let restore = Restore { dir, saved };
        let wants_nic = spec.net.mode != hearth_sandbox::net::NetMode::None;
        if restore.nic() != wants_nic {
            return Err(SandboxError::SnapshotConflict(format!(
                "snapshot {name} was taken {} a network; create the sandbox {}",
                if restore.nic() { "with" } else { "without" },
                if restore.nic() {
                    "with --net gateway or allowlist"
                } else {
                    "with --net none"
                },
            )));
        }
        // The VM's size and guest policy come from the saved VM; the CLI fills them in.
        debug_assert_eq!(spec.seccomp, snapshot.spec.seccomp);
        debug_assert_eq!(spec.guest_seccomp, snapshot.spec.guest_seccomp);
        self.create_with(spec, Some(restore)).await
    }

    /// Firecracker's manifest of snapshot `name`, checked against this host and against the
    /// size `spec` asks for. Off the async threads: it runs `firecracker --version`.
    async fn check_firecracker_snapshot(
        &self,
        dir: &Path,
        spec: &SandboxSpec,
        name: &SnapshotName,
    ) -> Result<SavedVm, SandboxError> {
        let firecracker = Arc::clone(
            self.firecracker
                .as_ref()
                .ok_or_else(|| self.backends.unavailable(BackendKind::Firecracker))?,
        );
        let checked = tokio::task::spawn_blocking({
            let dir = dir.to_owned();
            move || firecracker.check_snapshot(&dir)
        })
        .await?;
        let manifest = match checked {
            Ok(manifest) => manifest,
            Err(FirecrackerError::SnapshotFile { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(SandboxError::SnapshotNotFound(name.clone()))
            }
            Err(err) => return Err(BackendError::from(err).into()),
        };
        if !shape_matches(&manifest, spec) {
            return Err(SandboxError::SnapshotConflict(format!(
                "snapshot {name} has {} MiB and {} vCPUs, the sandbox to restore {} MiB and {} \
                 CPUs",
                manifest.memory_mib,
                manifest.vcpus,
                spec.limits.memory.0 >> 20,
                spec.limits.cpus.0
            )));
        }
        Ok(SavedVm::Firecracker(manifest))
    }

    /// QEMU's manifest of snapshot `name`, checked against this host's QEMU.
    async fn check_qemu_snapshot(
        &self,
        dir: &Path,
        name: &SnapshotName,
    ) -> Result<SavedVm, SandboxError> {
        let qemu = match &self.qemu {
            Some(qemu) => qemu.clone(),
            None => return Err(SandboxError::BackendUnavailable(BackendKind::Qemu)),
        };
        let checked = blocking({
            let dir = dir.to_owned();
            move || qemu.check_snapshot(&dir)
        })
        .await;
        match checked {
            Ok(manifest) => Ok(SavedVm::Qemu(manifest)),
            Err(SandboxError::Backend(BackendError::Qemu(QemuError::File { source, .. })))
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Err(SandboxError::SnapshotNotFound(name.clone()))
            }
            Err(err) => Err(err),
        }
    }

    /// Starts the VMM of a restore on the saved VM (blocking: QMP and the tap ioctls).
    pub(super) fn start_restored(
        &self,
        spec: &SandboxSpec,
        ctx: &hearth_sandbox::backend::LaunchContext<'_>,
        restore: &Restore,
    ) -> Result<hearth_sandbox::backend::GuestEndpoint, SandboxError> {
        let started = match &restore.saved {
            SavedVm::Qemu(_) => {
                let qemu = self
                    .qemu
                    .as_deref()
                    .ok_or(SandboxError::BackendUnavailable(BackendKind::Qemu))?;
                qemu.start_from_snapshot(spec, ctx, &restore.dir)
                    .map_err(BackendError::from)
            }
            SavedVm::Firecracker(_) => {
                let files = hearth_sandbox::backend::firecracker::saved_files(&restore.dir);
                self.firecracker_backend()?
                    .restore_vm(spec, ctx, &files)
                    .map_err(BackendError::from)
            }
        };
        Ok(started?)
    }

    /// After a restore: the guest takes the new sandbox's address and hostname, and mounts
    /// the new sandbox's workspace.
    pub(super) async fn thaw_restored(
        client: &GuestClient,
        spec: &SandboxSpec,
        net: Option<hearth_sandbox::backend::vm::GuestNet>,
    ) -> Result<(), SandboxError> {
        let thaw = VmThaw {
            net: net.map(|net| VmNetIdentity {
                address: net.address,
                prefix: net.prefix,
                gateway: net.gateway,
                dns: net.dns,
            }),
            hostname: Some(spec.id.as_str().to_owned()),
        };
        Ok(client.vm_thaw(&thaw).await?)
    }
}

/// Runs a guest request (quiesce, thaw). A paused guest cannot answer, so it runs for just this
/// request and is paused again: leaving a paused VM's workspace unmounted until some later
/// resume would let commands queued meanwhile see an empty /workspace.
async fn while_running<T>(
    qemu: &QemuBackend,
    id: &SandboxId,
    paused: bool,
    request: impl std::future::Future<Output = T>,
) -> Result<T, SandboxError> {
    let toggle = |pause: bool| {
        let (qemu, id) = (qemu.clone(), id.clone());
        blocking(move || {
            if pause {
                qemu.pause(&id)
            } else {
                qemu.resume(&id)
            }
        })
    };
    if paused {
        toggle(false).await?;
    }
    let answer = request.await;
    if paused {
        toggle(true).await?;
    }
    Ok(answer)
}

/// Runs a blocking QEMU call (QMP, files) off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, QemuError> + Send + 'static,
) -> Result<T, SandboxError> {
    Ok(tokio::task::spawn_blocking(work)
        .await?
        .map_err(BackendError::from)?)
}

/// Whether the sandbox to restore has the saved VM's memory and vCPUs (the CLI takes them
/// from the snapshot's record; the manifest is what the VM really had).
fn shape_matches(manifest: &FirecrackerManifest, spec: &SandboxSpec) -> bool {
    manifest.memory_mib == spec.limits.memory.0 >> 20
        && manifest.vcpus == hearth_sandbox::backend::firecracker::boot::vcpus(&spec.limits)
}

/// Bytes of the regular files directly in `dir` (a snapshot has no subdirectories).
fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(std::fs::Metadata::is_file)
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
