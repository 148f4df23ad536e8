//! Snapshots of a QEMU VM: its RAM and device state as a QEMU migration stream in a file.
//!
//! QEMU 7.2 has no `file:` migration target, and `exec:` would need the fork that
//! `-sandbox spawn=deny` forbids, so hearth opens the file itself and hands QEMU the fd over QMP
//! (`getfd`, then `migrate fd:NAME`); restoring starts QEMU with `-incoming defer` and feeds the
//! file back the same way (`migrate-incoming`). The disks are read-only (rootfs, config drive)
//! and the workspace lives on the host, so RAM and device state are the whole VM.
//!
//! A snapshot is a directory: `vm.state` (the stream) and `snapshot.json` ([`SnapshotManifest`]).
//! A restore must recreate the same virtual hardware, so the manifest records what shapes it
//! (QEMU version, accelerator, memory, vCPUs, channel, NIC, workspace) and a restore that would
//! differ is refused with a clear error instead of QEMU's opaque "load of migration failed".
//! The guest keeps the network identity it had: restore into a sandbox on the same address.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::argv::{Accel, Channel, QemuPlan};
use super::{QemuBackend, QemuConfig, QemuError, Qmp, QmpError};
use crate::backend::{GuestEndpoint, LaunchContext};
use crate::id::SandboxId;
use crate::spec::SandboxSpec;

pub const STATE_FILE: &str = "vm.state";
pub const MANIFEST_FILE: &str = "snapshot.json";
/// What a running VM records about itself at start, copied into each snapshot's manifest.
const LAUNCH_MANIFEST: &str = "launch.json";
const FD_NAME: &str = "hearth-snapshot";
/// How long saving or loading the state may take (RAM size over disk speed, zero pages skipped).
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(300);

/// What a snapshot's virtual hardware was; a restore must match it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    /// hearth's version: the guest channel and config drive formats are hearth's.
    pub hearth_version: String,
    pub qemu_version: String,
    pub accel: Accel,
    pub memory_mib: u64,
    pub vcpus: u32,
    /// `virtio-serial` or `vsock`.
    pub channel: String,
    pub nic: bool,
    pub workspace: bool,
    /// The guest image's root filesystem. The restored kernel has it mounted, with its
    /// metadata cached in the saved RAM: resuming it on another disk would read garbage.
    /// (Images are content-addressed, so the path names the content.)
    pub rootfs: std::path::PathBuf,
}

impl SnapshotManifest {
    pub(super) fn of(config: &QemuConfig, plan: &QemuPlan) -> Self {
        Self {
            hearth_version: env!("CARGO_PKG_VERSION").to_owned(),
            qemu_version: config.version.clone(),
            accel: plan.accel,
            memory_mib: plan.memory_mib,
            vcpus: plan.vcpus,
            channel: match plan.channel {
                Channel::VirtioSerial { .. } => "virtio-serial".into(),
                Channel::Vsock { .. } => "vsock".into(),
            },
            nic: plan.nic.is_some(),
            workspace: plan.workspace.is_some(),
            rootfs: plan.image.rootfs.clone(),
        }
    }

    /// The first field where `here` differs, as (name, snapshot's, here's).
    fn mismatch(&self, here: &Self) -> Option<(&'static str, String, String)> {
        let fields = [
            (
                "hearth",
                self.hearth_version.clone(),
                here.hearth_version.clone(),
            ),
            ("QEMU", self.qemu_version.clone(), here.qemu_version.clone()),
            (
                "accelerator",
                format!("{:?}", self.accel),
                format!("{:?}", here.accel),
            ),
            (
                "memory (MiB)",
                self.memory_mib.to_string(),
                here.memory_mib.to_string(),
            ),
            ("vCPUs", self.vcpus.to_string(), here.vcpus.to_string()),
            ("guest channel", self.channel.clone(), here.channel.clone()),
            ("a NIC", self.nic.to_string(), here.nic.to_string()),
            (
                "a workspace",
                self.workspace.to_string(),
                here.workspace.to_string(),
            ),
            (
                "guest image rootfs",
                self.rootfs.display().to_string(),
                here.rootfs.display().to_string(),
            ),
        ];
        fields.into_iter().find(|(_, a, b)| a != b)
    }
}

pub(super) fn write_launch_manifest(
    vm_dir: &Path,
    config: &QemuConfig,
    plan: &QemuPlan,
) -> Result<(), QemuError> {
    write_json(
        &vm_dir.join(LAUNCH_MANIFEST),
        &SnapshotManifest::of(config, plan),
    )
}

fn write_json(path: &Path, manifest: &SnapshotManifest) -> Result<(), QemuError> {
    // A struct of strings and numbers always serializes.
    let text = serde_json::to_vec_pretty(manifest).unwrap_or_default();
    let file_err = |source| QemuError::File {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(file_err)?;
    std::io::Write::write_all(&mut file, &text).map_err(file_err)
}

fn read_manifest(path: &Path) -> Result<SnapshotManifest, QemuError> {
    let text = fs::read(path).map_err(|source| QemuError::File {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| QemuError::SnapshotManifest {
        path: path.to_owned(),
        source,
    })
}

impl SnapshotManifest {
    /// The manifest of the snapshot directory `dir`.
    pub fn read(dir: &Path) -> Result<Self, QemuError> {
        read_manifest(&dir.join(MANIFEST_FILE))
    }
}

impl QemuBackend {
    /// Reads `snapshot`'s manifest and refuses it when this host's hearth or QEMU could not
    /// resume it whatever the new sandbox's settings: another version, accelerator or guest
    /// channel. Cheap and side-effect free, so callers check before creating anything.
    pub fn check_snapshot(&self, snapshot: &Path) -> Result<SnapshotManifest, QemuError> {
        let saved = SnapshotManifest::read(snapshot)?;
        let channel = if self.config.vsock {
            "vsock"
        } else {
            "virtio-serial"
        };
        let here = SnapshotManifest {
            hearth_version: env!("CARGO_PKG_VERSION").to_owned(),
            qemu_version: self.config.version.clone(),
            accel: self.config.accel,
            channel: channel.to_owned(),
            ..saved.clone()
        };
        match saved.mismatch(&here) {
            Some((field, snap, here)) => Err(QemuError::SnapshotMismatch {
                path: snapshot.to_owned(),
                field,
                snapshot: snap,
                here,
            }),
            None => Ok(saved),
        }
    }

    /// Saves the VM's state into the new directory `dest` (0700). The VM is paused while the
    /// state is written and runs again afterwards if it was running.
    pub fn snapshot(&self, id: &SandboxId, dest: &Path) -> Result<SnapshotManifest, QemuError> {
        let mut qmp = self.qmp(id)?;
        let dirs = self.dirs.sandbox(id);
        let manifest = read_manifest(&dirs.vm_dir().join(LAUNCH_MANIFEST))?;
        match DirBuilder::new().mode(0o700).create(dest) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(QemuError::SnapshotExists {
                    path: dest.to_owned(),
                })
            }
            Err(source) => {
                return Err(QemuError::File {
                    path: dest.to_owned(),
                    source,
                })
            }
        }
        let saved = save(id, &mut qmp, dest)
            .and_then(|()| write_json(&dest.join(MANIFEST_FILE), &manifest));
        if saved.is_err() {
            let _ = fs::remove_dir_all(dest);
        }
        saved.map(|()| manifest)
    }

    /// Creates the sandbox like [`SandboxBackend::start`](crate::backend::SandboxBackend::start),
    /// but resumes the VM saved in `snapshot` instead of booting. The spec and context must give
    /// the same virtual hardware as when the snapshot was taken.
    pub fn start_from_snapshot(
        &self,
        spec: &SandboxSpec,
        ctx: &LaunchContext,
        snapshot: &Path,
    ) -> Result<GuestEndpoint, QemuError> {
        let manifest_path = snapshot.join(MANIFEST_FILE);
        let saved = read_manifest(&manifest_path)?;
        let plan = self.plan(spec, ctx)?;
        if let Some((field, snap, here)) =
            saved.mismatch(&SnapshotManifest::of(&self.config, &plan))
        {
            return Err(QemuError::SnapshotMismatch {
                path: snapshot.to_owned(),
                field,
                snapshot: snap,
                here,
            });
        }
        let state = snapshot.join(STATE_FILE);
        if !state.is_file() {
            return Err(QemuError::ImageFileMissing { path: state });
        }
        self.start_planned(spec, ctx, &plan, Some(&state))
    }
}

/// Streams the VM's state into `dest/vm.state`.
fn save(id: &SandboxId, qmp: &mut Qmp, dest: &Path) -> Result<(), QemuError> {
    let was_running = qmp.query_status()?.running;
    let path = dest.join(STATE_FILE);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .map_err(|source| QemuError::File {
            path: path.clone(),
            source,
        })?;
    qmp.execute_with_fd("getfd", Some(json!({ "fdname": FD_NAME })), file.as_fd())?;
    drop(file);
    qmp.execute("migrate", Some(json!({ "uri": format!("fd:{FD_NAME}") })))?;
    wait_migration(id, qmp, "to the snapshot")?;
    if was_running {
        qmp.cont()?;
    }
    Ok(())
}

/// Loads `state` into a QEMU started with `-incoming defer`; the VM runs when it returns.
/// QEMU exits when the stream is bad; the error then carries the end of its log (`vmm_log`).
pub(super) fn load(
    id: &SandboxId,
    qmp_socket: &Path,
    state: &Path,
    vmm_log: &Path,
) -> Result<(), QemuError> {
    match load_inner(id, qmp_socket, state) {
        Err(QemuError::Qmp(QmpError::Io { .. } | QmpError::Closed { .. })) => {
            // Give QEMU a moment to finish writing why it quit.
            std::thread::sleep(Duration::from_millis(100));
            Err(QemuError::Migration {
                id: id.clone(),
                direction: "from the snapshot",
                status: "with QEMU exiting".into(),
                error: Some(super::process::log_tail(vmm_log)),
            })
        }
        other => other,
    }
}

fn load_inner(id: &SandboxId, qmp_socket: &Path, state: &Path) -> Result<(), QemuError> {
    let mut qmp = Qmp::connect(qmp_socket)?;
    let file = File::open(state).map_err(|source| QemuError::File {
        path: state.to_owned(),
        source,
    })?;
    qmp.execute_with_fd("getfd", Some(json!({ "fdname": FD_NAME })), file.as_fd())?;
    drop(file);
    qmp.execute(
        "migrate-incoming",
        Some(json!({ "uri": format!("fd:{FD_NAME}") })),
    )?;
    wait_migration(id, &mut qmp, "from the snapshot")?;
    // An incoming migration leaves the VM paused when it was paused at save time.
    if !qmp.query_status()?.running {
        qmp.cont()?;
    }
    Ok(())
}

/// Polls `query-migrate` until the migration completes; any other end is an error.
fn wait_migration(id: &SandboxId, qmp: &mut Qmp, direction: &'static str) -> Result<(), QemuError> {
    let start = Instant::now();
    loop {
        let info = qmp.execute("query-migrate", None)?;
        let status = info
            .get("status")
            .and_then(|s| s.as_str())
            .unwrap_or("none")
            .to_owned();
        match status.as_str() {
            "completed" => return Ok(()),
            "failed" | "cancelled" => {
                return Err(QemuError::Migration {
                    id: id.clone(),
                    direction,
                    status,
                    error: info
                        .get("error-desc")
                        .and_then(|e| e.as_str())
                        .map(str::to_owned),
                })
            }
            _ if start.elapsed() >= MIGRATION_TIMEOUT => {
                return Err(QemuError::Migration {
                    id: id.clone(),
                    direction,
                    status: format!("still {status} after {MIGRATION_TIMEOUT:?}"),
                    error: None,
                })
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
