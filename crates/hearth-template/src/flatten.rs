//! A template's layers merged into one directory tree, as overlayfs would show them, for a VM's
//! ext4 root filesystem (a microVM has no overlay of the host's layer store to mount).
//!
//! The layers come from hearth's own store, already sanitised by [`crate::unpack`]; the tree is
//! hearth's private staging directory. Layers are walked parents first, and a directory is
//! made real (whatever a lower layer had at that name is removed first) before anything is
//! placed in it, so no path here ever resolves through a symlink a layer planted.

use std::fs;
use std::io;
use std::os::unix::fs::{lchown, MetadataExt, PermissionsExt};
use std::path::Path;

use crate::unpack::{is_opaque, is_whiteout};

/// Merges `layers` (bottom first) into `dest`, an empty directory.
pub fn flatten(layers: &[std::path::PathBuf], dest: &Path) -> io::Result<()> {
    for layer in layers {
        merge_dir(layer, dest)?;
    }
    Ok(())
}

fn merge_dir(from: &Path, to: &Path) -> io::Result<()> {
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let source = entry.path();
        let target = to.join(entry.file_name());
        let meta = fs::symlink_metadata(&source)?;
        if is_whiteout(&meta) {
            remove_any(&target)?;
            continue;
        }
        if meta.is_dir() {
            let existing = fs::symlink_metadata(&target).ok();
            let keep = existing.as_ref().is_some_and(fs::Metadata::is_dir) && !is_opaque(&source);
            if !keep {
                remove_any(&target)?;
                fs::create_dir(&target)?;
            }
            lchown(&target, Some(meta.uid()), Some(meta.gid()))?;
            fs::set_permissions(&target, fs::Permissions::from_mode(meta.mode() & 0o1777))?;
            merge_dir(&source, &target)?;
            continue;
        }
        remove_any(&target)?;
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&source)?, &target)?;
            lchown(&target, Some(meta.uid()), Some(meta.gid()))?;
        } else if meta.is_file() {
            // A hard link shares the layer's inode (owner, mode, bytes) without copying; the
            // store and the staging dir are on one filesystem.
            if fs::hard_link(&source, &target).is_err() {
                fs::copy(&source, &target)?;
                lchown(&target, Some(meta.uid()), Some(meta.gid()))?;
                fs::set_permissions(&target, fs::Permissions::from_mode(meta.mode() & 0o1777))?;
            }
        }
        // FIFOs and anything else carry no content a root filesystem needs.
    }
    Ok(())
}

/// Removes whatever is at `path` (a directory with its contents); nothing there is fine.
/// `remove_dir_all` does not follow symlinks.
pub(crate) fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}
