//! The microVM workload's own view and limits, made once at boot (see `crate::confine`).
//!
//! - A cgroup v2 `workload` under `/sys/fs/cgroup` with the sandbox's pids limit (the host's
//!   limit covers only the VMM's threads) and a memory limit of the guest's memory less a
//!   reserve, so the workload's OOMs stay among its own processes; its `memory.events` counts
//!   them.
//! - A mount namespace: a copy of the guest's, whose `/dev` is a fresh tmpfs with only the
//!   harmless nodes (no virtio port of the host channel, no disks, no `/dev/kmsg`, `/dev/mem` or
//!   `/dev/userfaultfd`), and whose `/proc/sys`, `/proc/bus`, `/proc/irq`, `/proc/fs`,
//!   `/proc/sysrq-trigger` and `/sys` are read-only (uid 0 needs no capability to write most
//!   sysctls or PCI config space). `/` is made shared first and
//!   the copy a slave of it, so the workspace a snapshot unmounts and remounts in the guest's
//!   namespace follows in the workload's.
//!
//! The namespace is made by a child: a process cannot leave its own mount namespace for a new
//! one and keep serving from the old. Boot is single-threaded, so the child may allocate.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use super::VmError;

/// Where the workload's cgroup lives in the guest.
pub const WORKLOAD_CGROUP: &str = "/sys/fs/cgroup/workload";

/// Character devices a workload may use: name, major, minor.
const DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

fn sys(op: &'static str) -> impl FnOnce(nix::Error) -> VmError {
    move |source| VmError::Sys { op, source }
}

/// Mounts cgroup v2, makes the workload cgroup with `pids_max` and returns its `cgroup.procs`
/// open for writing (`None`, with a warning, on a kernel without cgroup v2).
pub fn cgroup(pids_max: Option<u32>) -> Result<Option<File>, VmError> {
    let root = Path::new("/sys/fs/cgroup");
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if let Err(err) = mount(Some("cgroup2"), root, Some("cgroup2"), flags, None::<&str>) {
        tracing::warn!(%err, "no cgroup v2 in this guest: no pids limit inside the VM");
        return Ok(None);
    }
    let io = |op, path: &Path| super::io_err(op, path);
    let control = root.join("cgroup.subtree_control");
    std::fs::write(&control, "+pids +memory").map_err(io("write", &control))?;
    let dir = Path::new(WORKLOAD_CGROUP);
    std::fs::create_dir(dir).map_err(io("create", dir))?;
    if let Some(max) = pids_max {
        let path = dir.join("pids.max");
        std::fs::write(&path, max.to_string()).map_err(io("write", &path))?;
    }
    // The workload's OOMs happen in its own cgroup, where hearth-guest (in the root cgroup) is
    // never a candidate, whatever the workload does to oom scores; the rest is kept for
    // hearth-guest and the kernel.
    if let Some(total) = mem_total_bytes() {
        let path = dir.join("memory.max");
        let max = total - (total / 4).min(64 << 20);
        std::fs::write(&path, max.to_string()).map_err(io("write", &path))?;
    }
    let procs = dir.join("cgroup.procs");
    OpenOptions::new()
        .write(true)
        .open(&procs)
        .map(Some)
        .map_err(io("open", &procs))
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn mem_total_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// Makes the workload's mount namespace and returns it as an fd.
pub fn mount_ns() -> Result<OwnedFd, VmError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SHARED,
        None::<&str>,
    )
    .map_err(sys("make / shared"))?;
    let (mut ready_read, mut ready_write) = pipe()?;
    let (mut done_read, done_write) = pipe()?;
    // SAFETY: boot is single-threaded (the async runtime starts after it), so the child is a
    // full copy of a process with no other threads and may run ordinary code.
    match unsafe { nix::unistd::fork() }.map_err(sys("fork"))? {
        nix::unistd::ForkResult::Child => {
            drop(ready_read);
            drop(done_write);
            let made = make_view();
            if let Err(err) = &made {
                eprintln!("hearth-guest: workload namespace: {err}");
            }
            let _ = ready_write.write_all(&[u8::from(made.is_ok())]);
            let mut sink = [0u8; 1];
            let _ = done_read.read(&mut sink);
            std::process::exit(0);
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(ready_write);
            drop(done_read);
            let mut byte = [0u8; 1];
            let made = ready_read.read(&mut byte).is_ok_and(|n| n == 1) && byte[0] == 1;
            let path = format!("/proc/{child}/ns/mnt");
            let opened = File::open(&path).map(OwnedFd::from);
            drop(done_write);
            let _ = nix::sys::wait::waitpid(child, None);
            if !made {
                return Err(VmError::Sys {
                    op: "make the workload's mount namespace",
                    source: nix::Error::EPERM,
                });
            }
            opened.map_err(super::io_err("open", Path::new(&path)))
        }
    }
}

/// In the child: a new mount namespace, slave of the guest's, with the workload's view.
fn make_view() -> Result<(), VmError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(sys("unshare"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(sys("make / a slave"))?;
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    mount(
        Some("tmpfs"),
        "/dev",
        Some("tmpfs"),
        nosuid,
        Some("mode=0755,size=64k"),
    )
    .map_err(sys("mount /dev"))?;
    for (name, major, minor) in DEVICES {
        let path = Path::new("/dev").join(name);
        mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .map_err(sys("mknod"))?;
    }
    for dir in ["pts", "shm"] {
        let path = Path::new("/dev").join(dir);
        std::fs::create_dir(&path).map_err(super::io_err("create", &path))?;
    }
    mount(
        Some("devpts"),
        "/dev/pts",
        Some("devpts"),
        nosuid,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(sys("mount /dev/pts"))?;
    mount(
        Some("shm"),
        "/dev/shm",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )
    .map_err(sys("mount /dev/shm"))?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let path = Path::new("/dev").join(link);
        std::os::unix::fs::symlink(target, &path).map_err(super::io_err("symlink", &path))?;
    }
    // What runc makes read-only in a container, and /sys with its cgroup tree.
    for path in [
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger",
        "/sys",
        "/sys/fs/cgroup",
    ] {
        // A read-only remount covers one mount, not those below it: the cgroup tree (which
        // uid 0 could otherwise write, limits included) gets its own.
        if Path::new(path).exists() {
            read_only_bind(path)?;
        }
    }
    Ok(())
}

/// Binds `path` on itself and makes that read-only (two steps: a bind ignores MS_RDONLY).
fn read_only_bind(path: &str) -> Result<(), VmError> {
    mount(
        Some(path),
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys("bind"))?;
    mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(sys("remount read-only"))
}

fn pipe() -> Result<(File, File), VmError> {
    let (read, write) = nix::unistd::pipe().map_err(sys("pipe"))?;
    Ok((File::from(read), File::from(write)))
}
