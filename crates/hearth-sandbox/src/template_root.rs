//! The root filesystem of an OCI sandbox made from a template: the template's layers stacked
//! read-only under a per-sandbox upper directory (overlayfs), mounted by hearth on the host at
//! `<sandbox dir>/rootfs` before the runtime starts.
//!
//! ```text
//! <sandbox dir>/disk        the sandbox's disk: the same sparse ext4 image of its disk quota a
//!                           private workspace is (nosuid, nodev), holding
//!   upper/ work/            the overlay's writable layer: whatever the workload changes in /
//!   workspace/              /workspace (bind-mounted on <sandbox dir>/workspace)
//! <sandbox dir>/layers/N    layer N of the template through an idmapped mount: the image's
//!                           uid k appears as the sandbox's host id root+k, so files keep their
//!                           owners inside and the layers stay shared by every sandbox
//! <sandbox dir>/rootfs      overlay: lowerdir=layers/N:...:layers/0, upperdir=disk/upper
//! ```
//!
//! So the workload's writes to `/` and `/workspace` together are bounded by its disk quota,
//! and go with the sandbox; the layers in the store are never written. Every mount lives under
//! the sandbox dir, which [`crate::dirs::SandboxDirs::remove`] detaches before deleting.

use std::fs::DirBuilder;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use crate::dirs::SandboxDirs;
use crate::spec::SpecTemplate;
use crate::userns::{HostIds, IdMapping, IDS_PER_SANDBOX};
use crate::workspace::{WorkspaceError, WorkspaceImages, WorkspaceSource};

/// Makes the sandbox's disk, its `/workspace` (owned by the template's user) and the overlay
/// root of `template`. On failure the caller removes the sandbox dir, which detaches whatever
/// was mounted.
pub fn prepare(
    dirs: &SandboxDirs,
    id: &crate::SandboxId,
    workspace: &WorkspaceSource,
    disk_bytes: u64,
    ids: HostIds,
    images: &WorkspaceImages,
    template: &SpecTemplate,
) -> Result<(), WorkspaceError> {
    let base = dirs.base();
    let disk = base.join("disk");
    mkdir(&disk, 0o700)?;
    images.ensure_dir()?;
    crate::workspace::private(&images.image(id), &disk, disk_bytes, ids)?;
    let upper = disk.join("upper");
    mkdir(&upper, 0o755)?;
    chown(&upper, ids.root(), ids.root())?;
    let work = disk.join("work");
    mkdir(&work, 0o700)?;

    let target = dirs.workspace();
    mkdir(&target, 0o700)?;
    let (uid, gid) = (ids.root() + template.uid, ids.root() + template.gid);
    match workspace {
        WorkspaceSource::Private { .. } => {
            let inside = disk.join("workspace");
            mkdir(&inside, 0o755)?;
            chown(&inside, uid, gid)?;
            // A bind keeps the disk's nosuid and nodev.
            mount(
                Some(&inside),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(mount_err(&target))?;
        }
        WorkspaceSource::Host(dir) => {
            crate::workspace::shared_as(dir, &target, ids, template.uid)?;
        }
    }

    let layers_dir = base.join("layers");
    mkdir(&layers_dir, 0o700)?;
    let map = IdMapping {
        inside_start: 0,
        outside_start: ids.root(),
        count: IDS_PER_SANDBOX,
    };
    let userns = crate::userns::new_userns(map, map)?;
    let mut views: Vec<PathBuf> = Vec::with_capacity(template.layers.len());
    for (index, layer) in template.layers.iter().enumerate() {
        let view = layers_dir.join(index.to_string());
        mkdir(&view, 0o700)?;
        crate::userns::idmapped_bind(layer, &view, userns.as_fd())?;
        views.push(view);
    }
    let lower: Vec<String> = views
        .iter()
        .rev()
        .map(|v| v.display().to_string())
        .collect();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    let rootfs = dirs.rootfs();
    mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(mount_err(&rootfs))
}

fn mkdir(path: &Path, mode: u32) -> Result<(), WorkspaceError> {
    match DirBuilder::new().mode(mode).create(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(source) => Err(WorkspaceError::Create {
            path: path.to_owned(),
            source,
        }),
    }
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), WorkspaceError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|source| WorkspaceError::Create {
        path: path.to_owned(),
        source,
    })
}

fn mount_err(path: &Path) -> impl FnOnce(nix::errno::Errno) -> WorkspaceError {
    let path = path.to_owned();
    move |errno| WorkspaceError::Command {
        program: "mount",
        path,
        message: io::Error::from(errno).to_string(),
    }
}
