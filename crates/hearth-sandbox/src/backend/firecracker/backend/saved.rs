//! Snapshots kept beyond the VM: a snapshot's files moved into a directory of their own, with
//! a manifest saying what a restore must match, and the check of that manifest before a
//! restore creates anything.
//!
//! Firecracker writes a snapshot into the VM's own directory (the only place a jailed VMM can
//! write); the files are then moved out, since the VM's directory goes with the sandbox.
//!
//! What a restore must match:
//! - hearth's version (the guest channel and config drive are hearth's formats) and
//!   Firecracker's (its snapshot format is only loadable by the same version);
//! - the launch mode: the saved device state names the drives as the VMM saw them, `/config.img`
//!   in a jail and `<runtime>/vmm-view/config.img` run directly; each new VM has its own files
//!   at the same names, but only in the same mode;
//! - the root filesystem: the saved kernel has it mounted, so the restore is given that same
//!   content-addressed image, not the current one.
//!
//! The kernel and initramfs are not needed: they live in the saved memory.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{FirecrackerBackend, LaunchMode, SnapshotFiles};
use crate::backend::firecracker::FirecrackerError;
use crate::id::SandboxId;

/// The manifest of a saved snapshot, in its directory.
pub const SNAPSHOT_MANIFEST: &str = "manifest.json";
/// The saved device state and guest memory, in the snapshot's directory.
pub const SAVED_STATE: &str = "vm.state";
pub const SAVED_MEMORY: &str = "vm.mem";
/// What a VM was started with, in its `vm/` dir: a snapshot's manifest is made from it.
const LAUNCH_RECORD: &str = "launch.json";
/// Held while a snapshot of the VM is taken, in its `vm/` dir.
const SNAPSHOT_LOCK: &str = "snapshot.lock";

/// How the VMM was run, which fixes the paths it saw its files at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LaunchKind {
    Direct,
    Jailed,
}

impl std::fmt::Display for LaunchKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Direct => "direct (--firecracker-direct or no jailer)",
            Self::Jailed => "the jailer",
        })
    }
}

/// What a snapshot's VM was, and what a restore must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    pub hearth_version: String,
    pub firecracker_version: String,
    pub launch: LaunchKind,
    pub memory_mib: u64,
    pub vcpus: u8,
    pub nic: bool,
    /// The guest image's root filesystem on the host (images are content-addressed, so the
    /// path names the content).
    pub rootfs: PathBuf,
}

/// What a VM was started with (the manifest without the versions, which are read at save).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct LaunchRecord {
    pub launch: LaunchKind,
    pub memory_mib: u64,
    pub vcpus: u8,
    pub nic: bool,
    pub rootfs: PathBuf,
}

impl FirecrackerBackend {
    fn launch_kind(&self) -> LaunchKind {
        match self.config.mode {
            LaunchMode::Direct => LaunchKind::Direct,
            LaunchMode::Jailed(_) => LaunchKind::Jailed,
        }
    }

    /// The version of the `firecracker` binary a restore would run, or why it is unknown.
    fn firecracker_version(&self) -> Result<String, FirecrackerError> {
        self.binary_version()
            .ok_or_else(|| FirecrackerError::VersionUnknown {
                binary: self.config.firecracker.clone(),
            })
    }

    /// Writes the launch record into the new VM's `vm/` dir.
    pub(super) fn write_launch_record(
        &self,
        id: &SandboxId,
        record: &LaunchRecord,
    ) -> Result<(), FirecrackerError> {
        let path = self.dirs(id).vm_dir().join(LAUNCH_RECORD);
        write_new(&path, &serde_json::to_vec_pretty(record)?)
    }

    pub(super) fn new_launch_record(
        &self,
        limits: &crate::spec::ResourceLimits,
        nic: bool,
        rootfs: &Path,
    ) -> LaunchRecord {
        LaunchRecord {
            launch: self.launch_kind(),
            memory_mib: limits.memory.0 >> 20,
            vcpus: crate::backend::firecracker::boot::vcpus(limits),
            nic,
            rootfs: rootfs.to_owned(),
        }
    }

    /// Takes a full snapshot of a running (or paused) VM into the new directory `dest` (0700,
    /// its files 0600: the memory holds the workload's secrets). The VM goes on as it was.
    /// On failure `dest` and the VM dir's snapshot files are removed. One snapshot of a VM at
    /// a time: a second is refused while the first runs (they would share its files and its
    /// pause).
    pub async fn save_snapshot(
        &self,
        id: &SandboxId,
        dest: &Path,
    ) -> Result<SnapshotManifest, FirecrackerError> {
        let vm_dir = self.dirs(id).vm_dir();
        let record: LaunchRecord = match read_json(&vm_dir.join(LAUNCH_RECORD)) {
            Err(FirecrackerError::SnapshotFile { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(if self.vm_running(id)? {
                    FirecrackerError::NoLaunchRecord { id: id.clone() }
                } else {
                    FirecrackerError::NotRunning { id: id.clone() }
                });
            }
            other => other?,
        };
        let _one_at_a_time = lock_snapshots(&vm_dir, id)?;
        match DirBuilder::new().mode(0o700).create(dest) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(FirecrackerError::SnapshotExists {
                    path: dest.to_owned(),
                })
            }
            Err(source) => return Err(file_error(dest, source)),
        }
        let saved = self.save_into(id, dest, record).await;
        if saved.is_err() {
            let _ = std::fs::remove_dir_all(dest);
        }
        saved
    }

    async fn save_into(
        &self,
        id: &SandboxId,
        dest: &Path,
        record: LaunchRecord,
    ) -> Result<SnapshotManifest, FirecrackerError> {
        // The version of the VMM that writes the snapshot, not of whatever binary this call
        // was given: only that one can load it.
        let running = self.api_client(id).instance_info().await?;
        let taken = self.snapshot(id).await;
        // Whatever happened, nothing of the snapshot stays in the VM's dir (or jail).
        let layout = self.layout(id);
        let leftovers = [
            layout.host(crate::backend::firecracker::layout::SNAPSHOT_STATE),
            layout.host(crate::backend::firecracker::layout::SNAPSHOT_MEMORY),
        ];
        let moved = match &taken {
            Ok(files) => {
                let moves = [
                    (files.state.clone(), dest.join(SAVED_STATE)),
                    (files.memory.clone(), dest.join(SAVED_MEMORY)),
                ];
                // Gigabytes of guest memory: off the async threads.
                tokio::task::spawn_blocking(move || {
                    moves.iter().try_for_each(|(from, to)| move_file(from, to))
                })
                .await
                .unwrap_or_else(|err| Err(FirecrackerError::Runtime(std::io::Error::other(err))))
            }
            Err(_) => Ok(()),
        };
        for file in leftovers {
            let _ = std::fs::remove_file(file);
        }
        taken?;
        moved?;
        let manifest = SnapshotManifest {
            hearth_version: env!("CARGO_PKG_VERSION").to_owned(),
            firecracker_version: running.vmm_version,
            launch: record.launch,
            memory_mib: record.memory_mib,
            vcpus: record.vcpus,
            nic: record.nic,
            rootfs: record.rootfs,
        };
        write_new(
            &dest.join(SNAPSHOT_MANIFEST),
            &serde_json::to_vec_pretty(&manifest)?,
        )?;
        Ok(manifest)
    }

    /// Reads a snapshot's manifest and checks it against this host's hearth, Firecracker and
    /// launch mode, before anything of a restore is made.
    pub fn check_snapshot(&self, dir: &Path) -> Result<SnapshotManifest, FirecrackerError> {
        let saved: SnapshotManifest = read_json(&dir.join(SNAPSHOT_MANIFEST))?;
        let mismatch = |field: &'static str, snapshot: String, here: String| {
            Err(FirecrackerError::SnapshotMismatch {
                path: dir.to_owned(),
                field,
                snapshot,
                here,
            })
        };
        let hearth = env!("CARGO_PKG_VERSION");
        if saved.hearth_version != hearth {
            return mismatch("hearth", saved.hearth_version, hearth.to_owned());
        }
        let firecracker = self.firecracker_version()?;
        if saved.firecracker_version != firecracker {
            return mismatch("Firecracker", saved.firecracker_version, firecracker);
        }
        let launch = self.launch_kind();
        if saved.launch != launch {
            return mismatch("launch mode", saved.launch.to_string(), launch.to_string());
        }
        for name in [SAVED_STATE, SAVED_MEMORY] {
            let path = dir.join(name);
            std::fs::metadata(&path).map_err(|source| file_error(&path, source))?;
        }
        Ok(saved)
    }
}

/// The saved state and memory in a snapshot's directory.
pub fn saved_files(dir: &Path) -> SnapshotFiles {
    SnapshotFiles {
        state: dir.join(SAVED_STATE),
        memory: dir.join(SAVED_MEMORY),
    }
}

/// Takes `vm/snapshot.lock` for the caller's lifetime, or says another snapshot holds it.
fn lock_snapshots(
    vm_dir: &Path,
    id: &SandboxId,
) -> Result<nix::fcntl::Flock<File>, FirecrackerError> {
    let path = vm_dir.join(SNAPSHOT_LOCK);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|source| file_error(&path, source))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| match errno {
            nix::errno::Errno::EWOULDBLOCK => FirecrackerError::SnapshotBusy { id: id.clone() },
            other => file_error(&path, other.into()),
        },
    )
}

fn file_error(path: &Path, source: std::io::Error) -> FirecrackerError {
    FirecrackerError::SnapshotFile {
        path: path.to_owned(),
        source,
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, FirecrackerError> {
    let bytes = std::fs::read(path).map_err(|source| file_error(path, source))?;
    serde_json::from_slice(&bytes).map_err(|source| FirecrackerError::SnapshotManifest {
        path: path.to_owned(),
        source,
    })
}

/// Creates `path` (0600, never over an existing file) with `bytes`.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), FirecrackerError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(bytes))
        .map_err(|source| file_error(path, source))
}

/// Moves `from` to the new file `to` (0600, owned by hearth): a copy, since the VM's dir is on
/// the runtime filesystem (often tmpfs) and snapshots live under the state dir, and since a
/// jailed VMM's files belong to its uid. The copy uses `copy_file_range` where it can.
fn move_file(from: &Path, to: &Path) -> Result<(), FirecrackerError> {
    let mut source = File::open(from).map_err(|source| file_error(from, source))?;
    let mut dest = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(|source| file_error(to, source))?;
    std::io::copy(&mut source, &mut dest).map_err(|source| file_error(to, source))?;
    dest.sync_all().map_err(|source| file_error(to, source))?;
    std::fs::remove_file(from).map_err(|source| file_error(from, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_round_trips_and_names_its_launch_mode() {
        let manifest = SnapshotManifest {
            hearth_version: "0.1.0".into(),
            firecracker_version: "1.17.0".into(),
            launch: LaunchKind::Jailed,
            memory_mib: 512,
            vcpus: 1,
            nic: true,
            rootfs: "/var/lib/hearth/images/ab/rootfs.ext4".into(),
        };
        let text = serde_json::to_string(&manifest).unwrap();
        assert!(text.contains(r#""launch":"jailed""#), "{text}");
        assert_eq!(
            serde_json::from_str::<SnapshotManifest>(&text).unwrap(),
            manifest
        );
    }

    #[test]
    fn a_moved_file_is_private_and_gone_from_its_place() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let (from, to) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::write(&from, b"memory").unwrap();
        std::fs::set_permissions(&from, std::fs::Permissions::from_mode(0o644)).unwrap();
        move_file(&from, &to).unwrap();
        assert!(!from.exists());
        assert_eq!(std::fs::read(&to).unwrap(), b"memory");
        let mode = std::fs::metadata(&to).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Never over an existing file.
        std::fs::write(&from, b"again").unwrap();
        assert!(move_file(&from, &to).is_err());
        assert_eq!(std::fs::read(&to).unwrap(), b"memory");
    }
}
