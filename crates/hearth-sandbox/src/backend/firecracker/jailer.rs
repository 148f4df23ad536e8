//! Running Firecracker under its official `jailer`: the argument vector, the jail's contents,
//! and removing the jail afterwards.
//!
//! The jailer makes `<chroot base>/<exec name>/<id>/root`, copies Firecracker in, joins the
//! sandbox's netns, creates the cgroup for the `--cgroup` values, pivots into the root, makes
//! `/dev/kvm` and `/dev/net/tun`, chowns the root to `--uid`/`--gid`, drops to them and execs
//! Firecracker. Everything the VM reads must be inside the root before that, so hearth makes the
//! root itself and puts the kernel, initrd and rootfs there (see [`JailerConfig::place_image`]).
//!
//! Two flags hearth leaves out on purpose: `--daemonize` would send the jailer's own error
//! messages to /dev/null (hearth calls `setsid` itself and keeps stdout/stderr in `vmm.log`), and
//! `--new-pid-ns` would fork, so the pid hearth spawned would be the jailer's, not the VMM's:
//! without it the jailer execs Firecracker in place, and hearth's pidfd and `wait` see the VMM
//! itself, including its exit status 148 after a seccomp fault.

use std::ffi::OsString;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::layout;
use crate::backend::vm::VmImagePaths;
use crate::id::SandboxId;
use crate::spec::Cpus;

/// The jailer's limit on `--id`.
pub const MAX_JAILER_ID: usize = 64;
/// The CFS period hearth pairs with a quota.
const CFS_PERIOD_US: u64 = 100_000;

/// Errors preparing, describing or removing a jail.
#[derive(Debug, thiserror::Error)]
pub enum JailerError {
    #[error("jailer id {id:?}: only a-z, A-Z, 0-9 and '-' are allowed, at most {MAX_JAILER_ID}")]
    BadId { id: String },
    #[error(
        "the jailer only runs executables whose name contains \"firecracker\"; {path} does not"
    )]
    ExecName { path: PathBuf },
    #[error("create {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("place {from} in the jail at {to}: {source}")]
    Place {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("chown {path} to {uid}:{gid}: {source}")]
    Chown {
        path: PathBuf,
        uid: u32,
        gid: u32,
        source: io::Error,
    },
    #[error("remove {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
}

/// A `--id` the jailer accepts: `[a-zA-Z0-9-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailerId(String);

impl JailerId {
    pub fn parse(raw: &str) -> Result<Self, JailerError> {
        let ok = !raw.is_empty()
            && raw.len() <= MAX_JAILER_ID
            && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(JailerError::BadId { id: raw.to_owned() })
        }
    }

    /// A sandbox id is always a valid jailer id (`[a-z0-9-]{1,64}`); it is used as is so the
    /// jail and the jailer's cgroup are named after the sandbox.
    pub fn from_sandbox(id: &SandboxId) -> Self {
        Self(id.as_str().to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The cgroup hierarchy the jailer should use (`--cgroup-version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JailCgroups {
    V1,
    V2,
}

impl JailCgroups {
    /// v2 when the cgroup root is the unified hierarchy (`cgroup.controllers` at its top);
    /// hybrid hosts have v1 controllers there, which is where the jailer must write limits.
    pub fn detect_at(cgroup_root: &Path) -> Self {
        if cgroup_root.join("cgroup.controllers").exists() {
            Self::V2
        } else {
            Self::V1
        }
    }

    pub fn detect() -> Self {
        Self::detect_at(Path::new("/sys/fs/cgroup"))
    }

    fn arg(self) -> &'static str {
        match self {
            Self::V1 => "1",
            Self::V2 => "2",
        }
    }

    /// `--cgroup` values for a CPU allowance.
    pub fn cpu_limits(self, cpus: Cpus) -> Vec<String> {
        let quota = cpus.cfs_quota(CFS_PERIOD_US);
        match self {
            Self::V2 => vec![format!("cpu.max={quota} {CFS_PERIOD_US}")],
            Self::V1 => vec![
                format!("cpu.cfs_period_us={CFS_PERIOD_US}"),
                format!("cpu.cfs_quota_us={quota}"),
            ],
        }
    }

    /// The cgroup directories the jailer makes for one VM (removed on cleanup).
    fn dirs(self, cgroup_root: &Path, exec_name: &str, id: &JailerId) -> Vec<PathBuf> {
        let base = match self {
            Self::V2 => cgroup_root.to_owned(),
            Self::V1 => cgroup_root.join("cpu"),
        };
        vec![base.join(exec_name).join(id.as_str())]
    }
}

/// How hearth runs the jailer.
#[derive(Debug, Clone)]
pub struct JailerConfig {
    pub jailer: PathBuf,
    pub firecracker: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// `<runtime root>/jail`.
    pub chroot_base: PathBuf,
    pub cgroups: JailCgroups,
    /// Where cgroups are mounted (`/sys/fs/cgroup`); injected so tests can use a tempdir.
    pub cgroup_root: PathBuf,
}

/// One VM's jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jail {
    pub id: JailerId,
    /// `<chroot base>/<exec name>/<id>`: removed whole on cleanup.
    pub dir: PathBuf,
    /// `<dir>/root`, Firecracker's `/`.
    pub root: PathBuf,
}

impl JailerConfig {
    /// Checks the one thing the jailer checks about its executable.
    pub fn validate(&self) -> Result<(), JailerError> {
        if self.exec_name().contains("firecracker") {
            Ok(())
        } else {
            Err(JailerError::ExecName {
                path: self.firecracker.clone(),
            })
        }
    }

    fn exec_name(&self) -> String {
        self.firecracker
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn jail(&self, id: &SandboxId) -> Jail {
        let id = JailerId::from_sandbox(id);
        let dir = self.chroot_base.join(self.exec_name()).join(id.as_str());
        Jail {
            root: dir.join("root"),
            dir,
            id,
        }
    }

    /// The jailer's argument vector (without the program). `seccomp_filter` is the filter file
    /// as Firecracker sees it inside the jail, if hearth wrote one.
    pub fn argv(
        &self,
        jail: &Jail,
        netns: &Path,
        cpus: Cpus,
        seccomp_filter: Option<&Path>,
    ) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |flag: &str, value: OsString| {
            args.push(flag.into());
            args.push(value);
        };
        push("--id", jail.id.as_str().into());
        push("--exec-file", self.firecracker.clone().into());
        push("--uid", self.uid.to_string().into());
        push("--gid", self.gid.to_string().into());
        push("--chroot-base-dir", self.chroot_base.clone().into());
        push("--netns", netns.into());
        push("--cgroup-version", self.cgroups.arg().into());
        for limit in self.cgroups.cpu_limits(cpus) {
            push("--cgroup", limit.into());
        }
        args.push("--".into());
        args.push("--api-sock".into());
        args.push(Path::new("/").join(layout::API_SOCKET).into());
        if let Some(filter) = seccomp_filter {
            args.push("--seccomp-filter".into());
            args.push(filter.into());
        }
        args
    }

    /// Makes the jail's root, owned by the VMM's uid/gid so Firecracker can make its sockets
    /// there. The directories above it stay root's: the jailer pivots into the root before it
    /// drops privileges, so the VMM never needs to traverse them.
    pub fn create_root(&self, jail: &Jail) -> Result<(), JailerError> {
        let create = |path: &Path, recursive: bool| {
            DirBuilder::new()
                .recursive(recursive)
                .mode(0o700)
                .create(path)
                .map_err(|source| JailerError::Create {
                    path: path.to_owned(),
                    source,
                })
        };
        create(&jail.dir, true)?;
        create(&jail.root, false)?;
        self.give(&jail.root)
    }

    /// Hands a file or directory in the jail to the VMM's uid/gid.
    pub fn give(&self, path: &Path) -> Result<(), JailerError> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid)).map_err(|source| {
            JailerError::Chown {
                path: path.to_owned(),
                uid: self.uid,
                gid: self.gid,
                source,
            }
        })
    }

    /// Puts the image files into the jail's root and returns their paths as Firecracker sees
    /// them. Each is hard-linked when the VMM may read it as it is (no copy of a large rootfs);
    /// it is copied when it is on another filesystem, or when its owner and mode would keep
    /// the VMM out: the copy is then chowned. A hard link is never chowned, since that would
    /// change the owner of the cached image every sandbox shares.
    pub fn place_image(
        &self,
        jail: &Jail,
        image: &VmImagePaths,
    ) -> Result<VmImagePaths, JailerError> {
        let place = |from: &Path, name: &str| self.place(jail, from, name);
        Ok(VmImagePaths {
            kernel: place(&image.kernel, layout::KERNEL)?,
            initrd: place(&image.initrd, layout::INITRD)?,
            rootfs: place(&image.rootfs, layout::ROOTFS)?,
        })
    }

    /// Puts one file into the jail's root as `name`; returns its path in the VMM's view.
    pub fn place(&self, jail: &Jail, from: &Path, name: &str) -> Result<PathBuf, JailerError> {
        self.place_file(from, &jail.root.join(name))?;
        Ok(Path::new("/").join(name))
    }

    fn place_file(&self, from: &Path, to: &Path) -> Result<(), JailerError> {
        let err = |source| JailerError::Place {
            from: from.to_owned(),
            to: to.to_owned(),
            source,
        };
        let meta = fs::metadata(from).map_err(err)?;
        let linked = if readable_by(&meta, self.uid, self.gid) {
            match fs::hard_link(from, to) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::CrossesDevices => false,
                Err(e) => return Err(err(e)),
            }
        } else {
            false
        };
        if !linked {
            fs::copy(from, to).map_err(err)?;
            self.give(to)?;
        }
        Ok(())
    }

    /// Removes the jail tree and the jailer's cgroup directories. Missing pieces are fine;
    /// every failure is reported, not only the first.
    pub fn cleanup(&self, id: &SandboxId) -> Result<(), Vec<JailerError>> {
        let jail = self.jail(id);
        let mut errors = Vec::new();
        match fs::remove_dir_all(&jail.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => errors.push(JailerError::Remove {
                path: jail.dir.clone(),
                source,
            }),
        }
        for dir in self
            .cgroups
            .dirs(&self.cgroup_root, &self.exec_name(), &jail.id)
        {
            match fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => errors.push(JailerError::Remove { path: dir, source }),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Ids of the jails under the chroot base (for reconciliation).
    pub fn list(&self) -> Vec<String> {
        let base = self.chroot_base.join(self.exec_name());
        let Ok(entries) = fs::read_dir(&base) else {
            return Vec::new();
        };
        let mut ids: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect();
        ids.sort();
        ids
    }
}

/// Whether `uid`/`gid` may read a file with this owner and mode (root always may).
fn readable_by(meta: &fs::Metadata, uid: u32, gid: u32) -> bool {
    // The first class that matches decides, as in the kernel's check.
    let mode = meta.mode();
    if uid == 0 {
        true
    } else if meta.uid() == uid {
        mode & 0o400 != 0
    } else if meta.gid() == gid {
        mode & 0o040 != 0
    } else {
        mode & 0o004 != 0
    }
}

#[cfg(test)]
mod tests;
