//! A cgroup of its own for a process hearth starts on the host: a VMM (QEMU), so a microVM is
//! held to the same memory, CPU and process limits as a container, VMM overhead included; and a
//! sandbox's supervisor, so the host-side work a sandbox causes (answering its denied calls,
//! resolving its names, logging its drops) is held to a budget of its own too.
//!
//! An OCI runtime makes the container's cgroup itself; a VMM hearth starts has nobody doing that.
//! The cgroup is named like a container's (`/hearth/<id>` in each controller) and made before the
//! VMM starts; the VMM joins it between fork and exec (a pre-opened `cgroup.procs` written with
//! "0", which means the writer), so it never runs a single instruction outside its limits.
//!
//! Layouts: on cgroup v2 one directory under the unified root, with `memory`, `cpu` and `pids`
//! enabled in the parents' `cgroup.subtree_control`; on v1 and hybrid hosts (the v2 tree has no
//! controllers there, as on these machines) one directory per controller, like runc makes.
//! [`VmmCgroup::remove`] is idempotent, so teardown and reconciliation after a crash can both call
//! it for any sandbox.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cgroup::CgroupVersion;
use crate::id::SandboxId;

/// The CFS period the CPU quota is expressed in (runc's default).
pub const CFS_PERIOD_US: u64 = 100_000;
/// How long removal waits for a just-killed VMM to leave its cgroup.
const REMOVE_WAIT: Duration = Duration::from_secs(2);
/// The v1 controllers hearth limits a VMM with.
const V1_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// Which tree a process cgroup lives in, under each controller's root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupParent {
    /// `/hearth/<id>`: a sandbox's VMM (the name runc gives a container's cgroup).
    Sandboxes,
    /// `/hearth-supervisors/<id>`: a sandbox's supervisor.
    Supervisors,
}

impl CgroupParent {
    fn name(self) -> &'static str {
        match self {
            Self::Sandboxes => "hearth",
            Self::Supervisors => "hearth-supervisors",
        }
    }
}

/// What one VMM (or supervisor) may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmLimits {
    /// Guest RAM plus the VMM's own overhead.
    pub memory_bytes: u64,
    /// CPU time per [`CFS_PERIOD_US`].
    pub cpu_quota_us: i64,
    pub pids: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum VmmCgroupError {
    #[error("no cgroup filesystem at {0} to hold the VMM's limits")]
    NoCgroups(PathBuf),
    #[error("cgroup {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cgroup {path} still has processes after {waited:?}; not removed")]
    Busy { path: PathBuf, waited: Duration },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> VmmCgroupError + '_ {
    move |source| VmmCgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A VMM's cgroup, made and limited, with its `cgroup.procs` files open for the VMM to join.
#[derive(Debug)]
pub struct VmmCgroup {
    dirs: Vec<PathBuf>,
    procs: Vec<File>,
}

impl VmmCgroup {
    /// Makes `/hearth/<id>` under the host's cgroup root with `limits`.
    pub fn create(id: &SandboxId, limits: &VmmLimits) -> Result<Self, VmmCgroupError> {
        Self::create_in(CgroupParent::Sandboxes, id, limits)
    }

    /// Makes `/<parent>/<id>` under the host's cgroup root with `limits`.
    pub fn create_in(
        parent: CgroupParent,
        id: &SandboxId,
        limits: &VmmLimits,
    ) -> Result<Self, VmmCgroupError> {
        Self::create_at(
            Path::new("/sys/fs/cgroup"),
            CgroupVersion::detect(),
            parent,
            id,
            limits,
        )
    }

    /// [`VmmCgroup::create_in`] under another root (tests).
    pub fn create_at(
        root: &Path,
        version: CgroupVersion,
        parent: CgroupParent,
        id: &SandboxId,
        limits: &VmmLimits,
    ) -> Result<Self, VmmCgroupError> {
        // A leftover of a crashed run with the same id would carry someone else's limits.
        Self::remove_at(root, version, parent, id)?;
        let dirs = dirs_for(root, version, parent, id)?;
        let mut made = Self {
            dirs: Vec::new(),
            procs: Vec::new(),
        };
        let result = (|| {
            if version == CgroupVersion::V2 {
                enable_v2_controllers(root, parent)?;
            }
            for (controller, dir) in &dirs {
                make_dir(dir)?;
                made.dirs.push(dir.clone());
                write_limits(dir, *controller, limits)?;
                let procs = dir.join("cgroup.procs");
                made.procs.push(
                    OpenOptions::new()
                        .write(true)
                        .open(&procs)
                        .map_err(io_err(&procs))?,
                );
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(made),
            Err(err) => {
                made.procs.clear();
                for dir in made.dirs.iter().rev() {
                    let _ = fs::remove_dir(dir);
                }
                Err(err)
            }
        }
    }

    /// The open `cgroup.procs` files; writing "0" to each moves the writer in. Valid while `self`
    /// lives (they are close-on-exec, so the VMM does not keep them).
    pub fn join_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// The directories made, in controller order.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Removes the cgroup of `id`, if any, waiting briefly for a just-killed VMM to leave it.
    pub fn remove(id: &SandboxId) -> Result<(), VmmCgroupError> {
        Self::remove_in(CgroupParent::Sandboxes, id)
    }

    /// Removes `/<parent>/<id>`, if any, waiting briefly for a just-killed process to leave it.
    pub fn remove_in(parent: CgroupParent, id: &SandboxId) -> Result<(), VmmCgroupError> {
        Self::remove_at(
            Path::new("/sys/fs/cgroup"),
            CgroupVersion::detect(),
            parent,
            id,
        )
    }

    /// The ids with a cgroup under `parent` (in any controller), for reconciliation.
    pub fn list_in(parent: CgroupParent) -> Vec<String> {
        let root = Path::new("/sys/fs/cgroup");
        let tops: Vec<PathBuf> = match CgroupVersion::detect() {
            CgroupVersion::V2 => vec![root.join(parent.name())],
            CgroupVersion::V1 | CgroupVersion::Hybrid => V1_CONTROLLERS
                .iter()
                .map(|controller| root.join(controller).join(parent.name()))
                .collect(),
            CgroupVersion::Unknown => Vec::new(),
        };
        let mut ids: Vec<String> = tops
            .iter()
            .filter_map(|top| fs::read_dir(top).ok())
            .flatten()
            .filter_map(Result::ok)
            .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// [`VmmCgroup::remove_in`] under another root (tests).
    pub fn remove_at(
        root: &Path,
        version: CgroupVersion,
        parent: CgroupParent,
        id: &SandboxId,
    ) -> Result<(), VmmCgroupError> {
        let Ok(dirs) = dirs_for(root, version, parent, id) else {
            return Ok(()); // no cgroups here: nothing can have been made
        };
        for (_, dir) in dirs {
            remove_dir(&dir)?;
        }
        Ok(())
    }
}

/// Joins every cgroup whose `cgroup.procs` is open as `fds`. Async-signal-safe (one `write` per
/// fd, no allocation): meant for a `pre_exec` hook.
pub fn join_in_child(fds: &[RawFd]) -> io::Result<()> {
    for &fd in fds {
        // SAFETY: writes one byte from a static buffer to an fd the caller keeps open.
        let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        if written != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The directories of `id`'s cgroup, each with the v1 controller it belongs to (`None` on v2,
/// where one directory holds every controller).
fn dirs_for(
    root: &Path,
    version: CgroupVersion,
    parent: CgroupParent,
    id: &SandboxId,
) -> Result<Vec<(Option<&'static str>, PathBuf)>, VmmCgroupError> {
    // `/hearth/<id>` is the same name runc gets for a container.
    let relative = format!("{}/{}", parent.name(), id.names().dir);
    match version {
        CgroupVersion::V2 => Ok(vec![(None, root.join(relative))]),
        CgroupVersion::V1 | CgroupVersion::Hybrid => Ok(V1_CONTROLLERS
            .iter()
            .map(|&controller| (Some(controller), root.join(controller).join(&relative)))
            .collect()),
        CgroupVersion::Unknown => Err(VmmCgroupError::NoCgroups(root.to_owned())),
    }
}

/// Makes `dir` (0755 like runc's; the parent `hearth` as needed), failing if it exists.
fn make_dir(dir: &Path) -> Result<(), VmmCgroupError> {
    if let Some(parent) = dir.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(io_err(parent))?;
    }
    fs::DirBuilder::new()
        .mode(0o755)
        .create(dir)
        .map_err(io_err(dir))
}

/// Writes the limits a directory holds: `controller`'s on v1, all of them on v2 (`None`).
fn write_limits(
    dir: &Path,
    controller: Option<&str>,
    limits: &VmmLimits,
) -> Result<(), VmmCgroupError> {
    let writes: Vec<(&str, String)> = match controller {
        None => vec![
            ("memory.max", limits.memory_bytes.to_string()),
            // No swap: a VM swapped out on the host is the worst of both worlds.
            ("memory.swap.max", "0".to_owned()),
            (
                "cpu.max",
                format!("{} {CFS_PERIOD_US}", limits.cpu_quota_us),
            ),
            ("pids.max", limits.pids.to_string()),
        ],
        Some("memory") => vec![("memory.limit_in_bytes", limits.memory_bytes.to_string())],
        Some("cpu") => vec![
            ("cpu.cfs_period_us", CFS_PERIOD_US.to_string()),
            ("cpu.cfs_quota_us", limits.cpu_quota_us.to_string()),
        ],
        Some("pids") => vec![("pids.max", limits.pids.to_string())],
        Some(_) => Vec::new(),
    };
    for (file, value) in writes {
        let path = dir.join(file);
        // memory.swap.max is absent without swap accounting; nothing to limit then.
        if file == "memory.swap.max" && !path.exists() {
            continue;
        }
        write_existing(&path, &value)?;
    }
    Ok(())
}

/// Writes an interface file, which must exist (cgroupfs makes them; creating one is a bug).
fn write_existing(path: &Path, value: &str) -> Result<(), VmmCgroupError> {
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all(value.as_bytes()).map_err(io_err(path))
}

/// Adds `memory`, `cpu` and `pids` to the subtree control of the root and of the parent.
fn enable_v2_controllers(root: &Path, parent: CgroupParent) -> Result<(), VmmCgroupError> {
    let hearth = root.join(parent.name());
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&hearth)
        .map_err(io_err(&hearth))?;
    for dir in [root, hearth.as_path()] {
        write_existing(&dir.join("cgroup.subtree_control"), "+memory +cpu +pids")?;
    }
    Ok(())
}

fn remove_dir(dir: &Path) -> Result<(), VmmCgroupError> {
    let started = Instant::now();
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            // EBUSY: a killed VMM is still exiting.
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {
                if started.elapsed() >= REMOVE_WAIT {
                    return Err(VmmCgroupError::Busy {
                        path: dir.to_owned(),
                        waited: started.elapsed(),
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(VmmCgroupError::Io {
                    path: dir.to_owned(),
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> VmmLimits {
        VmmLimits {
            memory_bytes: 768 << 20,
            cpu_quota_us: 150_000,
            pids: 128,
        }
    }

    /// On a real cgroupfs: the limits land, a child joins before exec, and removal leaves nothing.
    #[test]
    fn a_child_runs_inside_its_limits_and_nothing_is_left() {
        let version = CgroupVersion::detect();
        if version == CgroupVersion::Unknown || !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root and a cgroup filesystem");
            return;
        }
        let id = SandboxId::parse(&format!("vmmcg-{}", std::process::id())).unwrap();
        let cgroup = VmmCgroup::create(&id, &limits()).unwrap();
        let dirs = cgroup.dirs().to_vec();
        assert!(dirs.iter().all(|d| d.is_dir()), "{dirs:?}");
        let memory_file = if version == CgroupVersion::V2 {
            dirs[0].join("memory.max")
        } else {
            dirs[0].join("memory.limit_in_bytes")
        };
        assert_eq!(
            fs::read_to_string(memory_file).unwrap().trim(),
            (768u64 << 20).to_string()
        );

        let fds = cgroup.join_fds();
        let mut cmd = std::process::Command::new("cat");
        cmd.arg("/proc/self/cgroup");
        // SAFETY: the hook only calls `join_in_child`: one write(2) per fd, no allocation.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || join_in_child(&fds));
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert!(text.contains(&format!("/hearth/{id}")), "{text}");
        drop(cgroup);
        VmmCgroup::remove(&id).unwrap();
        assert!(dirs.iter().all(|d| !d.exists()), "{dirs:?}");
        // Idempotent: removing again is fine.
        VmmCgroup::remove(&id).unwrap();
    }

    #[test]
    fn v1_and_v2_layouts_are_named_like_runcs() {
        let id = SandboxId::parse("sb-layout").unwrap();
        let root = Path::new("/r");
        assert_eq!(
            dirs_for(root, CgroupVersion::V2, CgroupParent::Sandboxes, &id).unwrap(),
            [(None, PathBuf::from("/r/hearth/sb-layout"))]
        );
        assert_eq!(
            dirs_for(root, CgroupVersion::Hybrid, CgroupParent::Sandboxes, &id).unwrap(),
            ["memory", "cpu", "pids"]
                .map(|c| (Some(c), PathBuf::from(format!("/r/{c}/hearth/sb-layout"))))
        );
        assert!(matches!(
            dirs_for(root, CgroupVersion::Unknown, CgroupParent::Sandboxes, &id),
            Err(VmmCgroupError::NoCgroups(_))
        ));
    }

    #[test]
    fn a_failed_create_leaves_nothing() {
        // A plain directory is no cgroupfs: the interface files are missing, so the first write
        // fails and the directories made so far are removed again.
        let root = tempfile::tempdir().unwrap();
        let id = SandboxId::parse("sb-failing").unwrap();
        let err = VmmCgroup::create_at(
            root.path(),
            CgroupVersion::V1,
            CgroupParent::Sandboxes,
            &id,
            &limits(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("memory.limit_in_bytes"), "{err}");
        assert!(!root.path().join("memory/hearth/sb-failing").exists());
    }
}
