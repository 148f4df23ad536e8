//! Named network namespaces, made the way `ip netns add` makes them, but in-process.
//!
//! A named namespace is a bind mount of a namespace file onto `/run/netns/<name>`: the mount keeps
//! the namespace alive with no process in it, and `ip netns`, runc (`linux.namespaces[].path`) and
//! later a microVM's tap all find it by that path.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::statfs::{fstatfs, NSFS_MAGIC};

/// Where named namespaces live; `ip netns` looks here, so it is not configurable.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Why a namespace operation failed. Every variant names the path or object it was about.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid network namespace name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("cannot create {path}: {source}")]
    RunDir { path: PathBuf, source: io::Error },
    #[error("cannot make {path} a shared mount: {source}")]
    MakeShared { path: PathBuf, source: Errno },
    #[error("cannot create the namespace mount point {path}: {source}")]
    CreateFile { path: PathBuf, source: io::Error },
    #[error("cannot open the network namespace {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot check what is mounted at {path}: {source}")]
    Stat { path: PathBuf, source: Errno },
    #[error("cannot unshare a new network namespace for {path}: {source}")]
    Unshare { path: PathBuf, source: Errno },
    #[error("cannot bind-mount the new network namespace onto {path}: {source}")]
    BindMount { path: PathBuf, source: Errno },
    #[error("cannot enter the network namespace {path}: {source}")]
    Enter { path: PathBuf, source: Errno },
    #[error("cannot bring up `lo` in the network namespace {path}: {source}")]
    LoopbackUp { path: PathBuf, source: Errno },
    #[error("cannot unmount the network namespace {path}: {source}")]
    Unmount { path: PathBuf, source: Errno },
    #[error("cannot remove {path}: {source}")]
    Unlink { path: PathBuf, source: io::Error },
    #[error("cannot list {path}: {source}")]
    List { path: PathBuf, source: io::Error },
    #[error("cannot start a thread to work in the network namespace {path}: {source}")]
    Thread { path: PathBuf, source: io::Error },
    #[error("the thread working in the network namespace {path} panicked")]
    ThreadPanicked { path: PathBuf },
}

/// The path of the named namespace `name` (whether or not it exists).
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Creates the named namespace `name` with `lo` up and returns its path. An existing namespace of
/// that name is reused (and its `lo` brought up again), so a retried setup converges.
pub fn create(name: &str) -> Result<PathBuf, NetError> {
    create_with(name, |_| Ok::<(), NetError>(())).map(|(path, ())| path)
}

/// Like [`create`], and also runs `init` inside the namespace, on the same throwaway thread that
/// made it (see [`in_netns`]): configuring a fresh namespace costs no second thread and `setns`.
/// If `init` fails on a namespace made by this call, the namespace is removed again.
pub fn create_with<T, E, F>(name: &str, init: F) -> Result<(PathBuf, T), E>
where
    T: Send,
    E: Send + From<NetError>,
    F: FnOnce(&Path) -> Result<T, E> + Send,
{
    validate_name(name)?;
    ensure_run_dir()?;
    let path = path(name);
    if is_netns_mount(&path)? {
        let value = in_netns(&path, |path| {
            loopback_up(path)?;
            init(path)
        })?;
        return Ok((path, value));
    }
    // A plain file here is a mount point left by a crash between create and bind mount.
    remove_file_ignoring_missing(&path)?;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(&path)
        .map_err(|source| NetError::CreateFile {
            path: path.clone(),
            source,
        })?;
    match bind_new_namespace(&path, init) {
        Ok(value) => Ok((path, value)),
        Err(err) => {
            // Leave nothing half-made: the mount point (and a mount, if one was made) goes.
            let _ = remove_at(&path);
            Err(err)
        }
    }
}

/// Removes the named namespace `name`. A namespace that does not exist is not an error.
///
/// The namespace itself lives on while a process or an open fd still uses it; it disappears from
/// `ip netns` (and from reconciliation) at once.
pub fn remove(name: &str) -> Result<(), NetError> {
    validate_name(name)?;
    remove_at(&path(name))
}

/// Whether the named namespace `name` exists (its path holds a namespace mount).
pub fn exists(name: &str) -> Result<bool, NetError> {
    validate_name(name)?;
    is_netns_mount(&path(name))
}

/// Names of all named namespaces (every entry of `/run/netns`, as `ip netns list` shows them).
pub fn list() -> Result<Vec<String>, NetError> {
    let dir = Path::new(NETNS_RUN_DIR);
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(NetError::List {
                path: dir.to_owned(),
                source,
            })
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| NetError::List {
            path: dir.to_owned(),
            source,
        })?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Runs `work` on a fresh thread that has entered the namespace at `path`, and returns its result.
///
/// A dedicated thread because `setns` changes only the calling thread, and a thread of a pool or
/// of the caller left in the wrong namespace would be a silent, far-away bug. The thread exits
/// afterwards, so nothing has to switch back. Sockets opened by `work` stay bound to the namespace
/// and can be returned and used from any thread.
pub fn in_netns<T, E, F>(path: &Path, work: F) -> Result<T, E>
where
    T: Send,
    E: Send + From<NetError>,
    F: FnOnce(&Path) -> Result<T, E> + Send,
{
    let ns = open_ns(path)?;
    run_on_thread(path, || {
        setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetError::Enter {
            path: path.to_owned(),
            source,
        })?;
        work(path)
    })
}

/// Opens the namespace file at `path` (for `setns`, or to hand to netlink as a namespace fd).
pub fn open_ns(path: &Path) -> Result<OwnedFd, NetError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| NetError::Open {
            path: path.to_owned(),
            source,
        })?;
    Ok(OwnedFd::from(file))
}

fn validate_name(name: &str) -> Result<(), NetError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name == "." || name == ".." {
        "it is a relative directory name"
    } else if name.contains('/') || name.contains('\0') {
        "it contains '/' or NUL"
    } else if name.len() > 255 {
        "it is longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(NetError::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

/// Creates `/run/netns` and makes it a shared mount, as iproute2 does.
///
/// Shared so that a later `umount` here propagates into mount namespaces copied from the host
/// (runc's containers, `unshare -m`): otherwise each copy pins the namespace after removal.
fn ensure_run_dir() -> Result<(), NetError> {
    // Done once per process; the lock also stops two threads stacking two bind mounts.
    static READY: Mutex<bool> = Mutex::new(false);
    let mut ready = READY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if *ready {
        return Ok(());
    }
    let dir = Path::new(NETNS_RUN_DIR);
    fs::create_dir_all(dir).map_err(|source| NetError::RunDir {
        path: dir.to_owned(),
        source,
    })?;
    let make_shared = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match make_shared() {
        Ok(()) => {}
        // EINVAL: not a mount point yet. Bind it onto itself so it becomes one, then retry.
        Err(Errno::EINVAL) => {
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|source| NetError::MakeShared {
                path: dir.to_owned(),
                source,
            })?;
            make_shared().map_err(|source| NetError::MakeShared {
                path: dir.to_owned(),
                source,
            })?;
        }
        Err(source) => {
            return Err(NetError::MakeShared {
                path: dir.to_owned(),
                source,
            })
        }
    }
    *ready = true;
    Ok(())
}

/// Whether `path` holds a namespace mount (as opposed to nothing, or a bare mount point file).
fn is_netns_mount(path: &Path) -> Result<bool, NetError> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(NetError::Open {
                path: path.to_owned(),
                source,
            })
        }
    };
    let stat = fstatfs(&file).map_err(|source| NetError::Stat {
        path: path.to_owned(),
        source,
    })?;
    Ok(stat.filesystem_type() == NSFS_MAGIC)
}

/// Makes a fresh namespace on a throwaway thread, bind-mounts it onto the file at `path`, brings
/// `lo` up and runs `init` there.
fn bind_new_namespace<T, E, F>(path: &Path, init: F) -> Result<T, E>
where
    T: Send,
    E: Send + From<NetError>,
    F: FnOnce(&Path) -> Result<T, E> + Send,
{
    run_on_thread(path, || {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|source| NetError::Unshare {
            path: path.to_owned(),
            source,
        })?;
        let own = PathBuf::from(format!("/proc/self/task/{}/ns/net", nix::unistd::gettid()));
        mount(
            Some(&own),
            path,
            Some("none"),
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|source| NetError::BindMount {
            path: path.to_owned(),
            source,
        })?;
        loopback_up(path)?;
        init(path)
    })
}

/// Sets `IFF_UP` on `lo` in the calling thread's namespace.
///
/// The classic `SIOCSIFFLAGS` ioctl rather than netlink: two calls on a throwaway socket, no
/// message parsing, and a fresh namespace's `lo` always has index 1 and the name `lo`.
fn loopback_up(path: &Path) -> Result<(), NetError> {
    let err = |source| NetError::LoopbackUp {
        path: path.to_owned(),
        source,
    };
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(err)?;
    let mut req = ifreq_for("lo");
    ioctl_ifreq(sock.as_fd(), libc::SIOCGIFFLAGS, &mut req).map_err(err)?;
    // SAFETY: SIOCGIFFLAGS succeeded, so the kernel filled `ifru_flags`, the member read here.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    // IFF_UP is 0x1 and fits the kernel's `short` flags field.
    let up = i16::try_from(libc::IFF_UP).unwrap_or(1);
    req.ifr_ifru.ifru_flags = flags | up;
    ioctl_ifreq(sock.as_fd(), libc::SIOCSIFFLAGS, &mut req).map_err(err)
}

fn ifreq_for(name: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is plain old data (a name array and a union of integers and addresses);
    // all-zero bytes are a valid value of it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = libc::c_char::from_ne_bytes([src]);
    }
    req
}

fn ioctl_ifreq(
    sock: BorrowedFd<'_>,
    request: libc::Ioctl,
    req: &mut libc::ifreq,
) -> Result<(), Errno> {
    // SAFETY: `sock` is an open socket for the duration of the call and `req` is a valid,
    // exclusively borrowed `ifreq` with a NUL-terminated name, which is what the interface-flag
    // ioctls read and write.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request, std::ptr::from_mut(req)) };
    Errno::result(rc).map(drop)
}

/// Unmounts and unlinks `path`; neither a missing mount nor a missing file is an error.
fn remove_at(path: &Path) -> Result<(), NetError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (a bare file left by a crash); ENOENT: nothing there.
        Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
        Err(source) => {
            return Err(NetError::Unmount {
                path: path.to_owned(),
                source,
            })
        }
    }
    remove_file_ignoring_missing(path)
}

fn remove_file_ignoring_missing(path: &Path) -> Result<(), NetError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetError::Unlink {
            path: path.to_owned(),
            source,
        }),
    }
}

fn run_on_thread<T, E, F>(path: &Path, work: F) -> Result<T, E>
where
    T: Send,
    E: Send + From<NetError>,
    F: FnOnce() -> Result<T, E> + Send,
{
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("hearth-netns".into())
            .spawn_scoped(scope, work)
            .map_err(|source| NetError::Thread {
                path: path.to_owned(),
                source,
            })?;
        handle.join().map_err(|_| NetError::ThreadPanicked {
            path: path.to_owned(),
        })?
    })
}
