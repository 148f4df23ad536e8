//! The runtime root and the per-sandbox directories under it.
//!
//! Layout (`ROOT` defaults to `/run/hearth`):
//!
//! ```text
//! ROOT/                     0700, owned by hearth's user
//!   runtime/                state dir of the OCI runtime (`runc --root`)
//!   sandboxes/ID/           0700, one per sandbox, removed whole on destroy
//!     bundle/config.json    the OCI bundle
//!     bundle/rootfs/        mount points only; the content is bind mounts
//!     etc/                  the sandbox's minimal /etc (mounted read-only)
//!     guest/                mounted at /.hearth: hearth-guest's socket lives here
//!     workspace/            /workspace when the user gave no --workspace
//!     runtime.log           the OCI runtime's own log
//!     guest.log             hearth-guest's stdout and stderr
//!     seccomp.sock          the seccomp supervisor's listener (`listenerPath`)
//!     supervisor.pid/.log   the seccomp supervisor's pid and start time, and its stderr
//!     guest-seccomp.bpf     raw BPF for `hearth-guest --seccomp-bpf`, when asked for
//!     vm/                   0700, VM backends only: qmp.sock, guest-serial.sock, vsock.sock,
//!                           api.sock, config.img, vmm.log, vmm.pid, console.log
//! ```
//!
//! Every directory is created exclusively (`mkdir` fails if the name exists) with mode 0700, and
//! the root is checked not to be a symlink, so nothing here follows a link an attacker planted.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::id::SandboxId;

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
        ensure_private_dir(&root)?;
        let dirs = Self { root };
        ensure_private_dir(&dirs.sandboxes_dir())?;
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
    /// creates of the same id can never share one.
    pub fn create_sandbox(&self, id: &SandboxId) -> Result<SandboxDirs, DirsError> {
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
        for sub in [dirs.bundle(), dirs.rootfs(), dirs.etc(), dirs.guest_dir()] {
            if let Err(err) = mkdir_private(&sub) {
                // Leave nothing half-made behind.
                let _ = dirs.remove();
                return Err(err);
            }
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

impl SandboxDirs {
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
    pub fn guest_socket(&self) -> PathBuf {
        self.guest_dir().join("guest.sock")
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
    /// The raw BPF file `hearth-guest --seccomp-bpf` reads (mounted read-only in the sandbox).
    pub fn guest_seccomp_bpf(&self) -> PathBuf {
        self.base.join("guest-seccomp.bpf")
    }
    pub fn default_workspace(&self) -> PathBuf {
        self.base.join("workspace")
    }
    pub fn runtime_log(&self) -> PathBuf {
        self.base.join("runtime.log")
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

    /// Creates the default workspace directory (0700; the sandbox's root user owns it).
    pub fn create_default_workspace(&self) -> Result<PathBuf, DirsError> {
        let path = self.default_workspace();
        mkdir_private(&path)?;
        Ok(path)
    }

    /// Removes the whole sandbox directory. A directory that is already gone is not an error.
    /// `remove_dir_all` does not follow symlinks inside the tree, so a link planted by a workload
    /// in its workspace cannot make this delete anything outside.
    pub fn remove(&self) -> Result<(), DirsError> {
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
pub(crate) fn ensure_private_dir(path: &Path) -> Result<(), DirsError> {
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
    fn creates_private_tree_and_removes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = RuntimeDirs::open(tmp.path().join("root")).unwrap();
        assert_eq!(mode_of(dirs.root()), 0o700);
        let id = SandboxId::parse("dirs-test").unwrap();
        let sb = dirs.create_sandbox(&id).unwrap();
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
        dirs.create_sandbox(&id).unwrap();
        assert!(matches!(
            dirs.create_sandbox(&id),
            Err(DirsError::SandboxExists { .. })
        ));
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
            .create_sandbox(&SandboxId::parse("plant").unwrap())
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
            dirs.create_sandbox(&id),
            Err(DirsError::SocketPathTooLong { .. })
        ));
        assert!(dirs.list_sandbox_dirs().unwrap().is_empty());
    }
}
