//! What every process hearth-guest starts is put in before it runs, so the workload can never
//! reach hearth-guest, the host's channel or the limits set for it.
//!
//! - **A cgroup of its own** (both modes): an inherited `cgroup.procs` (OCI: the workload's
//!   memory cgroup, see `hearth_sandbox::backend::oci::workload_cgroup`) or one the guest made
//!   (microVM: a cgroup v2 `workload` with the sandbox's pids limit, which the VMM's own cgroup
//!   on the host cannot see into). The child joins it between fork and exec, so nothing it
//!   forks can stay outside.
//! - **In a microVM only**, where PID 1 is real root and the workload would otherwise be too:
//!   a mount namespace of its own ([`crate::vm::workload_ns`]: a minimal `/dev` without the
//!   host channel's port, the disks or `/dev/userfaultfd`, read-only `/proc/sys` and `/sys`), and
//!   no capabilities at all (bounding, ambient, permitted and effective sets cleared, then
//!   `no_new_privs`), so even as uid 0 it cannot ptrace hearth-guest, load modules, remount or
//!   write kernel tunables. (In an OCI sandbox the runtime already did all of this.)

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

/// How a child is confined; built once, used by every exec (cheap to share).
#[derive(Debug, Default)]
pub struct Confinement {
    /// `cgroup.procs` of the workload's cgroup, open for writing.
    cgroup_procs: Option<File>,
    /// The workload's mount namespace.
    mount_ns: Option<OwnedFd>,
    /// Drop every capability up to and including this one (`cap_last_cap`).
    drop_caps_through: Option<u32>,
}

impl Confinement {
    /// OCI: only the inherited workload cgroup (fd `fd`), refused when that fd is not open.
    pub fn inherited_cgroup(fd: i32) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .with_context(|| format!("--workload-cgroup-fd {fd} is not open"))?;
        // SAFETY: the fd is open (F_SETFD succeeded) and was handed to this process for this
        // purpose alone, so taking sole ownership is sound.
        let procs = unsafe { File::from_raw_fd(fd) };
        Ok(Self {
            cgroup_procs: Some(procs),
            ..Self::default()
        })
    }

    /// A microVM's: its workload cgroup, mount namespace, and no capabilities.
    pub fn vm(cgroup_procs: Option<File>, mount_ns: OwnedFd) -> io::Result<Self> {
        let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")?;
        let last = last
            .trim()
            .parse()
            .map_err(|_| io::Error::other(format!("cap_last_cap reads {last:?}")))?;
        Ok(Self {
            cgroup_procs,
            mount_ns: Some(mount_ns),
            drop_caps_through: Some(last),
        })
    }

    /// In the child, between fork and exec: joins the cgroup, enters the mount namespace (then
    /// `cwd` again: entering resets it), drops every capability. Async-signal-safe: system
    /// calls on fds and a C string made before the fork, no allocation.
    pub fn in_child(&self, cwd: &CString) -> io::Result<()> {
        if let Some(procs) = &self.cgroup_procs {
            join_cgroup(procs.as_raw_fd())?;
        }
        if let Some(ns) = &self.mount_ns {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNS)?;
            nix::unistd::chdir(cwd.as_c_str())?;
        }
        if let Some(last) = self.drop_caps_through {
            drop_all_capabilities(last)?;
        }
        Ok(())
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is open as `fd` ("0" means
/// the writer).
fn join_cgroup(fd: RawFd) -> io::Result<()> {
    // SAFETY: writes one byte from a static buffer to an fd the parent keeps open.
    let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    if written != 1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `struct __user_cap_header_struct` with `_LINUX_CAPABILITY_VERSION_3`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// One half of `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Empties the bounding and ambient sets (so no exec can grant a capability back, even of a
/// root-owned binary run as uid 0), then the effective, permitted and inheritable sets, then
/// sets `no_new_privs`.
fn drop_all_capabilities(last: u32) -> io::Result<()> {
    for cap in 0..=last {
        // SAFETY: PR_CAPBSET_DROP takes the capability number by value and no pointers.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointers.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let none = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset reads the header and two data structs, both live and sized as the v3
    // ABI says.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, none.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    nix::sys::prctl::set_no_new_privs()?;
    Ok(())
}
