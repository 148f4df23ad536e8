//! Finding the host programs hearth drives (OCI runtimes, QEMU, Firecracker and its jailer, the
//! kernel build's tools).

use std::path::{Path, PathBuf};

/// Looks a program up in `PATH` (plus the sbin dirs, which root's PATH may lack under sudo).
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_but_not_nonsense() {
        assert!(find_in_path("sh").is_some());
        assert!(find_in_path("no-such-runtime-hearth").is_none());
    }
}
