//! Starting QEMU inside the sandbox's namespace and knowing it again later by `PID STARTTIME`.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use nix::sched::{setns, CloneFlags};

use super::QemuError;
use crate::vmm_cgroup::VmmCgroup;

/// QEMU as recorded in `vmm.pid` (see [`ProcessStamp`]).
pub use crate::process_stamp::ProcessStamp as VmmStamp;

/// Who QEMU runs as, and the files it gets by fd because it could not open them itself.
#[derive(Debug)]
pub struct Unprivileged {
    /// A user namespace whose uid and gid 0 map to the sandbox's host root id: QEMU becomes that
    /// namespace's root, an unprivileged user on the host, and sees the sandbox's files (owned
    /// by that id) as root's, which is what its 9p share reports to the guest.
    pub userns: OwnedFd,
    /// Supplementary groups it keeps (the group of `/dev/kvm` when KVM is used); all others go.
    pub groups: Vec<u32>,
    /// Files and sockets opened by hearth that QEMU inherits at their own numbers (its argv
    /// names them).
    pub files: Vec<OwnedFd>,
}

/// Spawns `binary args` in the network namespace `netns`, a session of its own (so the caller's
/// terminal signals never reach it) and the cgroup(s) whose open `cgroup.procs` are `cgroup`,
/// stdout and stderr appended to `log`; with `unprivileged`, as that user namespace's root.
pub fn spawn_in_netns(
    binary: &Path,
    args: &[OsString],
    netns: OwnedFd,
    cgroup: &VmmCgroup,
    log: &Path,
    unprivileged: Option<Unprivileged>,
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
    let drop_to = unprivileged.map(Dropped::prepare).transpose()?;
    // SAFETY: the hook runs in the forked child before exec, where only async-signal-safe
    // work is allowed: it makes system calls only (setns, dup2, setgroups, setresgid,
    // setresuid, setsid through nix's thin wrappers, one write per cgroup), which neither
    // allocate nor lock, on fds that stay open until exec (the netns, userns and passed fds are
    // the closure's; the cgroup files are the caller's, alive across the spawn; CLOEXEC closes
    // all of them there but the dup2 targets). Everything it reads was built before the fork.
    unsafe {
        cmd.pre_exec(move || {
            crate::vmm_cgroup::join_in_child(&cgroup_fds)?;
            setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)?;
            if let Some(drop_to) = &drop_to {
                drop_to.enter()?;
            }
            nix::unistd::setsid()?;
            Ok(())
        });
    }
    cmd.spawn().map_err(|source| QemuError::Spawn {
        binary: binary.to_owned(),
        source,
    })
}

/// [`Unprivileged`], made ready before the fork so the child only makes system calls.
#[derive(Debug)]
struct Dropped {
    userns: OwnedFd,
    groups: Vec<nix::unistd::Gid>,
    files: Vec<OwnedFd>,
}

impl Dropped {
    fn prepare(unprivileged: Unprivileged) -> Result<Self, QemuError> {
        Ok(Self {
            userns: unprivileged.userns,
            groups: unprivileged
                .groups
                .into_iter()
                .map(nix::unistd::Gid::from_raw)
                .collect(),
            files: unprivileged.files,
        })
    }

    /// In the child: keeps the passed files open across exec (at the numbers QEMU's argv
    /// names: nothing is moved, so nothing the child still needs is overwritten), keeps only
    /// the given groups, becomes the user namespace's root. Async-signal-safe.
    fn enter(&self) -> std::io::Result<()> {
        for fd in &self.files {
            nix::fcntl::fcntl(
                fd.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )?;
        }
        nix::unistd::setgroups(&self.groups)?;
        setns(self.userns.as_fd(), CloneFlags::CLONE_NEWUSER)?;
        let root_gid = nix::unistd::Gid::from_raw(0);
        let root_uid = nix::unistd::Uid::from_raw(0);
        nix::unistd::setresgid(root_gid, root_gid, root_gid)?;
        nix::unistd::setresuid(root_uid, root_uid, root_uid)?;
        Ok(())
    }
}

/// The last few non-empty lines of a log, to explain a failure in one line.
pub fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}
