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

use hearth_proto::{VmNetIdentity, VmThaw};
use hearth_sandbox::backend::{BackendError, SavedVm};
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
    pub saved: SavedVm,
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
        let backend = self.backends.get(record.spec.backend)?;
        let vm = self.vm_of(backend, id, "be snapshotted")?;
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
        // No liveness check here: a dead VMM fails the save and is noted below, as the VMM's.
        let guest = GuestClient::new(self.dirs.sandbox(id).guest_socket());
        let versions = match vm.save(id, &dest, &guest).await {
            Ok(versions) => versions,
            Err(BackendError::SavedVmExists { .. }) => {
                return Err(SandboxError::SnapshotExists(name))
            }
            Err(err) => {
                // A call that failed may have been the VMM dying (of its own filter, say).
                if let Err(note) = self
                    .note_if_gone(backend, id, super::vm::grace_for(&err))
                    .await
                {
                    tracing::warn!(%id, error = %note, "cannot tell whether the VMM is gone");
                }
                return Err(err.into());
            }
        };
        let snapshot = new_snapshot_record(
            name.clone(),
            &record.spec,
            dir_size(&dest),
            versions.hearth,
            versions.vmm,
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
        let backend = self.backends.get_for_create(spec.backend)?;
        let Some(vm) = backend.vm() else {
            return Err(SandboxError::SnapshotConflict(format!(
                "snapshot {name} is not of a microVM"
            )));
        };
        let saved = match vm.check_saved(&dir, spec).await {
            Ok(saved) => saved,
            Err(BackendError::SavedVmMissing { .. }) => {
                return Err(SandboxError::SnapshotNotFound(name.clone()))
            }
            Err(BackendError::SavedVmConflict(reason)) => {
                return Err(SandboxError::SnapshotConflict(format!(
                    "snapshot {name}: {reason}"
                )))
            }
            Err(err) => return Err(err.into()),
        };
        let wants_nic = spec.net.mode != hearth_net::NetMode::None;
        if saved.nic != wants_nic {
            return Err(SandboxError::SnapshotConflict(format!(
                "snapshot {name} was taken {} a network; create the sandbox {}",
                if saved.nic { "with" } else { "without" },
                if saved.nic {
                    "with --net gateway or allowlist"
                } else {
                    "with --net none"
                },
            )));
        }
        // The VM's size and guest policy come from the saved VM; the CLI fills them in.
        debug_assert_eq!(spec.seccomp, snapshot.spec.seccomp);
        debug_assert_eq!(spec.guest_seccomp, snapshot.spec.guest_seccomp);
        self.create_with(spec, Some(Restore { saved })).await
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
