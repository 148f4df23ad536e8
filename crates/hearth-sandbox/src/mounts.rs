//! Finding and removing the mounts hearth makes under a sandbox's directory (its workspace
//! filesystem or idmapped view, its sysfs), so that removing the directory can never descend
//! into a mounted filesystem: under an idmapped view lies a user's own directory.

use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{umount2, MntFlags};

/// Errors reading or changing the mount table.
#[derive(Debug, thiserror::Error)]
pub enum MountsError {
    #[error("cannot read the mount table {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot unmount {path}: {source}")]
    Unmount { path: PathBuf, source: Errno },
    #[error("{path} is still mounted after unmounting it; not touching what lies under it")]
    StillMounted { path: PathBuf },
}

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Mount points at or below `base`, deepest first.
pub fn mounts_under(base: &Path) -> Result<Vec<PathBuf>, MountsError> {
    let text = std::fs::read_to_string(MOUNTINFO).map_err(|source| MountsError::Read {
        path: PathBuf::from(MOUNTINFO),
        source,
    })?;
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape(field)))
        .filter(|point| point.starts_with(base))
        .collect();
    found.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    found.dedup();
    Ok(found)
}

/// Detaches every mount at or below `base`, deepest first, then checks that none is left. A
/// mount that is already gone is fine, so this can run again after a crash.
pub fn unmount_under(base: &Path) -> Result<(), MountsError> {
    for point in mounts_under(base)? {
        match umount2(&point, MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
            Err(source) => {
                return Err(MountsError::Unmount {
                    path: point,
                    source,
                })
            }
        }
    }
    match mounts_under(base)?.into_iter().next() {
        Some(path) => Err(MountsError::StillMounted { path }),
        None => Ok(()),
    }
}

/// Mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::mount::{mount, MsFlags};

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/short\04"), r"/short\04");
    }

    /// Needs root: nested mounts are found deepest first and all detached.
    #[test]
    fn unmounts_nested_mounts_under_a_base() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let outer = tmp.path().join("with space");
        std::fs::create_dir(&outer).unwrap();
        let tmpfs = |at: &Path| {
            mount(
                Some("tmpfs"),
                at,
                Some("tmpfs"),
                MsFlags::empty(),
                Some("size=1m"),
            )
            .unwrap()
        };
        tmpfs(&outer);
        let inner = outer.join("inner");
        std::fs::create_dir(&inner).unwrap();
        tmpfs(&inner);
        let found = mounts_under(tmp.path()).unwrap();
        assert_eq!(found, vec![inner.clone(), outer.clone()]);
        unmount_under(tmp.path()).unwrap();
        assert!(mounts_under(tmp.path()).unwrap().is_empty());
        assert!(
            !inner.exists(),
            "the inner mount point lived on the outer tmpfs"
        );
    }
}
