//! The runtime root and the per-sandbox directories under it.
//!
//! Layout (`ROOT` defaults to `/run/hearth`):
//!
//! ```text
//! ROOT/                     0711: others may pass through to their own sandbox dir, not list
//!   runtime/                0700, state dir of the OCI runtime (`runc --root`)
//!   sandboxes/              0711, like ROOT
//!   sandboxes/ID/           0710 root:<sandbox gid>, one per sandbox, removed whole on destroy
//!     bundle/config.json    the OCI bundle (bundle/ 0710 like its parent)
//!     bundle/rootfs/        mount points only (owned by the sandbox's root); the content is
//!                           bind mounts
//!     etc/                  the sandbox's minimal /etc (mounted read-only)
//!     guest/                mounted read-only at /.hearth: hearth-guest, and the raw BPF
//!                           `hearth-guest --seccomp-bpf` reads when asked for
//!     guest.sock            the host end of the guest channel (0600; never inside the sandbox)
//!     workspace/            what the sandbox sees at /workspace: a mount (see `workspace`)
//!     sys/                  the sandbox's own sysfs (OCI), mounted from its network namespace
//!     runtime.log           the OCI runtime's own log
//!     guest.log             hearth-guest's stdout and stderr
//!     seccomp.sock          the seccomp supervisor's listener (`listenerPath`)
//!     supervisor.pid/.log   the seccomp supervisor's pid and start time, and its stderr
//!     vm/                   0700, VM backends only: qmp.sock, guest-serial.sock, vsock.sock,
//!                           api.sock, config.img, vmm.log, vmm.pid, console.log
//! ```
//!
//! Every directory is created exclusively (`mkdir` fails if the name exists), and the root is
//! checked not to be a symlink, so nothing here follows a link an attacker planted. A sandbox
//! whose root maps to an unprivileged host id (see [`crate::userns`]) must reach its bundle and
//! the sources of its mounts, so its directory is group-owned by that id's group with mode
//! 0710, and the two dirs above it are 0711 (traversable, not listable). Nobody else gets in.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::id::SandboxId;
use crate::userns::HostIds;

/// Longest path `bind(2)` accepts for a Unix socket (`sun_path` is 108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Errors about hearth's own directories.
#[derive(Debug, thiserror::Error)]
pub enum DirsError {
    #[error("cannot create {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot inspect {path}: {source}")]
    Inspect { path: PathBuf, source: io::Error },
    #[error("{path} is a symlink; hearth refuses to use it as a directory")]
    Symlink { path: PathBuf },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path} is writable by group or others (mode {mode:o}); run `chmod 0700 {path}`")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{path} is owned by uid {owner}, not by hearth's uid {uid}")]
    WrongOwner { path: PathBuf, owner: u32, uid: u32 },
    #[error("sandbox directory {path} already exists")]
    SandboxExists { path: PathBuf },
    #[error("cannot remove {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
    #[error("cannot set mode or group of {path}: {source}")]
    Chmod { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Mounts(#[from] crate::mounts::MountsError),
    #[error("{path} (mode {mode:o}) cannot be passed through by other users, and sandboxes run as their own uids: their runtime dir under it is out of their reach (`chmod o+x {path}`, or a --runtime-dir elsewhere)")]
    NotTraversable { path: PathBuf, mode: u32 },
    #[error("socket path {path} is {len} bytes, over the {MAX_SOCKET_PATH}-byte limit of Unix sockets; choose a shorter --runtime-dir")]
    SocketPathTooLong { path: PathBuf, len: usize },
}

/// The runtime root: volatile state of running sandboxes.
#[derive(Debug, Clone)]
pub struct RuntimeDirs {
    root: PathBuf,
}

impl RuntimeDirs {
    /// Opens (creating if needed) the runtime root. An existing root must be a real directory,
    /// owned by us and not writable by anyone else.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, DirsError> {
        let root = root.into();
        if !root.exists() {
            // Missing parents made here must let the sandboxes' uids through (see below).
            DirBuilder::new()
                .recursive(true)
                .mode(TRAVERSABLE)
                .create(&root)
                .map_err(|source| DirsError::Create {
                    path: root.clone(),
                    source,
                })?;
        }
        ensure_private_dir(&root)?;
        check_ancestors_traversable(&root)?;
        set_mode(&root, TRAVERSABLE)?;
        let dirs = Self { root };
        ensure_private_dir(&dirs.sandboxes_dir())?;
        set_mode(&dirs.sandboxes_dir(), TRAVERSABLE)?;
        ensure_private_dir(&dirs.runtime_state_dir())?;
        Ok(dirs)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the OCI runtime keeps its container state (`runc --root`), so hearth's containers
    /// never mix with other users of the same runtime.
    pub fn runtime_state_dir(&self) -> PathBuf {
        self.root.join("runtime")
    }

    pub fn sandboxes_dir(&self) -> PathBuf {
        self.root.join("sandboxes")
    }

    /// The empty directory a directly run Firecracker sees its sandbox's `vm/` dir mounted on
    /// (in its own mount namespace).
    pub fn vmm_view_dir(&self) -> PathBuf {
        self.root.join("vmm-view")
    }

    /// [`Self::vmm_view_dir`], created 0700 if missing.
    pub fn create_vmm_view_dir(&self) -> Result<PathBuf, DirsError> {
        let dir = self.vmm_view_dir();
        ensure_private_dir(&dir)?;
        Ok(dir)
    }

    /// Paths of one sandbox's directory, whether or not it exists.
    pub fn sandbox(&self, id: &SandboxId) -> SandboxDirs {
        SandboxDirs {
            base: self.sandboxes_dir().join(id.names().dir),
        }
    }

    /// Creates a sandbox's directory tree. Fails if the sandbox directory already exists, so two
    /// creates of the same id can never share one. With `ids`, the sandbox's root (that host
    /// uid's group) may pass through the directory to its bundle and mount sources.
    pub fn create_sandbox(
        &self,
        id: &SandboxId,
        ids: Option<HostIds>,
    ) -> Result<SandboxDirs, DirsError> {
        let dirs = self.sandbox(id);
        let socket = dirs.guest_socket();
        let len = socket.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(DirsError::SocketPathTooLong { path: socket, len });
        }
        match mkdir_private(&dirs.base) {
            Err(DirsError::Create { source, .. })
                if source.kind() == io::ErrorKind::AlreadyExists =>
            {
                return Err(DirsError::SandboxExists { path: dirs.base });
            }
            other => other?,
        }
        if let Err(err) = dirs.make_tree(ids) {
            // Leave nothing half-made behind.
            let _ = dirs.remove();
            return Err(err);
        }
        Ok(dirs)
    }

    /// Names of the sandbox directories that exist, valid ids or not (for reconciliation).
    pub fn list_sandbox_dirs(&self) -> Result<Vec<String>, DirsError> {
        let path = self.sandboxes_dir();
        let entries = fs::read_dir(&path).map_err(|source| DirsError::Inspect {
            path: path.clone(),
            source,
        })?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| DirsError::Inspect {
                path: path.clone(),
                source,
            })?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }
}

/// The directory of one sandbox.
#[derive(Debug, Clone)]
pub struct SandboxDirs {
    base: PathBuf,
}

/// Mode of the dirs a sandbox's root passes through on its way to its own (no listing).
const TRAVERSABLE: u32 = 0o711;
/// Mode of the sandbox's own dirs on that way: its root's group may pass, nobody else.
const GROUP_TRAVERSABLE: u32 = 0o710;
/// Mode of dirs whose content the sandbox reads (through read-only mounts).
const READABLE: u32 = 0o755;

impl SandboxDirs {
    fn make_tree(&self, ids: Option<HostIds>) -> Result<(), DirsError> {
        for sub in [self.bundle(), self.rootfs(), self.etc(), self.guest_dir()] {
            mkdir_private(&sub)?;
        }
        let Some(ids) = ids else {
            return Ok(());
        };
        for dir in [self.base.clone(), self.bundle()] {
            set_group(&dir, ids.root())?;
            set_mode(&dir, GROUP_TRAVERSABLE)?;
        }
        for dir in [self.etc(), self.guest_dir()] {
            set_mode(&dir, READABLE)?;
        }
        // The runtime makes the mount points inside the (later read-only) root as the
        // sandbox's root, so that root owns the directory.
        std::os::unix::fs::chown(self.rootfs(), Some(ids.root()), Some(ids.root())).map_err(
            |source| DirsError::Chmod {
                path: self.rootfs(),
                source,
            },
        )?;
        Ok(())
    }

    pub fn base(&self) -> &Path {
        &self.base
    }
    pub fn bundle(&self) -> PathBuf {
        self.base.join("bundle")
    }
    pub fn rootfs(&self) -> PathBuf {
        self.bundle().join("rootfs")
    }
    pub fn etc(&self) -> PathBuf {
        self.base.join("etc")
    }
    /// Host side of the sandbox's `/.hearth` directory.
    pub fn guest_dir(&self) -> PathBuf {
        self.base.join("guest")
    }
    /// The host end of the guest channel: outside every directory the sandbox can write, so a
    /// workload can neither replace it nor point hearth at another socket.
    pub fn guest_socket(&self) -> PathBuf {
        self.base.join("guest.sock")
    }
    /// The mount point of the sandbox's `/workspace` (see [`crate::workspace`]).
    pub fn workspace(&self) -> PathBuf {
        self.base.join("workspace")
    }
    /// Where the sandbox's own sysfs is mounted (bound to `/sys` in an OCI sandbox).
    pub fn sysfs(&self) -> PathBuf {
        self.base.join("sys")
    }
    /// Where the seccomp notification listener waits for the OCI runtime.
    pub fn seccomp_socket(&self) -> PathBuf {
        self.base.join("seccomp.sock")
    }
    /// The seccomp supervisor's stderr.
    pub fn supervisor_log(&self) -> PathBuf {
        self.base.join("supervisor.log")
    }
    /// `PID STARTTIME` of the seccomp supervisor, written once when it is started.
    pub fn supervisor_pid_file(&self) -> PathBuf {
        self.base.join("supervisor.pid")
    }
    pub fn runtime_log(&self) -> PathBuf {
        self.base.join("runtime.log")
    }
    /// The OCI runtime's `--pid-file`: the container init's host pid.
    pub fn init_pid_file(&self) -> PathBuf {
        self.base.join("init.pid")
    }
    /// `PID STARTTIME` of the container's init, written once it runs: a liveness check that
    /// needs no runtime call.
    pub fn init_stamp(&self) -> PathBuf {
        self.base.join("init.stamp")
    }
    pub fn guest_log(&self) -> PathBuf {
        self.base.join("guest.log")
    }

    /// The VM backends' per-sandbox directory.
    pub fn vm_dir(&self) -> PathBuf {
        self.base.join("vm")
    }
    /// QEMU's QMP control socket.
    pub fn vm_qmp_socket(&self) -> PathBuf {
        self.vm_dir().join("qmp.sock")
    }
    /// QEMU's chardev socket behind the guest's virtio-serial port.
    pub fn vm_serial_socket(&self) -> PathBuf {
        self.vm_dir().join("guest-serial.sock")
    }
    /// Firecracker's vsock Unix socket.
    pub fn vm_vsock_socket(&self) -> PathBuf {
        self.vm_dir().join("vsock.sock")
    }
    /// Firecracker's API socket.
    pub fn vm_api_socket(&self) -> PathBuf {
        self.vm_dir().join("api.sock")
    }
    /// The config drive (`hearth.config=/dev/vdb`).
    pub fn vm_config_img(&self) -> PathBuf {
        self.vm_dir().join("config.img")
    }
    /// The VMM's own stdout and stderr.
    pub fn vm_log(&self) -> PathBuf {
        self.vm_dir().join("vmm.log")
    }
    /// `PID STARTTIME` of the VMM, written once when it is started.
    pub fn vm_pid_file(&self) -> PathBuf {
        self.vm_dir().join("vmm.pid")
    }
    /// The guest's serial console (kernel and early init messages).
    pub fn vm_console_log(&self) -> PathBuf {
        self.vm_dir().join("console.log")
    }

    /// Creates the VM directory (0700). Fails if it exists.
    pub fn create_vm_dir(&self) -> Result<PathBuf, DirsError> {
        let path = self.vm_dir();
        mkdir_private(&path)?;
        Ok(path)
    }

    /// Creates the workspace mount point (0700 until something is mounted on it).
    pub fn create_workspace_mount_point(&self) -> Result<PathBuf, DirsError> {
        let path = self.workspace();
        mkdir_private(&path)?;
        Ok(path)
    }

    /// Creates the sysfs mount point.
    pub fn create_sysfs_mount_point(&self) -> Result<PathBuf, DirsError> {
        let path = self.sysfs();
        mkdir_private(&path)?;
        Ok(path)
    }

    /// Removes the whole sandbox directory. A directory that is already gone is not an error.
    /// Everything mounted inside (the workspace, which may be a view of a user's directory, and
    /// sysfs) is detached first, and nothing is deleted while a mount remains; `remove_dir_all`
    /// does not follow symlinks, so a link planted by a workload cannot make this delete
    /// anything outside.
    pub fn remove(&self) -> Result<(), DirsError> {
        if self.base.exists() {
            crate::mounts::unmount_under(&self.base)?;
        }
        match fs::remove_dir_all(&self.base) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(DirsError::Remove {
                path: self.base.clone(),
                source,
            }),
        }
    }
}

/// Every directory above `root` must let others through (`x` for others): a sandbox's runtime
/// reaches its bundle and rootfs as the sandbox's own unprivileged uid, and a 0700 parent (as
/// `mktemp -d` makes) would otherwise fail every create with a bare "permission denied".
fn check_ancestors_traversable(root: &Path) -> Result<(), DirsError> {
    let absolute = std::path::absolute(root).map_err(|source| DirsError::Inspect {
        path: root.to_owned(),
        source,
    })?;
    for dir in absolute.ancestors().skip(1) {
        let meta = fs::metadata(dir).map_err(|source| DirsError::Inspect {
            path: dir.to_owned(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o001 == 0 {
            return Err(DirsError::NotTraversable {
                path: dir.to_owned(),
                mode,
            });
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), DirsError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| DirsError::Chmod {
        path: path.to_owned(),
        source,
    })
}

fn set_group(path: &Path, gid: u32) -> Result<(), DirsError> {
    std::os::unix::fs::chown(path, None, Some(gid)).map_err(|source| DirsError::Chmod {
        path: path.to_owned(),
        source,
    })
}

fn mkdir_private(path: &Path) -> Result<(), DirsError> {
    DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(|source| DirsError::Create {
            path: path.to_owned(),
            source,
        })
}

/// Creates `path` (and missing parents) with mode 0700, or checks an existing one: a directory,
/// not a symlink, owned by us, not writable by group or others.
pub fn ensure_private_dir(path: &Path) -> Result<(), DirsError> {
    match fs::symlink_metadata(path) {
        Ok(meta) => check_private_dir(path, &meta),
        Err(err) if err.kind() == io::ErrorKind::NotFound => DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|source| DirsError::Create {
                path: path.to_owned(),
                source,
            }),
        Err(source) => Err(DirsError::Inspect {
            path: path.to_owned(),
            source,
        }),
    }
}

fn check_private_dir(path: &Path, meta: &fs::Metadata) -> Result<(), DirsError> {
    if meta.file_type().is_symlink() {
        return Err(DirsError::Symlink {
            path: path.to_owned(),
        });
    }
    if !meta.is_dir() {
        return Err(DirsError::NotADirectory {
            path: path.to_owned(),
        });
    }
    let uid = nix::unistd::geteuid().as_raw();
    if meta.uid() != uid {
        return Err(DirsError::WrongOwner {
            path: path.to_owned(),
            owner: meta.uid(),
            uid,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(DirsError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_runtime_root_under_a_closed_dir_is_refused_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let closed = tmp.path().join("closed");
        DirBuilder::new().mode(0o700).create(&closed).unwrap();
        fs::set_permissions(&closed, fs::Permissions::from_mode(0o700)).unwrap();
        let err = RuntimeDirs::open(closed.join("run")).unwrap_err();
        assert!(
            matches!(&err, DirsError::NotTraversable { path, mode: 0o700 } if *path == closed),
            "{err}"
        );
        // Parents hearth makes itself let the sandboxes through.
        let dirs = RuntimeDirs::open(tmp.path().join("made/by/hearth")).unwrap();
        assert_eq!(mode_of(&tmp.path().join("made")), 0o711);
        assert_eq!(mode_of(dirs.root()), 0o711);
    }

    #[test]
    fn creates_private_tree_and_removes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = RuntimeDirs::open(tmp.path().join("root")).unwrap();
        assert_eq!(mode_of(dirs.root()), 0o711);
        assert_eq!(mode_of(&dirs.runtime_state_dir()), 0o700);
        let id = SandboxId::parse("dirs-test").unwrap();
        let sb = dirs.create_sandbox(&id, None).unwrap();
        for path in [
            sb.base().to_owned(),
            sb.bundle(),
            sb.rootfs(),
            sb.etc(),
            sb.guest_dir(),
        ] {
            assert_eq!(mode_of(&path), 0o700, "{}", path.display());
        }
        assert!(sb.base().starts_with(dirs.sandboxes_dir()));
        assert_eq!(
            dirs.list_sandbox_dirs().unwrap(),
            vec!["dirs-test".to_owned()]
        );
        sb.remove().unwrap();
        assert!(!sb.base().exists());
        sb.remove().unwrap(); // idempotent
    }

    #[test]
    fn second_create_of_same_id_fails() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = RuntimeDirs::open(tmp.path()).unwrap();
        let id = SandboxId::parse("twice").unwrap();
        dirs.create_sandbox(&id, None).unwrap();
        assert!(matches!(
            dirs.create_sandbox(&id, None),
            Err(DirsError::SandboxExists { .. })
        ));
    }

    #[test]
    fn a_sandbox_with_host_ids_lets_only_its_group_through() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (chown)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dirs = RuntimeDirs::open(tmp.path().join("root")).unwrap();
        let ids = HostIds::block(3).unwrap();
        let sb = dirs
            .create_sandbox(&SandboxId::parse("grouped").unwrap(), Some(ids))
            .unwrap();
        for dir in [sb.base().to_owned(), sb.bundle()] {
            let meta = fs::metadata(&dir).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o710);
            assert_eq!((meta.uid(), meta.gid()), (0, ids.root()));
        }
        assert_eq!(mode_of(&sb.etc()), 0o755);
        assert_eq!(mode_of(&dirs.sandboxes_dir()), 0o711);
        sb.remove().unwrap();
    }

    /// The workspace mount point may carry a view of a user's directory: removing the sandbox
    /// detaches it and never deletes through it.
    #[test]
    fn remove_detaches_a_mounted_workspace_instead_of_deleting_through_it() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (mount)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let users = tmp.path().join("users-repo");
        fs::create_dir(&users).unwrap();
        fs::write(users.join("precious"), b"x").unwrap();
        let dirs = RuntimeDirs::open(tmp.path().join("root")).unwrap();
        let sb = dirs
            .create_sandbox(&SandboxId::parse("mounted").unwrap(), None)
            .unwrap();
        let point = sb.create_workspace_mount_point().unwrap();
        nix::mount::mount(
            Some(&users),
            &point,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        sb.remove().unwrap();
        assert!(!sb.base().exists());
        assert!(users.join("precious").exists());
    }

    #[test]
    fn refuses_symlinked_root_and_open_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(
            RuntimeDirs::open(&link),
            Err(DirsError::Symlink { .. })
        ));

        fs::set_permissions(&real, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            RuntimeDirs::open(&real),
            Err(DirsError::TooOpen { .. })
        ));
    }

    #[test]
    fn planted_symlink_in_sandbox_dir_is_not_followed_on_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), b"x").unwrap();
        let dirs = RuntimeDirs::open(tmp.path().join("root")).unwrap();
        let sb = dirs
            .create_sandbox(&SandboxId::parse("plant").unwrap(), None)
            .unwrap();
        std::os::unix::fs::symlink(&outside, sb.guest_dir().join("escape")).unwrap();
        sb.remove().unwrap();
        assert!(outside.join("keep").exists());
    }

    #[test]
    fn overlong_socket_path_is_refused_before_anything_is_made() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("d".repeat(60));
        let dirs = RuntimeDirs::open(&deep).unwrap();
        let id = SandboxId::parse(&"a".repeat(64)).unwrap();
        assert!(matches!(
            dirs.create_sandbox(&id, None),
            Err(DirsError::SocketPathTooLong { .. })
        ));
        assert!(dirs.list_sandbox_dirs().unwrap().is_empty());
    }
}
