//! A template's root filesystem for microVMs: its layers merged ([`crate::flatten`]), hearth's
//! mount points and `hearth-guest` added as the guest image's rootfs has them, then `mke2fs -d`.
//! Made on a VM sandbox's first use of the template and cached per template config and guest
//! binary (`vm/<config>-<guest>.ext4`); removed with the template.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::flatten::remove_any;
use crate::store::{Template, TemplateError, TemplateStore};

/// What names a template's VM root filesystems: its config digest.
pub fn rootfs_key(template: &Template) -> String {
    template.config_digest.hex().to_owned()
}

/// Dirs the guest mounts over or writes into; made real directories whatever the image has.
const MOUNT_POINTS: &[(&str, u32)] = &[
    ("proc", 0o555),
    ("sys", 0o555),
    ("dev", 0o755),
    ("tmp", 0o1777),
    ("run", 0o755),
    ("root", 0o700),
    ("workspace", 0o755),
    ("etc", 0o755),
    ("usr", 0o755),
    ("usr/local", 0o755),
    ("usr/local/bin", 0o755),
];

impl TemplateStore {
    /// The ext4 root filesystem of `template` for a VM with `guest_binary`, made if missing.
    pub fn vm_rootfs(
        &self,
        template: &Template,
        guest_binary: &Path,
    ) -> Result<PathBuf, TemplateError> {
        let guest = fs::read(guest_binary).map_err(io_err("read", guest_binary))?;
        let guest_hash = crate::digest::Digest::of(&guest);
        let path = self.vm_dir().join(format!(
            "{}-{}.ext4",
            rootfs_key(template),
            guest_hash.short()
        ));
        if path.is_file() {
            return Ok(path);
        }
        let _lock = self.lock(true)?;
        if path.is_file() {
            return Ok(path);
        }
        let layers = self.layer_dirs(template)?;
        let staging = tempfile::Builder::new()
            .prefix(".vmroot-")
            .tempdir_in(self.tmp())
            .map_err(io_err("create in", &self.tmp()))?;
        let root = staging.path().join("root");
        fs::create_dir(&root).map_err(io_err("create", &root))?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755))
            .map_err(io_err("chmod", &root))?;
        crate::flatten::flatten(&layers, &root).map_err(io_err("merge the layers into", &root))?;
        add_guest_files(&root, &guest).map_err(io_err("add hearth's files to", &root))?;
        let out = staging.path().join("rootfs.ext4");
        hearth_image::make_ext4(&root, &out).map_err(|err| TemplateError::Io {
            op: "make the ext4 image",
            path: out.clone(),
            source: io::Error::other(err.to_string()),
        })?;
        fs::rename(&out, &path).map_err(io_err("rename into", &path))?;
        Ok(path)
    }
}

/// The mount points, `/etc/resolv.conf` pointing into `/run` (the root is read-only), and
/// hearth-guest where the guest image has it.
fn add_guest_files(root: &Path, guest: &[u8]) -> io::Result<()> {
    for (rel, mode) in MOUNT_POINTS {
        let dir = ensure_real_dir(root, rel)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(*mode))?;
    }
    let resolv = root.join("etc/resolv.conf");
    remove_any(&resolv)?;
    std::os::unix::fs::symlink("../run/resolv.conf", &resolv)?;
    let guest_path = root.join(hearth_image::GUEST_PATH);
    remove_any(&guest_path)?;
    fs::write(&guest_path, guest)?;
    fs::set_permissions(&guest_path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Makes `root/rel` a real directory, one component at a time: a symlink or file the image
/// put on the way is replaced, so nothing here is written through a link.
fn ensure_real_dir(root: &Path, rel: &str) -> io::Result<PathBuf> {
    let mut path = root.to_owned();
    for part in rel.split('/') {
        path.push(part);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                fs::remove_file(&path)?;
                fs::create_dir(&path)?;
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => fs::create_dir(&path)?,
            Err(err) => return Err(err),
        }
    }
    Ok(path)
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TemplateError {
    let path = path.to_owned();
    move |source| TemplateError::Io { op, path, source }
}
