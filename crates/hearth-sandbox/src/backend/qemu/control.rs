//! The QEMU backend as a [`SandboxBackend`] with the [`VmControl`] capability: its blocking
//! work (QMP, tap ioctls, process waits) runs on tokio's blocking threads.

use std::path::Path;
use std::time::Duration;

use hearth_proto::VmThaw;

use super::{argv, QemuBackend, QemuError, SnapshotManifest};
use crate::backend::vm::{BootKernel, VmImagePaths, GUEST_VSOCK_PORT};
use crate::backend::{
    blocking, BackendError, BackendKind, GuestChannel, GuestEndpoint, LaunchContext,
    SandboxBackend, SavedVersions, SavedVm, VmControl,
};
use crate::dirs::SandboxDirs;
use crate::guest_client::GuestClient;
use crate::id::SandboxId;
use crate::spec::SandboxSpec;

/// A kernel boots before the guest answers: 7 to 8 s under TCG on the slowest hosts seen.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[async_trait::async_trait]
impl SandboxBackend for QemuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    fn describe(&self) -> String {
        let accel = match self.config.accel {
            super::Accel::Kvm => "kvm, microvm",
            super::Accel::Tcg => "tcg, pc",
        };
        format!("{} ({accel})", self.config.version)
    }

    fn vm_image(&self, restore: Option<&SavedVm>) -> Result<Option<VmImagePaths>, BackendError> {
        Ok(Some(match restore {
            // The restored kernel has the saved VM's rootfs mounted: that image, not the
            // current one.
            Some(saved) => self.images.of_saved(&saved.rootfs)?,
            None => self.images.current(BootKernel::Image)?,
        }))
    }

    fn guest_channel(&self, id: &SandboxId, dirs: &SandboxDirs) -> Option<GuestChannel> {
        Some(if self.config.vsock {
            GuestChannel::VhostVsock {
                cid: argv::cid_for(id.as_str()),
                port: GUEST_VSOCK_PORT,
            }
        } else {
            GuestChannel::Http2Mux {
                socket: dirs.vm_serial_socket(),
            }
        })
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
        _dirs: &SandboxDirs,
        client: &GuestClient,
    ) -> Result<(), BackendError> {
        self.wait_guest_ready(id, client, READY_TIMEOUT).await?;
        Ok(())
    }

    async fn remove(&self, id: &SandboxId) -> Result<(), BackendError> {
        let (this, id) = (self.clone(), id.clone());
        blocking(move || this.remove_vm(&id)).await
    }

    async fn is_running(&self, id: &SandboxId) -> Result<bool, BackendError> {
        Ok(self
            .vmm(&self.dirs.sandbox(id))
            .is_some_and(|stamp| stamp.is_alive()))
    }

    async fn list(&self) -> Result<Vec<String>, BackendError> {
        let names = self.dirs.list_sandbox_dirs().map_err(QemuError::from)?;
        Ok(names
            .into_iter()
            .filter(|name| {
                SandboxId::parse(name).is_ok_and(|id| {
                    self.vmm(&self.dirs.sandbox(&id))
                        .is_some_and(|stamp| stamp.is_alive())
                })
            })
            .collect())
    }

    fn vm(&self) -> Option<&dyn VmControl> {
        Some(self)
    }
}

#[async_trait::async_trait]
impl VmControl for QemuBackend {
    async fn pause(&self, id: &SandboxId) -> Result<String, BackendError> {
        self.set_running(id, false).await
    }

    async fn resume(&self, id: &SandboxId) -> Result<String, BackendError> {
        self.set_running(id, true).await
    }

    /// QEMU cannot migrate a mounted 9p share, so the guest unmounts its workspace for the
    /// save (`quiesce`) and mounts it again afterwards (`thaw`).
    async fn save(
        &self,
        id: &SandboxId,
        dest: &Path,
        guest: &GuestClient,
    ) -> Result<SavedVersions, BackendError> {
        let paused = {
            let (this, id) = (self.clone(), id.clone());
            blocking(move || this.status(&id)).await?.status == "paused"
        };
        self.while_running(id, paused, guest.vm_quiesce()).await??;
        let saved = {
            let (this, id, dest) = (self.clone(), id.clone(), dest.to_owned());
            blocking(move || this.snapshot(&id, &dest)).await
        };
        let thawed = self
            .while_running(id, paused, guest.vm_thaw(&VmThaw::default()))
            .await?;
        if let Err(err) = thawed {
            tracing::warn!(%id, error = %err, "the workspace could not be mounted again after the snapshot");
        }
        match saved {
            Ok(manifest) => Ok(SavedVersions {
                hearth: manifest.hearth_version,
                vmm: manifest.qemu_version,
            }),
            Err(BackendError::Qemu(QemuError::SnapshotExists { path })) => {
                Err(BackendError::SavedVmExists { dest: path })
            }
            Err(err) => Err(err),
        }
    }

    async fn check_saved(&self, dir: &Path, _spec: &SandboxSpec) -> Result<SavedVm, BackendError> {
        let (this, owned) = (self.clone(), dir.to_owned());
        match blocking(move || this.check_snapshot(&owned)).await {
            Ok(manifest) => Ok(saved_vm(dir, &manifest)),
            Err(BackendError::Qemu(QemuError::File { source, .. }))
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Err(BackendError::SavedVmMissing {
                    dir: dir.to_owned(),
                })
            }
            Err(err) => Err(err),
        }
    }

    async fn restore(
        &self,
        spec: &SandboxSpec,
        ctx: &LaunchContext,
        saved: &SavedVm,
    ) -> Result<GuestEndpoint, BackendError> {
        let (this, spec, ctx, dir) = (self.clone(), spec.clone(), ctx.clone(), saved.dir.clone());
        blocking(move || this.start_from_snapshot(&spec, &ctx, &dir)).await
    }
}

impl QemuBackend {
    /// QMP `cont` or `stop`; returns QEMU's status afterwards.
    async fn set_running(&self, id: &SandboxId, run: bool) -> Result<String, BackendError> {
        let (this, id) = (self.clone(), id.clone());
        blocking(move || {
            if run {
                this.resume(&id)?;
            } else {
                this.pause(&id)?;
            }
            this.status(&id).map(|status| status.status)
        })
        .await
    }

    /// Runs a guest request (quiesce, thaw). A paused guest cannot answer, so it runs for just
    /// this request and is paused again: leaving a paused VM's workspace unmounted until some
    /// later resume would let commands queued meanwhile see an empty /workspace.
    async fn while_running<T>(
        &self,
        id: &SandboxId,
        paused: bool,
        request: impl std::future::Future<Output = T> + Send,
    ) -> Result<T, BackendError> {
        if paused {
            self.set_running(id, true).await?;
        }
        let answer = request.await;
        if paused {
            self.set_running(id, false).await?;
        }
        Ok(answer)
    }
}

fn saved_vm(dir: &Path, manifest: &SnapshotManifest) -> SavedVm {
    SavedVm {
        dir: dir.to_owned(),
        rootfs: manifest.rootfs.clone(),
        nic: manifest.nic,
    }
}
