//! The host ids a sandbox runs as, user namespaces that map them, and idmapped mounts.
//!
//! Every sandbox gets its own block of [`IDS_PER_SANDBOX`] host uids and gids, starting at
//! [`HostIds::base`]. An OCI sandbox's user namespace maps its uid 0 to the base (so the
//! workload's root is an unprivileged host user that owns nothing else on the host); a QEMU
//! sandbox's VMM runs as the base. No two live sandboxes share a block, so one sandbox's files
//! and processes are foreign to every other.
//!
//! A host directory shared with a sandbox (`--workspace DIR`) is mounted through an *idmapped
//! mount* ([`idmapped_bind`]): its owner appears as the sandbox's root, so the workload can work
//! on it, and what the workload writes lands on disk owned by that same owner, never by host
//! root unless the directory's owner is root (and then never setuid or setgid: every workload
//! seccomp policy refuses those bits).

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Host uids (and gids) each sandbox gets: the 16-bit id space inside a namespace.
pub const IDS_PER_SANDBOX: u32 = 65_536;
/// The first host id hearth hands out: right above the range systemd gives nspawn containers
/// (524288..=1879048191, see systemd's UIDS-GIDS.md), below 2^31 so tools that keep ids in a
/// signed int cope.
pub const HOST_ID_BASE: u32 = 0x7000_0000;
/// How many blocks hearth hands out: they end where systemd's reserved ids start
/// (0x7FFE0000, the "foreign" and nobody-adjacent ranges).
pub const MAX_SANDBOX_BLOCKS: u32 = (0x7FFE_0000 - HOST_ID_BASE) / IDS_PER_SANDBOX;

/// Errors making user namespaces and idmapped mounts.
#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error("id block {0} is outside hearth's range (0..{MAX_SANDBOX_BLOCKS})")]
    BlockOutOfRange(u32),
    #[error("cannot {op} for a user namespace: {source}")]
    Helper { op: &'static str, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Map { path: PathBuf, source: io::Error },
    #[error("cannot {op} {path} for an idmapped mount: {source}")]
    Mount {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path} contains a NUL byte")]
    Nul { path: PathBuf },
}

/// A sandbox's block of host ids: uids and gids `base .. base + IDS_PER_SANDBOX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HostIds {
    pub base: u32,
}

impl HostIds {
    /// The block with this index (as allocated in hearth's store).
    pub fn block(index: u32) -> Result<Self, UsernsError> {
        if index >= MAX_SANDBOX_BLOCKS {
            return Err(UsernsError::BlockOutOfRange(index));
        }
        Ok(Self {
            base: HOST_ID_BASE + index * IDS_PER_SANDBOX,
        })
    }

    /// The host uid and gid of the sandbox's root.
    pub fn root(self) -> u32 {
        self.base
    }

    /// The block index, the inverse of [`HostIds::block`].
    pub fn index(self) -> u32 {
        (self.base - HOST_ID_BASE) / IDS_PER_SANDBOX
    }

    /// Whether a host id belongs to this block.
    pub fn contains(self, id: u32) -> bool {
        (self.base..self.base + IDS_PER_SANDBOX).contains(&id)
    }
}

/// One line of a `uid_map`/`gid_map`: `inside` ids from `inside_start` map to host ids from
/// `outside_start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMapping {
    pub inside_start: u32,
    pub outside_start: u32,
    pub count: u32,
}

impl IdMapping {
    fn line(self) -> String {
        format!(
            "{} {} {}\n",
            self.inside_start, self.outside_start, self.count
        )
    }
}

/// A user namespace with the given uid and gid maps, held open as an fd (for
/// `mount_setattr(MOUNT_ATTR_IDMAP)` or `setns`). No process stays in it.
///
/// The kernel only takes maps from outside a namespace, so a short-lived child makes it: the
/// child unshares its user namespace, says so, and waits; this process writes the maps, opens
/// `/proc/<child>/ns/user` and kills the child. (Killed rather than told to exit: a child
/// waiting for a pipe to close could wait forever on a copy of that pipe another concurrent
/// call's child inherited.) The child runs only `unshare`, `write` and `pause`, which is safe
/// after a fork in a threaded process.
pub fn new_userns(uids: IdMapping, gids: IdMapping) -> Result<OwnedFd, UsernsError> {
    let helper = |op| move |source| UsernsError::Helper { op, source };
    let (ready_read, ready_write) = pipe().map_err(helper("make a pipe"))?;
    // SAFETY: fork has no memory preconditions; the child below only makes async-signal-safe
    // system calls on fds it already holds, and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(helper("fork")(io::Error::last_os_error()));
    }
    if pid == 0 {
        child_unshare_and_wait(ready_write.as_raw_fd());
    }
    drop(ready_write);
    let result = write_maps_and_open(pid, ready_read, uids, gids);
    // SAFETY: signals our own child, which only waits to be killed.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    reap(pid);
    result
}

/// The helper child: unshare, tell the parent (the errno on failure), wait to be killed.
fn child_unshare_and_wait(ready: i32) -> ! {
    // SAFETY: unshare takes a flag word and touches no memory of ours.
    let unshared = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
    let errno = if unshared == 0 {
        0
    } else {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EPERM)
    };
    let report = errno.to_ne_bytes();
    // SAFETY: `ready` is this child's open pipe end and `report` a live 4-byte buffer.
    unsafe { libc::write(ready, report.as_ptr().cast(), report.len()) };
    loop {
        // SAFETY: pause takes no arguments; the parent's SIGKILL ends it.
        unsafe { libc::pause() };
    }
}

fn write_maps_and_open(
    pid: i32,
    mut ready: File,
    uids: IdMapping,
    gids: IdMapping,
) -> Result<OwnedFd, UsernsError> {
    let mut report = [0u8; 4];
    ready
        .read_exact(&mut report)
        .map_err(|source| UsernsError::Helper {
            op: "wait for the helper",
            source,
        })?;
    let errno = i32::from_ne_bytes(report);
    if errno != 0 {
        return Err(UsernsError::Helper {
            op: "unshare a user namespace",
            source: io::Error::from_raw_os_error(errno),
        });
    }
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    write_map(&proc_dir.join("uid_map"), uids)?;
    write_map(&proc_dir.join("gid_map"), gids)?;
    let ns_path = proc_dir.join("ns/user");
    File::open(&ns_path)
        .map(OwnedFd::from)
        .map_err(|source| UsernsError::Map {
            path: ns_path,
            source,
        })
}

fn write_map(path: &Path, mapping: IdMapping) -> Result<(), UsernsError> {
    let mut file = File::options()
        .write(true)
        .open(path)
        .map_err(|source| UsernsError::Map {
            path: path.to_owned(),
            source,
        })?;
    file.write_all(mapping.line().as_bytes())
        .map_err(|source| UsernsError::Map {
            path: path.to_owned(),
            source,
        })
}

fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    let read = unsafe { File::from_raw_fd(fds[0]) };
    // SAFETY: as above, for the write end.
    let write = unsafe { File::from_raw_fd(fds[1]) };
    Ok((read, write))
}

fn reap(pid: i32) {
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child; `status` is a live int.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
#[derive(Debug, Default)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const OPEN_TREE_CLONE: u32 = 1;
const AT_RECURSIVE: u32 = 0x8000;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;

/// Mounts `source` on `target` (an existing empty directory) through `userns`'s id maps,
/// `nosuid` and `nodev`: files owned by ids the maps name appear (and are created) as the ids
/// they map to; others appear as the overflow id and cannot be changed.
pub fn idmapped_bind(
    source: &Path,
    target: &Path,
    userns: BorrowedFd<'_>,
) -> Result<(), UsernsError> {
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(source)
        .map_err(|err| UsernsError::Mount {
            op: "open",
            path: source.to_owned(),
            source: err,
        })?;
    idmapped_bind_fd(dir.as_fd(), source, target, userns)
}

/// [`idmapped_bind`] of the directory open as `source` (`source_path` names it in errors):
/// what was checked through that fd is what gets mounted, whatever the path points at later.
pub fn idmapped_bind_fd(
    source: BorrowedFd<'_>,
    source_path: &Path,
    target: &Path,
    userns: BorrowedFd<'_>,
) -> Result<(), UsernsError> {
    let mount_err = |op, path: &Path| {
        let path = path.to_owned();
        move |source| UsernsError::Mount { op, path, source }
    };
    let source = source.as_raw_fd();
    let source_path = source_path.to_owned();
    let source_path = source_path.as_path();
    let target_c = c_path(target)?;
    // SAFETY: open_tree reads the empty NUL-terminated path relative to the open directory fd
    // (AT_EMPTY_PATH) and returns a new fd or -1.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            source,
            c"".as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as u32 | libc::AT_EMPTY_PATH as u32,
        )
    };
    let tree = owned_fd(tree).map_err(mount_err("clone the tree of", source_path))?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        userns_fd: u64::try_from(userns.as_raw_fd()).unwrap_or(u64::MAX),
        ..MountAttr::default()
    };
    // SAFETY: `tree` is open, the empty path is NUL-terminated, and `attr` is a live
    // mount_attr whose size is passed alongside.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as u32 | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(mount_err("idmap", source_path)(io::Error::last_os_error()));
    }
    // SAFETY: both paths are NUL-terminated; `tree` is the detached mount made above.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(mount_err("attach the idmapped mount on", target)(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn c_path(path: &Path) -> Result<CString, UsernsError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| UsernsError::Nul {
        path: path.to_owned(),
    })
}

fn owned_fd(raw: libc::c_long) -> io::Result<OwnedFd> {
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(raw).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the syscall just returned this fd, so it is open and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn blocks_do_not_overlap_and_stay_below_the_invalid_id() {
        let first = HostIds::block(0).unwrap();
        let second = HostIds::block(1).unwrap();
        assert_eq!(first.root(), HOST_ID_BASE);
        assert_eq!(second.root() - first.root(), IDS_PER_SANDBOX);
        assert!(first.contains(first.root() + IDS_PER_SANDBOX - 1));
        assert!(!first.contains(second.root()));
        let last = HostIds::block(MAX_SANDBOX_BLOCKS - 1).unwrap();
        assert!(last.base + IDS_PER_SANDBOX <= 0x7FFE_0000);
        assert_eq!(last.index(), MAX_SANDBOX_BLOCKS - 1);
        assert!(HostIds::block(MAX_SANDBOX_BLOCKS).is_err());
    }

    /// Needs root: many at once from threads (as `hearth serve` creates sandboxes) all finish,
    /// each helper's pipes being copied into the others' children.
    #[test]
    fn concurrent_namespaces_do_not_wait_on_each_other() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let ids = HostIds::block(9).unwrap();
        let map = IdMapping {
            inside_start: 0,
            outside_start: ids.root(),
            count: 1,
        };
        let threads: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        new_userns(map, map).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
    }

    /// Needs root (it maps ids and mounts): what a workload writes through the view lands
    /// owned by the directory's owner, and the owner appears as the mapped id.
    #[test]
    fn idmapped_view_maps_the_owner_both_ways() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let source = tmp.path().join("source");
        let view = tmp.path().join("view");
        std::fs::create_dir(&source).unwrap();
        std::fs::create_dir(&view).unwrap();
        std::fs::write(source.join("f"), b"x").unwrap();
        std::os::unix::fs::chown(&source, Some(1000), Some(1000)).unwrap();
        std::os::unix::fs::chown(source.join("f"), Some(1000), Some(1000)).unwrap();
        let ids = HostIds::block(7).unwrap();
        let map = |owner| IdMapping {
            inside_start: owner,
            outside_start: ids.root(),
            count: 1,
        };
        let ns = new_userns(map(1000), map(1000)).unwrap();
        idmapped_bind(&source, &view, ns.as_fd()).unwrap();
        let seen = std::fs::metadata(view.join("f")).unwrap();
        let written = view.join("new");
        // What the sandbox's root (the mapped id) creates through the view...
        let result = std::thread::spawn({
            let written = written.clone();
            move || {
                nix::unistd::setfsuid(nix::unistd::Uid::from_raw(ids.root()));
                nix::unistd::setfsgid(nix::unistd::Gid::from_raw(ids.root()));
                std::fs::write(&written, b"y")
            }
        })
        .join()
        .unwrap();
        nix::mount::umount2(&view, nix::mount::MntFlags::MNT_DETACH).unwrap();
        assert_eq!((seen.uid(), seen.gid()), (ids.root(), ids.root()));
        result.unwrap();
        // ...is owned by the directory's owner on disk.
        let on_disk = std::fs::metadata(source.join("new")).unwrap();
        assert_eq!((on_disk.uid(), on_disk.gid()), (1000, 1000));
    }
}
