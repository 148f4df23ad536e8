//! The root filesystem: Debian packages unpacked into a staging directory, a few files of our
//! own, then `mke2fs -d` turns the directory into an ext4 image without mounting anything.
//!
//! The guest mounts it read-only; everything that must be writable (`/tmp`, `/run`, `/root`,
//! `/workspace`) gets its own mount, and `/etc/resolv.conf` points into `/run`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::apt::{self, AptError};

/// Packages of the rootfs: python3 for the agent, the shells and the basic tools. bash because
/// E2B's SDKs run every command as `/bin/bash -l -c CMD`.
pub const PACKAGES: &[&str] = &[
    "python3-minimal",
    "libpython3.11-stdlib",
    "dash",
    "bash",
    "coreutils",
];

/// Where `hearth-guest` lives inside the rootfs (for `hearth-guest mcp` and friends).
pub const GUEST_PATH: &str = "usr/local/bin/hearth-guest";

/// The rootfs could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(transparent)]
    Apt(#[from] AptError),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("run mke2fs (install e2fsprogs): {0}")]
    Spawn(std::io::Error),
    #[error("mke2fs {path} failed ({status}): {stderr}")]
    Mke2fs {
        path: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError {
    let path = path.to_path_buf();
    move |source| RootfsError::Io { op, path, source }
}

/// Unpacks `debs` into `staging` and adds hearth's files and mount points.
pub fn stage(debs: &[PathBuf], guest: &[u8], staging: &Path) -> Result<(), RootfsError> {
    for deb in debs {
        apt::extract(deb, staging)?;
    }
    // Documentation is a third of the unpacked size and nothing in a sandbox reads it.
    for dir in [
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
    ] {
        let path = staging.join(dir);
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(io("remove", &path))?;
        }
    }
    for dir in [
        "bin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "root",
        "workspace",
        "etc",
        "usr/local/bin",
    ] {
        let path = staging.join(dir);
        std::fs::create_dir_all(&path).map_err(io("create", &path))?;
    }
    for (dir, mode) in [("tmp", 0o1777), ("root", 0o700)] {
        let path = staging.join(dir);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(io("chmod", &path))?;
    }
    // dash's postinst makes /bin/sh; no maintainer script runs here.
    let sh = staging.join("bin/sh");
    if std::fs::symlink_metadata(&sh).is_err() {
        std::os::unix::fs::symlink("dash", &sh).map_err(io("symlink", &sh))?;
    }
    let files: [(&str, &[u8], u32); 5] = [
        ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n", 0o644),
        ("etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644),
        ("etc/hosts", b"127.0.0.1 localhost\n::1 localhost\n", 0o644),
        ("etc/os-release", b"NAME=\"hearth guest (Debian packages)\"\nID=debian\n", 0o644),
        (GUEST_PATH, guest, 0o755),
    ];
    for (rel, data, mode) in files {
        let path = staging.join(rel);
        std::fs::write(&path, data).map_err(io("write", &path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(io("chmod", &path))?;
    }
    // The root is read-only; the guest writes its resolver address under /run.
    let resolv = staging.join("etc/resolv.conf");
    let _ = std::fs::remove_file(&resolv);
    std::os::unix::fs::symlink("../run/resolv.conf", &resolv).map_err(io("symlink", &resolv))?;
    Ok(())
}

/// Bytes used by the files under `dir` (not following symlinks), rounded up to 4 KiB blocks.
fn used_bytes(dir: &Path) -> Result<(u64, u64), RootfsError> {
    let mut bytes = 0;
    let mut inodes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io("read", &dir))? {
            let entry = entry.map_err(io("read", &dir))?;
            let meta = entry.metadata().map_err(io("stat", &dir))?;
            inodes += 1;
            bytes += meta.len().div_ceil(4096) * 4096;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok((bytes, inodes))
}

/// Makes the ext4 image `out` (0600) from `staging`: no journal (it is mounted read-only), no
/// reserved blocks, root-owned, sized to the content plus headroom. Returns its size in bytes.
pub fn make_ext4(staging: &Path, out: &Path) -> Result<u64, RootfsError> {
    let (bytes, inodes) = used_bytes(staging)?;
    let size_kib = (bytes + bytes / 5) / 1024 + 16 * 1024;
    let file = super::create_private(out).map_err(io("create", out))?;
    drop(file);
    let result = Command::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-m",
            "0",
            "-L",
            "hearth-root",
        ])
        .args(["-O", "^has_journal", "-E", "root_owner=0:0"])
        .arg("-N")
        .arg((inodes + 1024).to_string())
        .arg("-d")
        .arg(staging)
        .arg(out)
        .arg(format!("{size_kib}k"))
        // Fixed timestamps in the superblock where mke2fs honours it.
        .env("E2FSPROGS_FAKE_TIME", "1")
        .output()
        .map_err(RootfsError::Spawn)?;
    if !result.status.success() {
        return Err(RootfsError::Mke2fs {
            path: out.to_path_buf(),
            status: result.status,
            stderr: String::from_utf8_lossy(&result.stderr).trim().to_string(),
        });
    }
    // mke2fs rounds the size down to whole blocks.
    std::fs::metadata(out)
        .map(|m| m.len())
        .map_err(io("stat", out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A staged tree becomes an ext4 image whose files `debugfs` (e2fsprogs) can read back.
    #[test]
    fn mke2fs_turns_the_staging_dir_into_ext4() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("root");
        std::fs::create_dir(&staging).unwrap();
        stage(&[], b"guest-binary", &staging).unwrap();
        std::fs::create_dir_all(staging.join("bin")).unwrap();
        let out = dir.path().join("rootfs.ext4");
        let size = make_ext4(&staging, &out).unwrap();
        assert_eq!(std::fs::metadata(&out).unwrap().len(), size);
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let cat = Command::new("debugfs")
            .args(["-R", &format!("cat /{GUEST_PATH}")])
            .arg(&out)
            .output()
            .unwrap();
        assert_eq!(cat.stdout, b"guest-binary");
        let stat = Command::new("debugfs")
            .args(["-R", "stat /etc/resolv.conf"])
            .arg(&out)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&stat.stdout);
        assert!(
            text.contains("Type: symlink") && text.contains("../run/resolv.conf"),
            "{text}"
        );
    }
}
