//! The Firecracker backend as a [`SandboxBackend`] with the [`VmControl`] capability, and what
//! its VMM's end says (a VMM killed by its own seccomp filter goes into the sandbox's audit).

use std::path::Path;
use std::time::Duration;

use hearth_seccomp::audit::{AuditConfig, AuditEntry, SeccompAuditLog, VmmFault};

use super::{saved_files, FirecrackerBackend, LaunchMode, SnapshotManifest};
use crate::backend::firecracker::FirecrackerError;
use crate::backend::vm::{BootKernel, VmImagePaths};
use crate::backend::{
    blocking, BackendError, BackendKind, GuestChannel, GuestEndpoint, LaunchContext, ObservedExit,
    SandboxBackend, SavedVersions, SavedVm, VmControl,
};
use crate::dirs::SandboxDirs;
use crate::guest_client::GuestClient;
use crate::id::SandboxId;
use crate::spec::SandboxSpec;

/// A kernel boots before the guest answers.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[async_trait::async_trait]
impl SandboxBackend for FirecrackerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Firecracker
    }

    fn describe(&self) -> String {
        let version = self
            .binary_version()
            .map_or_else(|| "firecracker".to_owned(), |v| format!("firecracker {v}"));
        match &self.config.mode {
            LaunchMode::Direct => version,
            LaunchMode::Jailed(_) => format!("{version} (jailer)"),
        }
    }

    /// Firecracker has no shared filesystem: the guest's /workspace lives in the VM.
    fn mounts_workspace(&self) -> bool {
        false
    }

    fn vm_image(&self, restore: Option<&SavedVm>) -> Result<Option<VmImagePaths>, BackendError> {
        Ok(Some(match restore {
            Some(saved) => self.images.of_saved(&saved.rootfs)?,
            None => self.images.current(BootKernel::Firecracker)?,
        }))
    }

    /// Jailed, Firecracker's vsock socket is inside the jail's root, not in vm/.
    fn guest_channel(&self, id: &SandboxId, _dirs: &SandboxDirs) -> Option<GuestChannel> {
        let connector = self.guest_connector(id);
        Some(GuestChannel::FirecrackerVsock {
            uds: connector.uds,
            port: connector.port,
        })
    }

    async fn start(
        &self,
        spec: &SandboxSpec,
        ctx: &LaunchContext,
    ) -> Result<GuestEndpoint, BackendError> {
        Ok(self.start_vm(spec, ctx).await?)
    }

    async fn wait_ready(
        &self,
        id: &SandboxId,
        _dirs: &SandboxDirs,
        client: &GuestClient,
    ) -> Result<(), BackendError> {
        self.wait_guest_ready(id, client, READY_TIMEOUT).await?;
        Ok(())
    }

    /// The VMM's exit status (when this process spawned it) and its logs tell whether its own
    /// seccomp filter killed it; if so the syscall becomes a `vmm_fault` audit entry.
    async fn observed_exit(&self, id: &SandboxId) -> Option<ObservedExit> {
        if self.vm_running(id).unwrap_or(false) {
            // A live VMM has no end to tell (and its log no fault to read).
            return None;
        }
        let (status, log) = match self.vmm_exit(id) {
            Some(exit) => (exit.exit_status(), exit.log),
            // Not our child (the CLI that created it has exited): the log still names the call.
            None => (-1, self.vmm_log_tail(id)),
        };
        let mut audit = match SeccompAuditLog::new(AuditConfig::default()) {
            Ok(audit) => audit,
            Err(err) => {
                tracing::warn!(%id, %err, "cannot classify the VMM's exit");
                return None;
            }
        };
        if audit.record_vmm_fault(status, &log) == VmmFault::None {
            return None;
        }
        let entries = audit.recent_since(0);
        Some(ObservedExit {
            audit: if entries.is_empty() {
                // Exit 148 without a log line naming the call: still a fault, number unknown.
                vec![AuditEntry::vmm_fault(-1)]
            } else {
                entries
            },
            summary: format!(
                "the Firecracker VMM was killed by its seccomp filter (status {status})"
            ),
        })
    }

    async fn remove(&self, id: &SandboxId) -> Result<(), BackendError> {
        let (this, id) = (self.clone(), id.clone());
        blocking(move || this.remove_vm(&id, &this.dirs(&id))).await
    }

    async fn is_running(&self, id: &SandboxId) -> Result<bool, BackendError> {
        Ok(self.vm_running(id)?)
    }

    async fn list(&self) -> Result<Vec<String>, BackendError> {
        let this = self.clone();
        blocking(move || this.list_vms()).await
    }

    fn vm(&self) -> Option<&dyn VmControl> {
        Some(self)
    }
}

#[async_trait::async_trait]
impl VmControl for FirecrackerBackend {
    /// `PATCH /vm` Paused; returns Firecracker's state afterwards.
    async fn pause(&self, id: &SandboxId) -> Result<String, BackendError> {
        FirecrackerBackend::pause(self, id).await?;
        self.state(id).await
    }

    async fn resume(&self, id: &SandboxId) -> Result<String, BackendError> {
        FirecrackerBackend::resume(self, id).await?;
        self.state(id).await
    }

    /// Pause, `PUT /snapshot/create`, resume, files moved to `dest`. Firecracker shares no
    /// host directory, so there is nothing for the guest to unmount.
    async fn save(
        &self,
        id: &SandboxId,
        dest: &Path,
        _guest: &GuestClient,
    ) -> Result<SavedVersions, BackendError> {
        match self.save_snapshot(id, dest).await {
            Ok(manifest) => Ok(SavedVersions {
                hearth: manifest.hearth_version,
                vmm: manifest.firecracker_version,
            }),
            Err(FirecrackerError::SnapshotExists { path }) => {
                Err(BackendError::SavedVmExists { dest: path })
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Also checks the sandbox to restore has the saved VM's memory and vCPUs (the VM's size
    /// lives in its saved state).
    async fn check_saved(&self, dir: &Path, spec: &SandboxSpec) -> Result<SavedVm, BackendError> {
        // It runs `firecracker --version`.
        let (this, owned) = (self.clone(), dir.to_owned());
        let manifest = match blocking(move || this.check_snapshot(&owned)).await {
            Ok(manifest) => manifest,
            Err(BackendError::Firecracker(FirecrackerError::SnapshotFile { source, .. }))
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(BackendError::SavedVmMissing {
                    dir: dir.to_owned(),
                })
            }
            Err(err) => return Err(err),
        };
        if !shape_matches(&manifest, spec) {
            return Err(BackendError::SavedVmConflict(format!(
                "the saved VM in {} has {} MiB and {} vCPUs, the sandbox to restore {} MiB and {} \
                 CPUs",
                dir.display(),
                manifest.memory_mib,
                manifest.vcpus,
                spec.limits.memory.0 >> 20,
                spec.limits.cpus.0
            )));
        }
        Ok(SavedVm {
            dir: dir.to_owned(),
            rootfs: manifest.rootfs,
            nic: manifest.nic,
        })
    }

    async fn restore(
        &self,
        spec: &SandboxSpec,
        ctx: &LaunchContext,
        saved: &SavedVm,
    ) -> Result<GuestEndpoint, BackendError> {
        Ok(self.restore_vm(spec, ctx, &saved_files(&saved.dir)).await?)
    }
}

impl FirecrackerBackend {
    /// Firecracker's VM state, lower-cased (`paused`, `running`).
    async fn state(&self, id: &SandboxId) -> Result<String, BackendError> {
        let info = self
            .api_client(id)
            .instance_info()
            .await
            .map_err(FirecrackerError::from)?;
        Ok(info.state.to_lowercase())
    }
}

/// Whether the sandbox to restore has the saved VM's memory and vCPUs.
fn shape_matches(manifest: &SnapshotManifest, spec: &SandboxSpec) -> bool {
    manifest.memory_mib == spec.limits.memory.0 >> 20
        && manifest.vcpus == crate::backend::firecracker::boot::vcpus(&spec.limits)
}
