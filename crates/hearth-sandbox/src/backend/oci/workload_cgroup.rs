//! The workload's own memory cgroup inside a container's, so an OOM never takes hearth-guest.
//!
//! tmpfs pages are charged to the cgroup but belong to no process, so a workload that fills
//! `/tmp` leaves the OOM killer choosing among processes of similar size, hearth-guest among
//! them; and `oom_score_adj` cannot protect it (a user namespace's runtime cannot lower a score,
//! and the workload could raise its own protection to hearth-guest's). Instead the container's
//! memory cgroup (`/hearth/<id>`, the sandbox's limit) gets a child, `workload`, limited to the
//! sandbox's memory less [`reserve`]: everything hearth-guest starts is moved there, so the
//! workload's OOMs happen in the child, whose processes are the only candidates, and
//! hearth-guest keeps the reserve to go on serving and report them.
//!
//! hearth makes the child before the runtime makes the container (which then reuses the
//! parent) and hands hearth-guest its `cgroup.procs`, opened for writing, as fd 4: the
//! container sees its cgroups read-only. The runtime removes child cgroups with its own.
//!
//! On cgroup v2 a cgroup with processes cannot have controllers enabled for children (runc
//! places PID 1 in the container's cgroup), so there is no workload cgroup there, and
//! hearth-guest's children only get a higher `oom_score_adj` than itself.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::cgroup::CgroupVersion;
use crate::id::SandboxId;

/// The fd hearth-guest finds the workload cgroup's `cgroup.procs` on.
pub const WORKLOAD_CGROUP_FD: i32 = 4;
/// The workload cgroup's name under the container's.
const NAME: &str = "workload";

/// Errors making the workload cgroup.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the workload cgroup {path}: {source}")]
pub struct WorkloadCgroupError {
    pub path: PathBuf,
    pub source: io::Error,
}

/// Memory kept for hearth-guest out of the sandbox's limit: a quarter of it, at most 32 MiB.
pub fn reserve(memory: u64) -> u64 {
    (memory / 4).min(32 << 20)
}

/// The container's memory cgroup dir on a v1 or hybrid host; `None` on v2 (see the module docs).
fn container_dir(root: &Path, version: CgroupVersion, id: &SandboxId) -> Option<PathBuf> {
    matches!(version, CgroupVersion::V1 | CgroupVersion::Hybrid).then(|| {
        root.join("memory")
            .join(id.names().cgroup.trim_start_matches('/'))
    })
}

/// Makes `<container>/workload` limited to `memory` less the reserve, and returns its
/// `cgroup.procs` open for writing; `None` where the host's cgroups have no place for it.
pub fn create(id: &SandboxId, memory: u64) -> Result<Option<File>, WorkloadCgroupError> {
    create_at(
        Path::new("/sys/fs/cgroup"),
        CgroupVersion::detect(),
        id,
        memory,
    )
}

/// [`create`] under another cgroup root (tests).
pub fn create_at(
    root: &Path,
    version: CgroupVersion,
    id: &SandboxId,
    memory: u64,
) -> Result<Option<File>, WorkloadCgroupError> {
    let Some(container) = container_dir(root, version, id) else {
        return Ok(None);
    };
    let dir = container.join(NAME);
    let fail = |path: &Path| {
        let path = path.to_owned();
        move |source| WorkloadCgroupError { path, source }
    };
    fs::create_dir_all(&dir).map_err(fail(&dir))?;
    let limit = memory.saturating_sub(reserve(memory));
    let path = dir.join("memory.limit_in_bytes");
    fs::write(&path, limit.to_string()).map_err(fail(&path))?;
    // A process moved in takes its charges along, so what it touched in the instant before
    // hearth-guest moved it is not left in the parent. Newer kernels dropped this v1 feature
    // (EINVAL); the window is a few microseconds after exec, so it is only a refinement.
    let path = dir.join("memory.move_charge_at_immigrate");
    if let Err(err) = fs::write(&path, "3") {
        tracing::debug!(path = %path.display(), %err, "no charge moving on this kernel");
    }
    let procs = dir.join("cgroup.procs");
    OpenOptions::new()
        .write(true)
        .open(&procs)
        .map(Some)
        .map_err(fail(&procs))
}

/// Removes what [`create`] made when the runtime never took it over (a start that failed
/// before the container existed). Missing dirs are fine.
pub fn remove(id: &SandboxId) {
    let root = Path::new("/sys/fs/cgroup");
    if let Some(container) = container_dir(root, CgroupVersion::detect(), id) {
        for dir in [container.join(NAME), container] {
            match fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => tracing::warn!(path = %dir.display(), %err, "cgroup left behind"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_is_a_quarter_up_to_32_mib() {
        assert_eq!(reserve(64 << 20), 16 << 20);
        assert_eq!(reserve(512 << 20), 32 << 20);
    }

    #[test]
    fn v2_hosts_get_none_and_v1_hosts_a_limited_child() {
        let id = SandboxId::parse("wl").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        assert!(create_at(tmp.path(), CgroupVersion::V2, &id, 64 << 20)
            .unwrap()
            .is_none());
        // A plain directory stands in for the v1 memory hierarchy: the files are made by hand
        // there, as the kernel would provide them.
        let dir = tmp.path().join("memory/hearth/wl/workload");
        fs::create_dir_all(&dir).unwrap();
        for file in [
            "memory.limit_in_bytes",
            "memory.move_charge_at_immigrate",
            "cgroup.procs",
        ] {
            fs::write(dir.join(file), "").unwrap();
        }
        let procs = create_at(tmp.path(), CgroupVersion::Hybrid, &id, 64 << 20).unwrap();
        assert!(procs.is_some());
        assert_eq!(
            fs::read_to_string(dir.join("memory.limit_in_bytes")).unwrap(),
            (48u64 << 20).to_string()
        );
    }
}
