//! Which cgroup hierarchy the host runs: it decides which OCI runtimes can work here.

use std::fmt;
use std::path::Path;

use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC, TMPFS_MAGIC};
use serde::Serialize;

/// The host's cgroup setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    /// Only the v1 controllers (a tmpfs at /sys/fs/cgroup holding one mount per controller).
    V1,
    /// v1 controllers plus a v2 hierarchy at /sys/fs/cgroup/unified (crun refuses this mode).
    Hybrid,
    /// The unified v2 hierarchy at /sys/fs/cgroup.
    V2,
    /// No cgroup filesystem found.
    Unknown,
}

impl CgroupVersion {
    /// Looks at /sys/fs/cgroup.
    pub fn detect() -> Self {
        Self::detect_at(Path::new("/sys/fs/cgroup"))
    }

    fn detect_at(root: &Path) -> Self {
        match statfs(root) {
            Ok(fs) if fs.filesystem_type() == CGROUP2_SUPER_MAGIC => Self::V2,
            Ok(fs) if fs.filesystem_type() == TMPFS_MAGIC => {
                let unified = root.join("unified");
                match statfs(&unified) {
                    Ok(u) if u.filesystem_type() == CGROUP2_SUPER_MAGIC => Self::Hybrid,
                    _ => Self::V1,
                }
            }
            _ => Self::Unknown,
        }
    }
}

impl fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V1 => "v1",
            Self::Hybrid => "hybrid (v1 controllers)",
            Self::V2 => "v2",
            Self::Unknown => "unknown",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_something_on_this_host() {
        // Every Linux host hearth runs on has some cgroup filesystem mounted.
        assert_ne!(CgroupVersion::detect(), CgroupVersion::Unknown);
    }

    #[test]
    fn a_plain_dir_is_unknown() {
        let tmp = tempfile::tempdir().unwrap();
        // A tempdir on a regular filesystem is neither tmpfs-with-controllers nor cgroup2,
        // unless /tmp itself is tmpfs, in which case it reads as v1 without controllers.
        let got = CgroupVersion::detect_at(tmp.path());
        assert!(
            matches!(got, CgroupVersion::Unknown | CgroupVersion::V1),
            "{got:?}"
        );
    }
}
