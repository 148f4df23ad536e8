//! Wiring the microVM backends into hearth: which QEMU this host has (probed once and cached),
//! the guest image a VM boots, and the relay the sandbox's supervisor runs in front of its guest.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use hearth_image::GuestImage;
use hearth_sandbox::backend::qemu::{QemuBackend, QemuConfig, QemuSupport, DEFAULT_BINARY};
use hearth_sandbox::backend::vm::{VmImagePaths, GUEST_VSOCK_PORT};
use hearth_sandbox::backend::{BackendKind, FirecrackerBackend};
use hearth_sandbox::dirs::{RuntimeDirs, SandboxDirs};
use hearth_sandbox::SandboxId;
use serde::{Deserialize, Serialize};

use crate::supervisor::relay::RelayDuty;

/// The probe result, kept under the state dir: the KVM probe really boots something and costs up
/// to 3 s on hosts where KVM is unusable, too much for every command.
const QEMU_PROBE_FILE: &str = "qemu-probe.json";

#[derive(Debug, Serialize, Deserialize)]
struct CachedProbe {
    /// Size and mtime of the QEMU binary probed: a new QEMU is probed again.
    binary_stamp: (u64, u64),
    support: QemuSupport,
}

/// The QEMU binary's path, size and mtime, if it is installed.
fn qemu_binary() -> Option<(PathBuf, (u64, u64))> {
    let path = hearth_sandbox::host_tools::find_in_path(DEFAULT_BINARY)?;
    let meta = std::fs::metadata(&path).ok()?;
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some((path, (meta.len(), mtime)))
}

/// What QEMU can do here, from the cache when the binary is unchanged; `None` without QEMU.
/// `refresh` probes again whatever the cache says (`hearth doctor`).
pub fn qemu_support(state_dir: &Path, refresh: bool) -> Option<QemuSupport> {
    let (binary, stamp) = qemu_binary()?;
    let cache = state_dir.join(QEMU_PROBE_FILE);
    if !refresh {
        let cached = std::fs::read(&cache)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<CachedProbe>(&bytes).ok());
        if let Some(cached) = cached.filter(|c| c.binary_stamp == stamp) {
            return Some(cached.support);
        }
    }
    let scratch = tempfile::Builder::new()
        .prefix("qemu-probe-")
        .tempdir_in(state_dir)
        .ok()?;
    let support = match QemuSupport::probe(&binary, scratch.path()) {
        Ok(support) => support,
        Err(err) => {
            tracing::warn!(%err, "QEMU is installed but cannot run");
            return None;
        }
    };
    let record = CachedProbe {
        binary_stamp: stamp,
        support: support.clone(),
    };
    if let Err(err) = write_private(&cache, &serde_json::to_vec(&record).unwrap_or_default()) {
        tracing::warn!(%err, path = %cache.display(), "cannot cache the QEMU probe");
    }
    Some(support)
}

/// Replaces `path` atomically with a 0600 file holding `bytes`.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.persist(path).map_err(|err| err.error)?;
    Ok(())
}

/// The QEMU backend of this host, if QEMU runs here.
pub fn qemu_backend(state_dir: &Path, dirs: &RuntimeDirs) -> Option<Arc<QemuBackend>> {
    let support = qemu_support(state_dir, false)?;
    Some(Arc::new(QemuBackend::new(
        QemuConfig::from_support(&support),
        dirs.clone(),
    )))
}

/// Where built guest images live.
pub fn images_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("images")
}

/// The current guest image's files, or why there is none.
pub fn guest_image(state_dir: &Path) -> Result<VmImagePaths, hearth_image::ImageError> {
    let image = GuestImage::current(&images_dir(state_dir))?;
    Ok(VmImagePaths {
        kernel: image.kernel,
        initrd: image.initrd,
        rootfs: image.rootfs,
    })
}

/// The guest image whose root filesystem is `rootfs` (recorded by a snapshot), if it is still
/// one of the complete images under the state dir.
pub fn guest_image_of(
    state_dir: &Path,
    rootfs: &Path,
) -> Result<VmImagePaths, hearth_image::ImageError> {
    let images = images_dir(state_dir);
    let hash = rootfs
        .parent()
        .filter(|dir| dir.parent() == Some(images.as_path()))
        .and_then(Path::file_name)
        .and_then(|name| name.to_str())
        .unwrap_or_default();
    let image = GuestImage::open(&images, hash)?;
    if image.rootfs != rootfs {
        return Err(hearth_image::ImageError::Damaged {
            hash: hash.to_owned(),
            problem: format!("its rootfs is {}", image.rootfs.display()),
        });
    }
    Ok(VmImagePaths {
        kernel: image.kernel,
        initrd: image.initrd,
        rootfs: image.rootfs,
    })
}

/// What the supervisor's relay forwards to for a VM sandbox; `None` for OCI sandboxes, whose
/// guest socket is served by `hearth-guest` itself.
pub fn relay_duty(
    kind: BackendKind,
    qemu: Option<&QemuBackend>,
    firecracker: Option<&FirecrackerBackend>,
    id: &SandboxId,
    dirs: &SandboxDirs,
) -> Option<RelayDuty> {
    match kind {
        BackendKind::Oci => None,
        BackendKind::Qemu => Some(match qemu {
            Some(qemu) if qemu.config().vsock => RelayDuty::VhostVsock {
                cid: hearth_sandbox::backend::qemu::argv::cid_for(id.as_str()),
                port: GUEST_VSOCK_PORT,
            },
            _ => RelayDuty::Http2Mux {
                socket: dirs.vm_serial_socket(),
            },
        }),
        // Jailed, Firecracker's vsock socket is inside the jail's root, not in vm/.
        BackendKind::Firecracker => Some(match firecracker {
            Some(firecracker) => {
                let connector = firecracker.guest_connector(id);
                RelayDuty::FirecrackerVsock {
                    uds: connector.uds,
                    port: connector.port,
                }
            }
            None => RelayDuty::FirecrackerVsock {
                uds: dirs.vm_vsock_socket(),
                port: GUEST_VSOCK_PORT,
            },
        }),
    }
}
