//! Wiring QEMU into hearth: which QEMU this host has (probed once and cached), and where the
//! guest images VMs boot live.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use hearth_image::VmImages;
use hearth_sandbox::backend::qemu::{QemuBackend, QemuConfig, QemuSupport, DEFAULT_BINARY};
use hearth_sandbox::dirs::RuntimeDirs;
use serde::{Deserialize, Serialize};

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
        Arc::new(VmImages::new(state_dir)),
    )))
}

/// Where built guest images live.
pub fn images_dir(state_dir: &Path) -> PathBuf {
    VmImages::new(state_dir).images_dir()
}
