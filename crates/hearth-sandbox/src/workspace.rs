//! What a sandbox sees at `/workspace`, made on the host before the backend starts.
//!
//! - **Private** (no `--workspace`): a sparse ext4 image of the sandbox's disk quota, loop-mounted
//!   `nosuid,nodev` on `<sandbox dir>/workspace` with its root owned by the sandbox's root. The
//!   workload can fill it and nothing more of the host's disk; it goes with the sandbox. The
//!   image lives in the state dir ([`WorkspaceImages`]), on disk: the runtime root is often a
//!   tmpfs (`/run`), where a quota's worth of data would take host memory.
//! - **A host directory**: an idmapped mount of it on the same mount point (see
//!   [`crate::userns::idmapped_bind`]): the directory's owner appears as the sandbox's root, and
//!   the files the workload writes land owned by that owner. Its size is that of the filesystem
//!   it lives on: the user chose where it lives.
//!
//! Either way the backends mount `<sandbox dir>/workspace` and nothing else, and
//! [`crate::dirs::SandboxDirs::remove`] detaches it before deleting anything.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::dirs::SandboxDirs;
use crate::userns::{HostIds, IdMapping, UsernsError};

/// Disk quota of a private workspace when none is asked for. The image is sparse: it costs
/// host disk only as the workload fills it.
pub const DEFAULT_DISK_BYTES: u64 = 4 << 30;
/// The smallest quota mkfs.ext4 makes a usable filesystem of.
pub const MIN_DISK_BYTES: u64 = 16 << 20;

/// Errors making or removing a workspace.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("workspace {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("cannot inspect workspace {path}: {source}")]
    Inspect { path: PathBuf, source: io::Error },
    #[error("cannot create {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot run {program} (install e2fsprogs and mount): {source}")]
    Spawn {
        program: &'static str,
        source: io::Error,
    },
    #[error("`{program}` failed for {path}: {message}")]
    Command {
        program: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error(transparent)]
    Userns(#[from] UsernsError),
}

/// The directory of private workspace images: `<state dir>/workspaces`, 0700.
#[derive(Debug, Clone)]
pub struct WorkspaceImages {
    dir: PathBuf,
}

impl WorkspaceImages {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("workspaces"),
        }
    }

    /// The image of sandbox `id` (whether or not it exists).
    pub fn image(&self, id: &crate::SandboxId) -> PathBuf {
        self.dir.join(format!("{}.img", id.as_str()))
    }

    /// Deletes the image of `id`; a missing one is fine. Call it after the workspace is
    /// unmounted (a loop device still holding it keeps the data until it lets go).
    pub fn remove(&self, id: &crate::SandboxId) -> Result<(), WorkspaceError> {
        let path = self.image(id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(WorkspaceError::Create { path, source }),
        }
    }

    /// The ids that have an image, for reconciliation.
    pub fn list(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|name| name.strip_suffix(".img"))
                    .map(str::to_owned)
            })
            .collect()
    }

    pub(crate) fn ensure_dir(&self) -> Result<(), WorkspaceError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|source| WorkspaceError::Create {
                path: self.dir.clone(),
                source,
            })
    }
}

/// Where `/workspace` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkspaceSource {
    /// A fresh filesystem of this many bytes.
    Private { disk_bytes: u64 },
    /// A directory of the host's, shared read-write.
    Host(PathBuf),
}

/// Makes `dirs.workspace()` what `source` says, owned (as the sandbox sees it) by the
/// sandbox's root `ids`; a private one's image goes in `images`. On failure nothing is left
/// mounted.
pub fn prepare(
    dirs: &SandboxDirs,
    id: &crate::SandboxId,
    source: &WorkspaceSource,
    ids: HostIds,
    images: &WorkspaceImages,
) -> Result<PathBuf, WorkspaceError> {
    let target = dirs
        .create_workspace_mount_point()
        .map_err(|err| match err {
            crate::dirs::DirsError::Create { path, source } => {
                WorkspaceError::Create { path, source }
            }
            other => WorkspaceError::Create {
                path: dirs.workspace(),
                source: io::Error::other(other.to_string()),
            },
        })?;
    match source {
        WorkspaceSource::Private { disk_bytes } => {
            images.ensure_dir()?;
            private(&images.image(id), &target, *disk_bytes, ids)?;
        }
        WorkspaceSource::Host(dir) => shared(dir, &target, ids)?,
    }
    Ok(target)
}

/// A sparse image of `disk_bytes`, formatted with its root owned by the sandbox's root and
/// mounted on `target`.
pub(crate) fn private(
    image: &Path,
    target: &Path,
    disk_bytes: u64,
    ids: HostIds,
) -> Result<(), WorkspaceError> {
    let image = image.to_owned();
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&image)
        .map_err(|source| WorkspaceError::Create {
            path: image.clone(),
            source,
        })?;
    file.set_len(disk_bytes.max(MIN_DISK_BYTES))
        .map_err(|source| WorkspaceError::Create {
            path: image.clone(),
            source,
        })?;
    drop(file);
    let root = ids.root();
    // No journal (the filesystem lives as long as the sandbox, and a task copies its work out),
    // lazy inode tables (formatting costs milliseconds), no blocks reserved for root.
    run(
        "mkfs.ext4",
        &image,
        Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-m",
                "0",
                "-L",
                "hearth-ws",
                "-O",
                "^has_journal",
            ])
            .arg("-E")
            .arg(format!(
                "root_owner={root}:{root},lazy_itable_init=1,lazy_journal_init=1,nodiscard"
            ))
            .arg(&image),
    )?;
    // mount(8) sets up the loop device with autoclear: it goes away with the unmount.
    run(
        "mount",
        target,
        Command::new("mount")
            .args(["-t", "ext4", "-o", "loop,nosuid,nodev,noatime"])
            .arg(&image)
            .arg(target),
    )
}

/// `dir` through an idmapped mount whose owner and group appear as the sandbox's root. The
/// directory is opened once: its owner is read from, and the mount made of, that same open
/// directory, so a path swapped in between changes nothing.
fn shared(dir: &Path, target: &Path, ids: HostIds) -> Result<(), WorkspaceError> {
    shared_as(dir, target, ids, 0)
}

/// [`shared`] with the directory's owner appearing as the sandbox's uid and gid `as_id`
/// instead of its root (a template's user).
pub(crate) fn shared_as(
    dir: &Path,
    target: &Path,
    ids: HostIds,
    as_id: u32,
) -> Result<(), WorkspaceError> {
    let inspect = |source| WorkspaceError::Inspect {
        path: dir.to_owned(),
        source,
    };
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(dir)
        .map_err(inspect)?;
    let meta = opened.metadata().map_err(inspect)?;
    if !meta.is_dir() {
        return Err(WorkspaceError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    let map = |owner| IdMapping {
        inside_start: owner,
        outside_start: ids.root() + as_id,
        count: 1,
    };
    let userns = crate::userns::new_userns(map(meta.uid()), map(meta.gid()))?;
    crate::userns::idmapped_bind_fd(opened.as_fd(), dir, target, userns.as_fd())?;
    Ok(())
}

fn run(program: &'static str, path: &Path, cmd: &mut Command) -> Result<(), WorkspaceError> {
    let out = cmd
        .output()
        .map_err(|source| WorkspaceError::Spawn { program, source })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(WorkspaceError::Command {
        program,
        path: path.to_owned(),
        message: stderr
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("no error output")
            .trim()
            .to_owned(),
    })
}
