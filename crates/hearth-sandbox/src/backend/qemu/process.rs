//! Starting QEMU inside the sandbox's namespace and knowing it again later by `PID STARTTIME`.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use nix::sched::{setns, CloneFlags};

use super::QemuError;
use crate::vmm_cgroup::VmmCgroup;

/// QEMU as recorded in `vmm.pid` (see [`ProcessStamp`]).
pub use crate::process_stamp::ProcessStamp as VmmStamp;

/// Spawns `binary args` in the network namespace `netns`, a session of its own (so the caller's
/// terminal signals never reach it) and the cgroup(s) whose open `cgroup.procs` are `cgroup`,
/// stdout and stderr appended to `log`.
pub fn spawn_in_netns(
    binary: &Path,
    args: &[OsString],
    netns: OwnedFd,
    cgroup: &VmmCgroup,
    log: &Path,
) -> Result<Child, QemuError> {
    let log_file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(log)
        .map_err(|source| QemuError::File {
            path: log.to_owned(),
            source,
        })?;
    let log_err = log_file.try_clone().map_err(|source| QemuError::File {
        path: log.to_owned(),
        source,
    })?;
    let mut cmd = Command::new(binary);
    cmd.args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err);
    let cgroup_fds = cgroup.join_fds();
    // SAFETY: the hook runs in the forked child before exec, where only async-signal-safe
    // work is allowed: it makes system calls only (setns, setsid through nix's thin wrappers,
    // one write per cgroup), which neither allocate nor lock, on fds that stay open until exec
    // (the netns fd is the closure's; the cgroup files are the caller's, alive across the spawn;
    // CLOEXEC closes all of them there). `cgroup_fds` was collected before the fork.
    unsafe {
        cmd.pre_exec(move || {
            crate::vmm_cgroup::join_in_child(&cgroup_fds)?;
            setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)?;
            nix::unistd::setsid()?;
            Ok(())
        });
    }
    cmd.spawn().map_err(|source| QemuError::Spawn {
        binary: binary.to_owned(),
        source,
    })
}

/// The last few non-empty lines of a log, to explain a failure in one line.
pub fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}
